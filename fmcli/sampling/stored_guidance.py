"""A guidance setting as plain values, and the one ``fm tune --guidance`` stores beside a checkpoint.

A setting is three knobs of one formula, ``v = v_ref + S (v_cond - v_ref)`` (``fmcli.sampling.guidance``):
the scale S (``--cfg``), the interval of times where it guides (``--guidance-interval LO,HI``, t = 1 noise,
t = 0 data; None: everywhere) and the guide (``--guide CKPT``; None: the model's own unconditional velocity),
whose velocity is taken for the null class or for the sample's own class (``--guide-label null|same``).

``step-0001600.safetensors`` gets ``step-0001600.guidance.json`` beside it (beside the file a run folder's
``last.safetensors`` points to), naming the checkpoint's content (SHA-256) and the guide's (a path relative to
the checkpoint's folder, and its SHA-256), the sampler the search ran with, and the search's table. Sampling
uses it where the user gives no guidance flag; a damaged file, one made for other content, or a guide that has
changed or gone is a one-line FMError, never a silent fallback. Imports no torch (``fm info`` reads it).
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmcli.errors import FMError
from fmcli.io.files import atomic_write_bytes
from fmcli.io.header import checkpoint_file

FORMAT = "fm-tuned-guidance"
VERSION = 1
HINT = "run fm tune --guidance again, or delete the file"
EVERYWHERE = (0.0, 1.0)
GUIDE_LABELS = ("null", "same")  # the guide's velocity: unconditional, or for the sample's class (Karras et al.)
GUIDE_FILE = "guide.safetensors"  # the early checkpoint fm train keeps in a run folder (--guide-at), an autoguide


def parse_interval(value: Any, option: str = "--guidance-interval") -> tuple[float, float] | None:
    """``"LO,HI"`` (or a pair) into (lo, hi) with 0 <= lo < hi <= 1; ``"full"`` is (0, 1); None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in ("full", "all"):
            return EVERYWHERE
        parts = [part.strip() for part in value.replace(":", ",").split(",")]
    else:
        parts = list(value)
    try:
        lo, hi = (float(part) for part in parts)
    except (TypeError, ValueError):
        raise FMError(
            f"{option} takes LO,HI, two times in [0, 1] (t = 1 is noise), e.g. 0.2,0.8 (got {value!r})"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= 1 and 0 <= hi <= 1):
        raise FMError(f"{option} {lo:g},{hi:g} lies outside [0, 1] (t = 1 is noise, t = 0 data)")
    if lo >= hi:
        raise FMError(f"{option} {lo:g},{hi:g} is empty: LO must be below HI (t = 1 is noise, t = 0 data)")
    return (lo, hi)


def interval_text(interval: tuple[float, float] | None) -> str:
    return "full" if interval is None or tuple(interval) == EVERYWHERE else f"{interval[0]:g},{interval[1]:g}"


@dataclass(frozen=True)
class GuidanceSetting:
    """How to guide: scale, interval (None: everywhere) and guide checkpoint (None: the null class)."""

    scale: float = 1.0
    interval: tuple[float, float] | None = None
    guide: str | None = None  # a checkpoint path; None: classifier-free (the model's unconditional velocity)
    guide_label: str = "null"  # the guide's velocity for the null class, or for the "same" class as the sample

    @property
    def active(self) -> bool:
        return self.scale != 1.0

    def describe(self) -> str:
        if not self.active:
            return "no guidance"
        where = "" if self.interval in (None, EVERYWHERE) else f" for t in [{self.interval[0]:g}, {self.interval[1]:g}]"
        label = "" if self.guide_label == "null" else f" ({self.guide_label} class)"
        by = f", guide {Path(self.guide).name}{label}" if self.guide else ""
        return f"cfg {self.scale:g}{where}{by}"

    def as_json(self) -> dict:
        interval = None if self.interval in (None, EVERYWHERE) else list(self.interval)
        return {"cfg": self.scale, "interval": interval, "guide": self.guide, "guide_label": self.guide_label}


def guidance_grid(
    scales: list[float],
    intervals: list[tuple[float, float] | None],
    guides: list[str | None],
    labels: tuple[str, ...] = ("null",),
) -> list[GuidanceSetting]:
    """Every scale x interval x guide (x guide label), without repeats: scale 1 (no guidance) is one setting
    whatever the rest, and without a guide the label does not apply."""
    settings: list[GuidanceSetting] = []
    for scale in scales:
        if not math.isfinite(scale) or scale < 0:
            raise FMError(f"a guidance scale must be a number >= 0 (got {scale:g})")
        for interval in intervals:
            for guide in guides:
                for label in labels if guide else ("null",):
                    check_label(label)
                    setting = GuidanceSetting(scale) if scale == 1 else GuidanceSetting(scale, interval, guide, label)
                    if setting not in settings:
                        settings.append(setting)
    return settings


def check_label(label: str) -> str:
    if label not in GUIDE_LABELS:
        raise FMError(f"--guide-label must be null (the guide's unconditional velocity) or same (its velocity for "
                      f"the sample's class), not {label!r}")  # fmt: skip
    return label


def parse_intervals(text: str) -> list[tuple[float, float] | None]:
    """``--intervals "full;0.2,0.8;0.3,0.9"`` (";" or spaces between intervals) into (lo, hi) pairs, None: full."""
    parts = [part for part in text.replace(";", " ").split() if part]
    if not parts:
        raise FMError("--intervals is empty")
    return [
        None if parse_interval(part, "--intervals") == EVERYWHERE else parse_interval(part, "--intervals")
        for part in parts
    ]


@dataclass
class StoredGuidance:
    """A checkpoint's stored setting: what to guide with, for which sampling, and the search behind it."""

    setting: GuidanceSetting  # the guide as an absolute path (resolved from the file's relative one)
    conditional: bool  # searched for --class sampling (a class model), or unlabelled draws
    sampler: dict  # solver, steps, weights the search sampled with
    search: dict = field(default_factory=dict)  # the table, the constraints, the time it took
    path: Path | None = None  # the file


def guidance_file(checkpoint: Path) -> Path:
    """``NAME.guidance.json`` beside the checkpoint file itself (links resolved)."""
    return checkpoint_file(Path(checkpoint)).resolve().with_suffix(".guidance.json")


def _digest(path: Path) -> str:
    from fmcli.sampling.tuned import checkpoint_digest

    return checkpoint_digest(path)


def read_stored(checkpoint: Path, *, check_guide: bool = True) -> StoredGuidance | None:
    """The checkpoint's stored setting; None when there is no file. FMError (one line, naming the file) when
    it is damaged, was made for other checkpoint content, or its guide is gone or changed."""
    path = guidance_file(checkpoint)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise FMError(f"it is not an {FORMAT} file")
        if raw.get("version") != VERSION:
            raise FMError(f"version {raw.get('version')} is not {VERSION}")
        sha256 = (raw.get("checkpoint") or {}).get("sha256")
        if not isinstance(sha256, str) or len(sha256) != 64:
            raise FMError("it names no checkpoint content (sha256)")
        chosen = raw.get("setting")
        if not isinstance(chosen, dict):
            raise FMError("it has no setting")
        scale = chosen.get("cfg")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise FMError(f"its cfg {scale!r} is not a number >= 0")
        interval = parse_interval(chosen.get("interval"), "its interval")
        label = check_label(chosen.get("guide_label", "null"))
        guide = chosen.get("guide")
        if guide is not None and not (isinstance(guide, dict) and isinstance(guide.get("file"), str)):
            raise FMError("its guide names no file")
        sampler, conditional = raw.get("sampler"), raw.get("conditional")
        if not isinstance(sampler, dict) or not isinstance(conditional, bool):
            raise FMError("it names no sampler or conditioning")
    except (OSError, ValueError, AttributeError, TypeError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0][:120]
        raise FMError(f"tuned guidance file {path} is damaged ({reason}); {HINT}") from None
    except FMError as error:
        raise FMError(f"tuned guidance file {path} is damaged: {error}; {HINT}") from None
    if sha256 != _digest(checkpoint):
        raise FMError(f"tuned guidance file {path} was made for other checkpoint content; {HINT}")
    guide_path = None
    if guide is not None:
        guide_path = (path.parent / guide["file"]).resolve()
        if check_guide and not guide_path.exists():
            raise FMError(f"tuned guidance file {path} guides with {guide_path}, which is gone; {HINT}")
        if check_guide and guide.get("sha256") != _digest(guide_path):
            raise FMError(f"tuned guidance file {path}: its guide {guide_path} has changed since; {HINT}")
    search = raw.get("search") if isinstance(raw.get("search"), dict) else {}
    setting = GuidanceSetting(float(scale), interval, None if guide_path is None else str(guide_path), label)
    return StoredGuidance(setting, conditional, sampler, search, path)


def store(checkpoint: Path, chosen: StoredGuidance) -> Path:
    """Write the setting beside the checkpoint, atomically (replacing an earlier one)."""
    path = guidance_file(checkpoint)
    guide = None
    if chosen.setting.guide is not None:
        guide_path = checkpoint_file(Path(chosen.setting.guide)).resolve()
        try:
            relative = guide_path.relative_to(path.parent)
        except ValueError:
            relative = guide_path  # elsewhere: absolute
        guide = {"file": str(relative), "sha256": _digest(guide_path)}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "checkpoint": {"file": checkpoint_file(Path(checkpoint)).resolve().name, "sha256": _digest(checkpoint)},
        "setting": chosen.setting.as_json() | {"guide": guide},
        "conditional": chosen.conditional,
        "sampler": chosen.sampler,
        "search": chosen.search,
    }
    atomic_write_bytes(path, (json.dumps(payload, indent=1) + "\n").encode())
    return path


def listed_guidance(checkpoint: Path) -> dict:
    """For fm info: the stored setting (or the one-line reason it cannot be used)."""
    path = guidance_file(checkpoint)
    if not path.exists():
        return {"file": None}
    try:
        stored = read_stored(checkpoint)
    except FMError as error:
        return {"file": str(path), "error": str(error)}
    assert stored is not None
    return {
        "file": str(path),
        "setting": stored.setting.as_json(),
        "describe": stored.setting.describe(),
        "sampler": stored.sampler,
        "conditional": stored.conditional,
        "chosen": stored.search.get("chosen"),
    }
