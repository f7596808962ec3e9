"""Classifier-free guidance and class labels: what the solvers' velocity function is made of.

Classifier-free guidance combines the conditional and the unconditional ("null" class) velocities as
``v_uncond + cfg * (v_cond - v_uncond)``: cfg = 1 is plain conditional sampling; larger values give more
typical, class-faithful samples at the cost of diversity. MeanFlow's average velocities u (``--solver
meanflow``) are combined the same way.
"""

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fmcli.errors import FMError
from fmcli.sampling.options import DEFAULT_GUIDANCE

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


def guided_velocity(model: torch.nn.Module, cfg: float, null_class: int) -> Callable[..., Tensor]:
    """The velocity function v(x, t, y=None, r=None) the solvers call, with classifier-free guidance.

    r (the MeanFlow solver's interval start) reaches the model as ``r=`` only when given, so models
    without the interval input keep their plain model(x, t, y) call.
    """

    def velocity(x: Tensor, t: Tensor, y: Tensor | None = None, r: Tensor | None = None) -> Tensor:
        t_batch = t.to(x.dtype).expand(x.shape[0])
        r_batch = None if r is None else r.to(x.dtype).expand(x.shape[0])
        if y is None or cfg == 1.0:
            return model(x, t_batch, y) if r_batch is None else model(x, t_batch, y, r=r_batch)
        null = torch.full_like(y, null_class)
        inputs = (torch.cat([x, x]), torch.cat([t_batch, t_batch]), torch.cat([y, null]))
        both = model(*inputs) if r_batch is None else model(*inputs, r=torch.cat([r_batch, r_batch]))
        v_cond, v_uncond = both.chunk(2)
        return v_uncond + cfg * (v_cond - v_uncond)

    return velocity


def model_passes(cfg: float, conditional: bool) -> int:
    """Network passes per velocity evaluation of ``guided_velocity``: 2 when it guides (the batch doubled), else 1."""
    return 2 if conditional and cfg != 1.0 else 1


def default_cfg(loaded: "LoadedModel", classes: Tensor | None) -> float:
    """Guidance when the user gives no --cfg: 2 for class-conditional sampling from a model trained
    with label dropout (class-faithful samples, at some cost in diversity), otherwise 1 (none).
    A model trained with guidance folded in (--train-cfg, fm distill) already samples guided: 1."""
    if float((loaded.meta.train_config or {}).get("train_cfg") or 1.0) != 1.0:
        return 1.0
    if classes is not None and loaded.meta.num_classes and loaded.meta.label_dropout > 0:
        return DEFAULT_GUIDANCE
    return 1.0


def check_guidance(loaded: "LoadedModel", cfg: float, classes: Tensor | None) -> None:
    if cfg == 1.0:
        return
    if loaded.meta.num_classes == 0 or classes is None:
        raise FMError("--cfg needs a class-conditional model and --class")
    if loaded.meta.label_dropout <= 0:
        raise FMError(
            "--cfg other than 1 needs a model trained with label dropout (--label-dropout > 0); "
            "this checkpoint was trained without it, so it has no unconditional velocity"
        )
