"""Guidance and class labels: what the solvers' velocity function is made of.

One formula, ``v = v_ref + S (v_cond - v_ref)``, three knobs (``GuidanceSetting``):

- the scale S (``--cfg``): 1 is plain conditional sampling; larger S gives more typical, class-faithful samples
  at the cost of diversity.
- the reference v_ref: the model's own unconditional ("null class") velocity (classifier-free guidance), or
  ``--guide CKPT``'s velocity under the same conditioning (autoguidance, Karras et al. 2024: an earlier
  checkpoint or a smaller model of the same task, whose errors the model's own exceed less than its content).
- the interval (``--guidance-interval LO,HI``, in fm's times: t = 1 noise, t = 0 data; Kynkäänniemi et al.
  2024): guidance at high noise costs diversity and at low noise does nothing, so outside [LO, HI] only
  v_cond is evaluated, one network pass instead of two.

MeanFlow's average velocities u (``--solver meanflow``) are combined the same way. ``resolve_guidance`` turns
the options (flags win), the setting ``fm tune --guidance`` stored (``fmcli.sampling.stored_guidance``) and
the defaults (``default_cfg``) into the ``Guidance`` that ``generate`` samples with.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fmcli.errors import FMError
from fmcli.sampling.options import DEFAULT_GUIDANCE
from fmcli.sampling.stored_guidance import EVERYWHERE, GuidanceSetting, check_label, interval_text, read_stored

if TYPE_CHECKING:
    from fmcli.io.checkpoint import LoadedModel


def balanced_classes(num: int, num_classes: int) -> Tensor:
    """0, 0, ..., 1, 1, ...: an equal share per class (the first classes get one more if uneven)."""
    return torch.arange(num) * num_classes // num


def parse_classes(spec: str | None, num: int, class_names: Sequence[str]) -> Tensor | None:
    """``--class`` as an index, a class name or ``all``, into labels [num] (None: unconditional)."""
    if spec is None:
        return None
    if not class_names:
        raise FMError("--class was given but this model is unconditional (it was trained without labels)")
    if spec == "all":
        return balanced_classes(num, len(class_names))
    if spec in class_names:
        index = list(class_names).index(spec)
    elif spec.lstrip("-").isdigit():
        index = int(spec)
        if not 0 <= index < len(class_names):
            raise FMError(f"--class {index} is out of range: this model knows classes 0..{len(class_names) - 1}")
    else:
        raise FMError(
            f"unknown class {spec!r}: use an index 0..{len(class_names) - 1}, one of "
            f"{', '.join(class_names[:20])}, or 'all'"
        )
    return torch.full((num,), index, dtype=torch.long)


EDGE = 1e-6  # an interval's ends include the grid times that are meant to be them (0.3 in float32 is 0.30000001)


class GuidedVelocity:
    """The velocity v(x, t, y=None, r=None) the solvers call: ``v_ref + S (v_cond - v_ref)`` where t lies in the
    interval (and there is something to guide with), else plain ``v_cond``. ``passes`` counts the network
    passes spent per sample (a guided evaluation is two: the batch doubled, or the model and its guide).

    r (the MeanFlow solver's interval start) reaches the models as ``r=`` only when given, so models without
    the interval input keep their plain model(x, t, y) call."""

    def __init__(self, model, scale: float, null_class: int, interval=None, guide=None, guide_label: str = "null"):
        self.model, self.scale, self.null_class, self.guide = model, float(scale), null_class, guide
        self.interval, self.guide_null = interval, guide_label == "null"
        self.passes = 0

    def guides(self, t: Tensor | float, y: Tensor | None) -> bool:
        """Whether an evaluation at time t (one time for the batch) is guided (two passes) or plain (one)."""
        if self.scale == 1.0 or (y is None and self.guide is None):
            return False
        if self.interval is None:
            return True
        t = float(t.detach().reshape(-1)[0]) if isinstance(t, Tensor) else float(t)
        return self.interval[0] - EDGE <= t <= self.interval[1] + EDGE

    def _call(self, model, x: Tensor, t: Tensor, y: Tensor | None, r: Tensor | None) -> Tensor:
        return model(x, t, y) if r is None else model(x, t, y, r=r)

    def _guided(self, x: Tensor, t: Tensor, y: Tensor | None, r: Tensor | None, y_ref: Tensor | None = None) -> Tensor:
        """``y_ref``: the reference condition (a negative prompt's token ids) in place of the null condition."""
        null = None if y is None else torch.full_like(y, self.null_class) if y_ref is None else y_ref
        if self.guide is not None:  # the guide's velocity: for the null condition, or the same conditioning
            label = null if self.guide_null else y
            v_cond, v_ref = self._call(self.model, x, t, y, r), self._call(self.guide, x, t, label, r)
        else:  # classifier-free: the null condition (or the reference one), both in one batch
            r_both = None if r is None else torch.cat([r, r])
            both = self._call(self.model, torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), r_both)
            v_cond, v_ref = both.chunk(2)
        return v_ref + self.scale * (v_cond - v_ref)

    def __call__(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, r: Tensor | None = None, y_ref: Tensor | None = None
    ) -> Tensor:
        t_batch = t.to(x.dtype).expand(x.shape[0])
        r_batch = None if r is None else r.to(x.dtype).expand(x.shape[0])
        if t.numel() > 1 and self.interval is not None and self.guides(self.interval[0], y):
            return self._per_sample(x, t_batch, y, r_batch)  # a training batch: each sample its own time
        if not self.guides(t, y):
            self.passes += 1
            return self._call(self.model, x, t_batch, y, r_batch)
        self.passes += 2
        return self._guided(x, t_batch, y, r_batch, y_ref)

    def _per_sample(self, x: Tensor, t: Tensor, y: Tensor | None, r: Tensor | None) -> Tensor:
        """Guided rows where each sample's own t lies in the interval, plain ones elsewhere."""
        inside = (t >= self.interval[0] - EDGE) & (t <= self.interval[1] + EDGE)
        self.passes += 1 + int(bool(inside.any()))
        out = torch.empty_like(x)
        for rows, function in ((~inside, self._call_plain), (inside, self._guided)):
            if rows.any():
                out[rows] = function(x[rows], t[rows], None if y is None else y[rows], None if r is None else r[rows])
        return out

    def _call_plain(self, x: Tensor, t: Tensor, y: Tensor | None, r: Tensor | None) -> Tensor:
        return self._call(self.model, x, t, y, r)


def guided_velocity(
    model: torch.nn.Module,
    cfg: float,
    null_class: int,
    interval=None,
    guide: torch.nn.Module | None = None,
    guide_label: str = "null",
) -> GuidedVelocity:
    """The velocity function the solvers call (``GuidedVelocity``): classifier-free guidance at scale ``cfg``,
    or guidance by ``guide``'s velocity (for the "null" class, or the "same" class: autoguidance), within
    ``interval`` (None: everywhere)."""
    return GuidedVelocity(model, cfg, null_class, interval, guide, guide_label)


def model_passes(cfg: float, conditional: bool, guide: bool = False) -> int:
    """Network passes of the costliest velocity evaluation: 2 when it guides (the batch doubled, or the model
    and its guide), else 1."""
    return 2 if cfg != 1.0 and (conditional or guide) else 1


def default_cfg(loaded: "LoadedModel", classes: Tensor | None) -> float:
    """Guidance when the user gives no --cfg: 2 for class-conditional sampling from a model trained
    with label dropout (class-faithful samples, at some cost in diversity), otherwise 1 (none).
    A model trained with guidance folded in (--train-cfg, fm distill) already samples guided: 1."""
    if float((loaded.meta.train_config or {}).get("train_cfg") or 1.0) != 1.0:
        return 1.0
    if classes is not None and loaded.meta.conditional and loaded.meta.label_dropout > 0:
        return DEFAULT_GUIDANCE
    return 1.0


def check_guidance(loaded: "LoadedModel", cfg: float, classes: Tensor | None, guided_by: bool = False) -> None:
    """Classifier-free guidance needs class labels and a model trained with label dropout (its unconditional
    velocity); autoguidance (``guided_by``) needs neither."""
    if cfg == 1.0 or guided_by:
        return
    if not loaded.meta.conditional or classes is None:
        asked = "--prompt" if loaded.meta.condition == "text" else "--class"
        raise FMError(f"--cfg needs a conditional model and {asked} (or a --guide for autoguidance)")
    if loaded.meta.label_dropout <= 0:
        dropout = (
            "caption dropout (--caption-dropout"
            if loaded.meta.condition == "text"
            else "label dropout (--label-dropout"
        )
        raise FMError(
            f"--cfg other than 1 needs a model trained with {dropout} > 0); this checkpoint was trained without it, "
            "so it has no unconditional velocity (a --guide has no such need)"
        )


@dataclass
class Guidance:
    """The guidance one sampling run uses: the setting, the guide's loaded model, and where it came from."""

    setting: GuidanceSetting
    guide: "LoadedModel | None" = None
    source: str = "default"  # "options" (flags), "tuned" (the stored setting), "default" (default_cfg)

    def velocity(self, loaded: "LoadedModel") -> GuidedVelocity:
        guide = None if self.guide is None else self.guide.model
        interval = None if self.setting.interval in (None, EVERYWHERE) else self.setting.interval
        return GuidedVelocity(
            loaded.model, self.setting.scale, loaded.meta.null_condition, interval, guide, self.setting.guide_label
        )

    def key(self) -> str:
        """The interval and guide, for keying tuned grids: "" for guidance everywhere by the null class."""
        from fmcli.sampling.tuned import checkpoint_digest

        parts = []
        if self.setting.active and self.setting.interval not in (None, EVERYWHERE):
            parts.append(f"interval {interval_text(self.setting.interval)}")
        if self.guide is not None and self.guide.path is not None:
            parts.append(f"guide {checkpoint_digest(self.guide.path)[:16]} {self.setting.guide_label}")
        return "; ".join(parts)

    def grid_key(self, solver: str, steps: int, conditional: bool, weights: str):
        """What a tuned time grid is stored under for this guidance (``fmcli.sampling.tuned.TunedSetting``)."""
        from fmcli.sampling.tuned import TunedSetting

        return TunedSetting(solver, steps, self.setting.scale, conditional, weights, self.key())

    def max_passes(self, conditional: bool) -> int:
        return model_passes(self.setting.scale, conditional, self.guide is not None)


def resolve_guidance(loaded: "LoadedModel", flags, classes: Tensor | None) -> Guidance:
    """The guidance to sample with. ``flags`` holds ``cfg``, ``guidance_interval`` ((lo, hi)), ``guide`` (a path
    or "none") and ``guide_label`` (null or same), as SamplingOptions does; each one given wins. What is not given
    comes from the setting ``fm tune --guidance`` stored beside the checkpoint (for this kind of sampling: --class
    or unlabelled), else from the defaults (``default_cfg``, everywhere, no guide, the guide's null class). A guide
    given without --cfg guides at the default scale (DEFAULT_GUIDANCE)."""
    given = {name: getattr(flags, name, None) for name in ("cfg", "guidance_interval", "guide", "guide_label")}
    stored = None
    if None in given.values() and loaded.path is not None:
        found = read_stored(loaded.path)
        if found is not None and found.conditional == (classes is not None):
            stored = found
    base = stored.setting if stored is not None else GuidanceSetting(default_cfg(loaded, classes))
    guide = (
        base.guide if given["guide"] is None else (None if str(given["guide"]).lower() == "none" else given["guide"])
    )
    scale = base.scale if given["cfg"] is None else float(given["cfg"])
    if given["cfg"] is None and stored is None and guide is not None and scale == 1.0:
        scale = DEFAULT_GUIDANCE
    interval = base.interval if given["guidance_interval"] is None else tuple(given["guidance_interval"])
    label = check_label(given["guide_label"] or base.guide_label)
    setting = GuidanceSetting(scale, interval, None if guide is None else str(guide), label)
    check_guidance(loaded, scale, classes, guided_by=guide is not None)
    # "tuned" whenever the stored setting is what runs, flags that restate it (fm serve's boxes) included.
    if stored is not None and setting.as_json() == stored.setting.as_json():
        source = "tuned"
    else:
        source = "default" if all(value is None for value in given.values()) else "options"
    model = load_guide(guide, loaded) if guide is not None and setting.active else None
    if model is not None and label == "null" and classes is not None and model.meta.label_dropout <= 0:
        raise FMError(f"--guide {guide} was trained without label dropout, so it has no unconditional velocity: "
                      "use --guide-label same")  # fmt: skip
    return Guidance(setting, model, source)


_GUIDES: dict[tuple, "LoadedModel"] = {}


def load_guide(path: str | Path, loaded: "LoadedModel") -> "LoadedModel":
    """The guide checkpoint, loaded on the model's device, after checking it can guide this model: the same data
    (name, item shape, classes), the same objective and kind of velocity, guidance not folded into either, and
    not the model itself. One FMError line for each mismatch; loaded once per process."""
    from fmcli.io.checkpoint import checkpoint_file, load_checkpoint, read_header
    from fmcli.sampling.tuned import checkpoint_digest

    if not Path(path).exists():
        raise FMError(f"--guide {path}: no such checkpoint (a .safetensors file or a run folder)")
    file = checkpoint_file(Path(path)).resolve()
    _, meta = read_header(file)
    own = loaded.meta
    trained, theirs = own.train_config or {}, meta.train_config or {}
    checks = [
        ("data set", own.data.get("name"), meta.data.get("name")),
        ("item shape", list(own.shape), list(meta.shape)),
        ("classes", own.class_names, meta.class_names),
        ("condition", own.condition, meta.condition),
        ("text encoder", _text_id(own.model_config), _text_id(meta.model_config)),
        ("objective", trained.get("objective", "fm"), theirs.get("objective", "fm")),
        ("interval input", bool(own.model_config.get("interval")), bool(meta.model_config.get("interval"))),
        ("folded guidance (--train-cfg)", float(trained.get("train_cfg") or 1), float(theirs.get("train_cfg") or 1)),
    ]
    for what, mine, its in checks:
        if mine != its:
            raise FMError(f"--guide {path} cannot guide this model: its {what} is {its!r}, the model's {mine!r}")
    if loaded.path is not None and checkpoint_digest(file) == checkpoint_digest(loaded.path):
        raise FMError(f"--guide {path} is the model itself: guide with an earlier checkpoint or a smaller model")
    key = (str(file), file.stat().st_mtime_ns, str(loaded.device), loaded.weights)
    if key not in _GUIDES:
        _GUIDES.clear()  # one guide at a time: a server switching models does not pile them up
        _GUIDES[key] = load_checkpoint(file, device=loaded.device, weights=loaded.weights)
    return _GUIDES[key]


def _text_id(model_config: dict) -> str | None:
    """A text model's encoder, vocabulary included, as a short digest (None: not a text model)."""
    import hashlib
    import json

    text = model_config.get("text")
    if not text:
        return None
    return f"{text.get('name')} {hashlib.sha256(json.dumps(text, sort_keys=True).encode()).hexdigest()[:12]}"


def guidance_note(result) -> str:
    """ "cfg 2 for t in [0.2, 0.8] (tuned), 58 network passes, " for a sampling run's one-line report."""
    guidance = result.guidance
    if guidance is None or not guidance.setting.active:
        return ""
    tuned = " (tuned)" if guidance.source == "tuned" else ""
    return f"{guidance.setting.describe()}{tuned}, {result.passes} network passes, "
