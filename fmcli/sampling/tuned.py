"""Tuned time grids on disk: ``fm tune`` writes them next to the checkpoint, sampling finds them there.

A checkpoint ``step-0001600.safetensors`` gets ``step-0001600.grids.json`` beside it (beside the file a run
folder's ``last.safetensors`` link points to). The file names the checkpoint's content (its SHA-256), and
holds one entry per setting a grid was tuned for: solver, steps, guidance scale cfg, whether the pool was
class-conditional, and the weights (ema/raw). An entry is the grid t_0 = 1 > t_1 > ... > t_K = 0 (t = 1 is
noise, t = 0 data) and optionally one velocity scale per step (``Integration.step_scales``).

Nothing here is used silently: a damaged file, times that are not strictly monotone from 1 to 0, or a file
made for other content (the checkpoint was retrained or replaced) is a one-line FMError whenever sampling
consults the file; an entry is used only for exactly its settings. Written atomically; ``fm tune`` merges.
Imports no torch (``fm info`` lists the grids from the header and this file alone).
"""

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fmcli.errors import FMError
from fmcli.io.files import atomic_write_bytes
from fmcli.io.header import checkpoint_file

FORMAT = "fm-tuned-grids"
VERSION = 1
GRID_NAMES_HINT = "run fm tune again, or delete the file"


@dataclass(frozen=True)
class TunedSetting:
    """What a tuned grid is keyed by: the same solver, steps, guidance, kind of pool and weights."""

    solver: str
    steps: int
    cfg: float
    conditional: bool  # calibrated on class-conditional draws (fm sample --class, fm eval) or unconditional
    weights: str = "ema"
    guidance: str = ""  # the guidance's interval and guide (``Guidance.key``); "" for everywhere, no guide

    def matches(self, other: "TunedSetting") -> bool:
        return (self.solver, self.steps, self.conditional, self.weights, self.guidance) == (
            other.solver,
            other.steps,
            other.conditional,
            other.weights,
            other.guidance,
        ) and math.isclose(self.cfg, other.cfg, rel_tol=0, abs_tol=1e-9)

    def describe(self) -> str:
        pool = "" if self.conditional else ", unconditional"
        weights = "" if self.weights == "ema" else f", {self.weights} weights"
        guidance = f", {self.guidance}" if self.guidance else ""
        return f"{self.solver} {self.steps} steps, cfg {self.cfg:g}{guidance}{pool}{weights}"


@dataclass
class TunedGrid:
    """One tuned grid: its setting, the times (1 -> 0), the per-step scales, and how it was fitted."""

    setting: TunedSetting
    times: tuple[float, ...]  # K + 1 times, strictly decreasing from 1 to 0
    scales: tuple[float, ...] | None = None  # K positive velocity scales (None: 1)
    calibration: dict[str, Any] = field(default_factory=dict)  # errors before/after, pool, reference, optimiser

    def as_json(self) -> dict:
        return asdict(self.setting) | {
            "times": list(self.times),
            "scales": None if self.scales is None else list(self.scales),
            "calibration": self.calibration,
        }


def grid_file(checkpoint: Path) -> Path:
    """Where a checkpoint's tuned grids live: beside the file itself (links resolved), ``NAME.grids.json``."""
    return checkpoint_file(Path(checkpoint)).resolve().with_suffix(".grids.json")


_DIGESTS: dict[tuple[str, int, int], str] = {}


def checkpoint_digest(checkpoint: Path) -> str:
    """SHA-256 of the checkpoint file's bytes (cached per path, size and modification time in this process)."""
    path = checkpoint_file(Path(checkpoint)).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def check_times(times: Any, steps: int | None = None) -> tuple[float, ...]:
    """Grid times as a tuple, or FMError: K + 1 >= 3 finite numbers, strictly decreasing from exactly 1 to 0."""
    if not isinstance(times, (list, tuple)) or not all(isinstance(t, (int, float)) for t in times):
        raise FMError(f"times must be a list of numbers (got {times!r})")
    times = tuple(float(t) for t in times)
    if len(times) < 3 or (steps is not None and len(times) != steps + 1):
        raise FMError(
            f"a tuned grid of {steps} steps needs {steps + 1 if steps else '3 or more'} times (got {len(times)})"
        )
    if times[0] != 1.0 or times[-1] != 0.0:
        raise FMError(f"times must run from 1 (noise) to 0 (data) (got {times[0]:g} ... {times[-1]:g})")
    if not all(math.isfinite(t) for t in times) or any(b >= a for a, b in zip(times[:-1], times[1:], strict=True)):
        raise FMError(f"times must be strictly decreasing from 1 to 0 (got {[round(t, 6) for t in times]})")
    return times


def _entry(raw: Any) -> TunedGrid:
    if not isinstance(raw, dict):
        raise FMError("an entry is not an object")
    try:
        setting = TunedSetting(
            solver=str(raw["solver"]),
            steps=int(raw["steps"]),
            cfg=float(raw["cfg"]),
            conditional=bool(raw["conditional"]),
            weights=str(raw.get("weights", "ema")),
            guidance=str(raw.get("guidance", "")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise FMError(f"an entry lacks a readable solver, steps, cfg or conditional ({error})") from None
    if setting.steps < 2 or not math.isfinite(setting.cfg):
        raise FMError(f"an entry has steps {setting.steps} or cfg {setting.cfg} out of range")
    times = check_times(raw.get("times"), setting.steps)
    scales = raw.get("scales")
    if scales is not None:
        good = isinstance(scales, list) and len(scales) == setting.steps
        good = good and all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in scales)
        if not good:
            raise FMError(f"scales must be {setting.steps} positive numbers (got {scales!r})")
        scales = tuple(float(s) for s in scales)
    calibration = raw.get("calibration") if isinstance(raw.get("calibration"), dict) else {}
    return TunedGrid(setting, times, scales, calibration)


@dataclass
class GridFile:
    """A checkpoint's grid file as read: which content it was made for, and its grids."""

    path: Path
    sha256: str
    grids: list[TunedGrid]


def read_grid_file(path: Path) -> GridFile:
    """Parse and check every entry; FMError (one line, naming the file) for anything damaged or hand-broken."""
    try:
        raw = json.loads(Path(path).read_text())
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise FMError(f"it is not an {FORMAT} file")
        if raw.get("version") != VERSION:
            raise FMError(f"version {raw.get('version')} is not {VERSION}")
        sha256 = raw.get("checkpoint", {}).get("sha256")
        if not isinstance(sha256, str) or len(sha256) != 64:
            raise FMError("it names no checkpoint content (sha256)")
        if not isinstance(raw.get("grids"), list):
            raise FMError("it has no list of grids")
        return GridFile(Path(path), sha256, [_entry(entry) for entry in raw["grids"]])
    except (OSError, ValueError, AttributeError) as error:  # unreadable, or not JSON
        reason = (str(error).splitlines() or [type(error).__name__])[0][:120]
        raise FMError(f"tuned grid file {path} is damaged ({reason}); {GRID_NAMES_HINT}") from None
    except FMError as error:
        raise FMError(f"tuned grid file {path} is damaged: {error}; {GRID_NAMES_HINT}") from None


def checkpoint_grids(checkpoint: Path, *, required: bool = False) -> list[TunedGrid]:
    """The grids tuned for this checkpoint's content. No file: [] (FMError if ``required``). A file made for
    other content, or a damaged one: FMError, never a silent fallback."""
    path = grid_file(checkpoint)
    if not path.exists():
        if required:
            raise FMError(f"{checkpoint} has no tuned grids ({path.name} is absent): run fm tune {checkpoint} first")
        return []
    stored = read_grid_file(path)
    if stored.sha256 != checkpoint_digest(checkpoint):
        raise FMError(
            f"tuned grid file {path} was made for other checkpoint content (retrained or replaced since); "
            f"{GRID_NAMES_HINT}"
        )
    return stored.grids


def find_tuned(checkpoint: Path, setting: TunedSetting, *, required: bool) -> TunedGrid | None:
    """The grid tuned for exactly ``setting``; None when there is none (FMError if ``required``)."""
    grids = checkpoint_grids(checkpoint, required=required)
    found = next((grid for grid in grids if grid.setting.matches(setting)), None)
    if found is None and required:
        have = "; ".join(grid.setting.describe() for grid in grids) or "none"
        raise FMError(
            f"no tuned grid for {setting.describe()} (tuned: {have}); run fm tune {checkpoint} --solver "
            f"{setting.solver} --steps {setting.steps} --cfg {setting.cfg:g}, or choose another --time-grid"
        )
    return found


def store_tuned(checkpoint: Path, grids: list[TunedGrid]) -> Path:
    """Merge ``grids`` into the checkpoint's grid file (same setting: replaced) and write it atomically.

    A damaged file is refused (FMError, nothing written); one made for other content is replaced whole."""
    path = grid_file(checkpoint)
    digest = checkpoint_digest(checkpoint)
    kept: list[TunedGrid] = []
    if path.exists():
        stored = read_grid_file(path)
        if stored.sha256 == digest:
            kept = [old for old in stored.grids if not any(old.setting.matches(new.setting) for new in grids)]
    merged = sorted(kept + list(grids), key=lambda g: (g.setting.solver, g.setting.cfg, g.setting.steps))
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "checkpoint": {"file": checkpoint_file(Path(checkpoint)).resolve().name, "sha256": digest},
        "grids": [grid.as_json() for grid in merged],
    }
    atomic_write_bytes(path, (json.dumps(payload, indent=1) + "\n").encode())
    return path


def listed_grids(checkpoint: Path) -> dict:
    """For fm info: the grid file, and its grids (or the one-line reason they cannot be used)."""
    path = grid_file(checkpoint)
    if not path.exists():
        return {"file": None, "grids": []}
    try:
        grids = checkpoint_grids(checkpoint)
    except FMError as error:
        return {"file": str(path), "grids": [], "error": str(error)}
    return {"file": str(path), "grids": [grid.as_json() for grid in grids]}


@dataclass(frozen=True)
class ResolvedGrid:
    """What a sampling run integrates on: the Integration's time grid, its step scales, and a label for reports
    (``tuned``, a grid name, or ``explicit``)."""

    time_grid: Any  # a grid name or explicit times
    step_scales: tuple[float, ...] | None
    label: str


def resolve_grid(time_grid: Any, checkpoint: Path | None, setting: TunedSetting, *, adaptive: bool) -> ResolvedGrid:
    """``--time-grid`` against the checkpoint: "tuned" must find the grid tuned for exactly ``setting``
    (FMError otherwise); None (not given) takes it when it exists, else uniform; anything else is itself.
    Adaptive solvers take no grid: None is uniform (unused) for them, "tuned" an error."""
    if time_grid is not None and time_grid != "tuned":
        return ResolvedGrid(time_grid, None, time_grid if isinstance(time_grid, str) else "explicit")
    required = time_grid == "tuned"
    if adaptive:
        if required:
            raise FMError(f"--time-grid tuned: solver {setting.solver!r} is adaptive and chooses its own steps")
        return ResolvedGrid("uniform", None, "uniform")
    if checkpoint is None:  # a model built in memory (training previews): no file, no tuned grid
        if required:
            raise FMError("--time-grid tuned needs a model loaded from a checkpoint file")
        return ResolvedGrid("uniform", None, "uniform")
    found = find_tuned(checkpoint, setting, required=required)
    if found is None:
        return ResolvedGrid("uniform", None, "uniform")
    return ResolvedGrid(found.times, found.scales, "tuned")
