"""Generate samples: draw x1 ~ N(0, I) and integrate dx/dt = v(x, t, y) from t = 1 to t = 0.

Classifier-free guidance combines the conditional and the unconditional ("null" class)
velocities as ``v_uncond + cfg * (v_cond - v_uncond)``: cfg = 1 is plain conditional
sampling; larger values give more typical, class-faithful samples at the cost of diversity.
MeanFlow's average velocities u (``--solver meanflow``) are combined the same way.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fmcli.checkpoint import LoadedModel
from fmcli.errors import FMError
from fmcli.models.unet import NO_INTERVAL_INPUT
from fmcli.registry import get_solver
from fmcli.solvers.base import needs_interval


@dataclass
class SampleResult:
    samples: Tensor                  # float on the CPU [N, ...], model space ([-1, 1] for images)
    labels: Tensor | None            # int64 [N], None when unconditional
    nfe: int                         # model evaluations per sample (velocity calls of one solve)
    seconds: float                   # wall time of sampling
    times: Tensor | None = None      # [T] times of the trajectory, if save_at was given
    trajectory: Tensor | None = None  # [T, N, ...] on the CPU


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FMError("--device cuda was asked for but no CUDA GPU is available (try --device auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FMError("--device mps was asked for but MPS is not available (try --device auto)")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise FMError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


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
        raise FMError(f"unknown class {spec!r}: use an index 0..{len(class_names) - 1}, one of "
                      f"{', '.join(class_names[:20])}, or 'all'")
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


DEFAULT_GUIDANCE = 2.0


def default_cfg(loaded: LoadedModel, classes: Tensor | None) -> float:
    """Guidance when the user gives no --cfg: 2 for class-conditional sampling from a model trained
    with label dropout (class-faithful samples, at some cost in diversity), otherwise 1 (none)."""
    if classes is not None and loaded.meta.num_classes and loaded.meta.label_dropout > 0:
        return DEFAULT_GUIDANCE
    return 1.0


def check_guidance(loaded: LoadedModel, cfg: float, classes: Tensor | None) -> None:
    if cfg == 1.0:
        return
    if loaded.meta.num_classes == 0 or classes is None:
        raise FMError("--cfg needs a class-conditional model and --class")
    if loaded.meta.label_dropout <= 0:
        raise FMError("--cfg other than 1 needs a model trained with label dropout (--label-dropout > 0); "
                      "this checkpoint was trained without it, so it has no unconditional velocity")


@torch.no_grad()
def generate(
    loaded: LoadedModel,
    *,
    num: int,
    classes: Tensor | None = None,
    solver: str = "heun",
    steps: int = 20,
    time_grid: str = "uniform",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    cfg: float = 1.0,
    seed: int = 0,
    batch_size: int = 500,
    save_at: Sequence[float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SampleResult:
    """Sample ``num`` items from t = 1 (noise) to t = 0 (data). Same inputs, same outputs."""
    if num < 1:
        raise FMError("--num must be at least 1")
    if steps < 1:
        raise FMError("--steps must be at least 1")
    check_guidance(loaded, cfg, classes)
    ode_solver = get_solver(solver)
    if needs_interval(ode_solver) and not loaded.meta.model_config.get("interval"):
        raise FMError(f"--solver {solver}: {NO_INTERVAL_INPUT} (use an ODE solver such as heun)")
    model = loaded.model
    device = next(model.parameters()).device
    shape = tuple(loaded.meta.data["shape"])
    velocity = guided_velocity(model, cfg, null_class=loaded.meta.num_classes)
    generator = torch.Generator().manual_seed(seed)
    outputs, trajectories, nfe, times = [], [], 0, None
    start = time.perf_counter()
    for first in range(0, num, batch_size):
        count = min(batch_size, num - first)
        x1 = torch.randn((count, *shape), generator=generator).to(device)
        conditioning = {} if classes is None else {"y": classes[first : first + count].to(device)}
        result = ode_solver.solve(velocity, x1, t_start=1.0, t_end=0.0, steps=steps, time_grid=time_grid,
                                  rtol=rtol, atol=atol, save_at=save_at, conditioning=conditioning)
        outputs.append(result.x.float().cpu())
        nfe = max(nfe, result.nfe)
        if result.trajectory is not None:
            trajectories.append(result.trajectory.float().cpu())
            times = result.times
        if progress:
            progress(first + count, num)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return SampleResult(
        samples=torch.cat(outputs),
        labels=classes,
        nfe=nfe,
        seconds=seconds,
        times=times,
        trajectory=torch.cat(trajectories, dim=1) if trajectories else None,
    )
