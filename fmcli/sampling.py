"""Generate samples: draw x1 ~ N(0, I) and integrate dx/dt = v(x, t, y) from t = 1 (noise) to t = 0 (data).

Classifier-free guidance combines the conditional and the unconditional ("null" class)
velocities as ``v_uncond + cfg * (v_cond - v_uncond)``: cfg = 1 is plain conditional
sampling; larger values give more typical, class-faithful samples at the cost of diversity.
MeanFlow's average velocities u (``--solver meanflow``) are combined the same way.

``SamplingOptions`` is the one shape of "how to sample" that ``fm sample``, ``fm animate``,
``fm eval`` and the training loop's sample grids all pass to ``generate``.
"""

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from fmcli.checkpoint import LoadedModel
from fmcli.errors import FMError
from fmcli.models.unet import NO_INTERVAL_INPUT
from fmcli.registry import get_solver
from fmcli.solvers.base import needs_interval
from fmcli.solvers.grids import TIME_GRIDS

DEFAULT_GUIDANCE = 2.0
# What a checkpoint samples with when no --solver / --steps is given: heun 20 for flow models, the
# few-step sampler for models trained with --objective meanflow or distilled.
FLOW_DEFAULT = ("heun", 20)
FEW_STEP_DEFAULT = ("meanflow", 4)  # 4 steps: the distilled demo model's FID matches its teacher's heun 20 there


@dataclass(frozen=True)
class SamplingOptions:
    """How to integrate from noise to data. Validated on creation: a bad value fails before any work."""

    solver: str | None = None  # a registered solver (fm plugins lists them); None: the checkpoint's default
    steps: int | None = None  # steps of a fixed-step solver (NFE = steps x evaluations per step); None: default
    time_grid: str = "uniform"  # where fixed-step solvers put their steps (fmcli.solvers.grids)
    rtol: float = 1e-5  # tolerances of adaptive solvers
    atol: float = 1e-5
    cfg: float | None = None  # guidance scale; None: ``default_cfg`` (2 for --class on a model with label dropout)
    seed: int = 0  # seed of the noise: same checkpoint, seed and options give the same samples
    batch_size: int = 500  # samples per solver call

    def __post_init__(self) -> None:
        if self.solver is not None:
            get_solver(self.solver)  # unknown names: FMError with the closest match
        if self.steps is not None and self.steps < 1:
            raise FMError(f"--steps must be at least 1 (got {self.steps})")
        if self.time_grid not in TIME_GRIDS:
            raise FMError(f"--time-grid must be one of {', '.join(TIME_GRIDS)} (got {self.time_grid!r})")
        for name, value in (("rtol", self.rtol), ("atol", self.atol)):
            if not (math.isfinite(value) and 0 < value < 1):
                raise FMError(f"--{name} must be a tolerance between 0 and 1, exclusive (got {value:g})")
        if self.cfg is not None and not math.isfinite(self.cfg):
            raise FMError(f"--cfg must be a finite number (got {self.cfg})")
        if self.batch_size < 1:
            raise FMError(f"--batch-size must be at least 1 (got {self.batch_size})")

    def as_dict(self) -> dict:
        return asdict(self)

    def for_model(self, loaded: LoadedModel) -> "SamplingOptions":
        """These options with the checkpoint's defaults filled in: solver and steps (few-step sampling for
        MeanFlow models), and the guidance (``default_cfg``) is left to ``generate``."""
        solver, steps = FEW_STEP_DEFAULT if loaded.meta.model_config.get("interval") else FLOW_DEFAULT
        if self.solver is not None and self.solver != solver:
            steps = FLOW_DEFAULT[1]  # another solver than the checkpoint's own: the usual step count
        return replace(self, solver=self.solver or solver, steps=self.steps or steps)


@dataclass
class SampleResult:
    samples: Tensor  # float on the CPU [N, ...], model space ([-1, 1] for images)
    labels: Tensor | None  # int64 [N], None when unconditional
    nfe: int  # model evaluations per sample (velocity calls of one solve)
    seconds: float  # wall time of sampling
    cfg: float  # the guidance scale used
    options: SamplingOptions  # what was used, defaults filled in
    times: Tensor | None = None  # [T] times of the trajectory, if save_at was given
    trajectory: Tensor | None = None  # [T, N, ...] on the CPU


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


def default_cfg(loaded: LoadedModel, classes: Tensor | None) -> float:
    """Guidance when the user gives no --cfg: 2 for class-conditional sampling from a model trained
    with label dropout (class-faithful samples, at some cost in diversity), otherwise 1 (none).
    A model trained with guidance folded in (--train-cfg, fm distill) already samples guided: 1."""
    if float((loaded.meta.train_config or {}).get("train_cfg") or 1.0) != 1.0:
        return 1.0
    if classes is not None and loaded.meta.num_classes and loaded.meta.label_dropout > 0:
        return DEFAULT_GUIDANCE
    return 1.0


def check_guidance(loaded: LoadedModel, cfg: float, classes: Tensor | None) -> None:
    if cfg == 1.0:
        return
    if loaded.meta.num_classes == 0 or classes is None:
        raise FMError("--cfg needs a class-conditional model and --class")
    if loaded.meta.label_dropout <= 0:
        raise FMError(
            "--cfg other than 1 needs a model trained with label dropout (--label-dropout > 0); "
            "this checkpoint was trained without it, so it has no unconditional velocity"
        )


@torch.inference_mode()
def generate(
    loaded: LoadedModel,
    options: SamplingOptions,
    *,
    num: int,
    classes: Tensor | None = None,
    save_at: Sequence[float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SampleResult:
    """Sample ``num`` items from t = 1 (noise) to t = 0 (data). Same inputs, same outputs."""
    if num < 1:
        raise FMError(f"--num must be at least 1 (got {num})")
    options = options.for_model(loaded)
    cfg = default_cfg(loaded, classes) if options.cfg is None else options.cfg
    check_guidance(loaded, cfg, classes)
    solver = get_solver(options.solver)
    if needs_interval(solver) and not loaded.meta.model_config.get("interval"):
        raise FMError(f"--solver {options.solver}: {NO_INTERVAL_INPUT} (use an ODE solver such as heun)")
    device = loaded.device
    velocity = guided_velocity(loaded.model, cfg, null_class=loaded.meta.num_classes)
    generator = torch.Generator().manual_seed(options.seed)
    outputs, trajectories, nfe, times = [], [], 0, None
    start = time.perf_counter()
    for first in range(0, num, options.batch_size):
        count = min(options.batch_size, num - first)
        x1 = torch.randn((count, *loaded.meta.shape), generator=generator).to(device)
        conditioning = {} if classes is None else {"y": classes[first : first + count].to(device)}
        result = solver.solve(
            velocity,
            x1,
            t_start=1.0,
            t_end=0.0,
            steps=options.steps,
            time_grid=options.time_grid,
            rtol=options.rtol,
            atol=options.atol,
            save_at=save_at,
            conditioning=conditioning,
        )
        outputs.append(result.x.float().cpu())
        nfe = max(nfe, result.nfe)
        if result.trajectory is not None:
            trajectories.append(result.trajectory.float().cpu())
            times = result.times
        if progress:
            progress(first + count, num)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return SampleResult(
        samples=torch.cat(outputs),
        labels=classes,
        nfe=nfe,
        seconds=time.perf_counter() - start,
        cfg=cfg,
        options=options,
        times=times,
        trajectory=torch.cat(trajectories, dim=1) if trajectories else None,
    )


# The grids the training loop writes every --sample-every steps: a quick look, not a measurement.
PREVIEW = SamplingOptions(steps=10, cfg=1.0, seed=1234)  # heun 10; a MeanFlow model's own few steps
PREVIEW_PER_CLASS = 8


def write_sample_grid(loaded: LoadedModel, path: Path):
    """A PNG of samples: 8 per class (one row each) for conditional image models, 64 images or 1,000
    points otherwise. Used by training for its ``samples/step-*.png`` previews; returns the picture."""
    from fmcli.data.base import to_uint8
    from fmcli.files import atomic_write_bytes
    from fmcli.images import grid_image, png_bytes, scatter_image

    num_classes, points = loaded.meta.num_classes, loaded.meta.data["kind"] == "points"
    num = PREVIEW_PER_CLASS * num_classes if num_classes else (1000 if points else 64)
    classes = balanced_classes(num, num_classes) if num_classes else None
    preview = replace(PREVIEW, steps=None) if loaded.meta.model_config.get("interval") else PREVIEW
    result = generate(loaded, preview, num=num, classes=classes)
    if points:
        picture = scatter_image(result.samples, result.labels)
    else:
        picture = grid_image(to_uint8(result.samples), nrow=PREVIEW_PER_CLASS if num_classes else None, scale=2)
    atomic_write_bytes(path, png_bytes(picture))
    return picture
