"""Generate samples: draw x1 ~ N(0, I) and integrate dx/dt = v(x, t, y) from t = 1 (noise) to t = 0 (data).

``generate(loaded, SamplingOptions(...), num=...)`` is what every command samples with; the training loop's
``samples/step-*.png`` previews come from ``write_sample_grid``.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from fmcli.data.base import to_uint8
from fmcli.errors import FMError
from fmcli.io.checkpoint import LoadedModel
from fmcli.io.files import atomic_write_bytes
from fmcli.io.images import grid_image, png_bytes, scatter_image
from fmcli.models.embedding import NO_INTERVAL_INPUT
from fmcli.runtime import threads
from fmcli.sampling.batching import sampling_batch
from fmcli.sampling.guidance import Guidance, balanced_classes, resolve_guidance
from fmcli.sampling.options import SamplingOptions, resolve_solver
from fmcli.sampling.solvers.base import needs_interval
from fmcli.sampling.tuned import resolve_grid


@dataclass
class SampleResult:
    samples: Tensor  # float on the CPU [N, ...], model space ([-1, 1] for images; a latent model's decoded)
    labels: Tensor | None  # the condition per sample: class indices [N], prompt token ids [N, L]; None: none
    nfe: int  # model evaluations per sample (velocity calls of one solve)
    seconds: float  # wall time of sampling
    cfg: float  # the guidance scale used
    options: SamplingOptions  # what was used, defaults filled in
    times: Tensor | None = None  # [T] times of the trajectory, if save_at was given
    trajectory: Tensor | None = None  # [T, N, ...] on the CPU (a latent model's decoded, frame by frame)
    time_grid: str = "uniform"  # the grid used: "tuned" (fm tune's, for these settings), a grid name, "explicit"
    batch_size: int = 0  # samples per solver call (the --batch-size given, or the one chosen for the memory)
    passes: int = 0  # network passes per sample: nfe, plus one per guided evaluation (what was spent)
    guidance: Guidance | None = None  # the guidance used: setting, guide, source (flags, tuned, default)
    velocity: Callable[..., Tensor] | None = None  # the guided velocity the solver called (fm animate reuses it)


class WatchedVelocity:
    """The velocity a solver calls, seen from outside: after each evaluation the thread governor hears that a
    batch of samples was evaluated (``fmcli.runtime.threads.tick``), and ``report(done)`` hears how many of the
    batch's ``count`` samples are done, by how far the solve has come from t = 1 to t = 0 (the largest distance
    evaluated so far: adaptive solvers go back and forth within a step)."""

    def __init__(self, velocity: Callable[..., Tensor], count: int = 0, report: Callable[[int], object] | None = None):
        self.velocity, self.count, self.report, self.done = velocity, count, report, 0

    def __call__(self, x: Tensor, t: Tensor, *args, **kwargs) -> Tensor:
        before = getattr(self.velocity, "passes", 0)
        v = self.velocity(x, t, *args, **kwargs)
        # The work is the network passes: a guided evaluation (two) is no slowdown of a plain one.
        threads.tick(x.shape[0] * max(1, getattr(self.velocity, "passes", 0) - before), kind="evaluation")
        if self.report is None:
            return v
        done = int(self.count * min(1.0, max(0.0, 1.0 - float(t))))
        if done > self.done:
            self.done = done
            self.report(done)
        return v


@torch.inference_mode()
def generate(
    loaded: LoadedModel,
    options: SamplingOptions,
    *,
    num: int,
    condition: Tensor | None = None,
    reference: Tensor | None = None,
    save_at: Sequence[float] | None = None,
    progress: Callable[[int, int], None] | None = None,
    decode: bool = True,
) -> SampleResult:
    """Sample ``num`` items from t = 1 (noise) to t = 0 (data), each under its row of ``condition`` (class indices
    [num], prompt token ids [num, L] from ``model.tokenize``, or None: ``fmcli.models.condition``), the one way
    labels and prompts reach the model, its guidance and the solver; ``reference`` (rows like ``condition``: a
    negative prompt's) replaces the null condition that guidance steers away from. Same inputs, same outputs: the
    seed fixes each sample's noise whatever the batches: fixed-step solvers give the same samples at any thread
    count, and at any batch size up to the kernels' rounding (adaptive ones share one step size per batch).
    A latent model's samples and trajectory come decoded into pictures, unless ``decode`` is False (fm animate
    decodes its frames itself: its x0 guesses need the latents)."""
    if num < 1:
        raise FMError(f"--num must be at least 1 (got {num})")
    options = options.for_model(loaded.meta)
    guidance = resolve_guidance(loaded, options, condition)
    cfg = guidance.setting.scale
    solver = resolve_solver(options.solver)  # a registered name, or a Solver object of the caller's
    if needs_interval(solver) and not loaded.meta.model_config.get("interval"):
        raise FMError(f"--solver {options.solver_name}: {NO_INTERVAL_INPUT} (use an ODE solver such as heun)")
    device = loaded.device
    setting = guidance.grid_key(options.solver_name or "", options.steps or 0, condition is not None, loaded.weights)
    grid = resolve_grid(options.time_grid, loaded.path, setting, adaptive=bool(getattr(solver, "adaptive", False)))
    integration = options.integration(save_at).with_(time_grid=grid.time_grid, step_scales=grid.step_scales)
    guided = guidance.velocity(loaded)
    passes = guidance.max_passes(condition is not None)
    batch_size = options.batch_size or sampling_batch(
        loaded.model, loaded.meta.shape, device, passes, loaded.meta.null_condition
    )
    # All the noise at once: sample i's noise depends on the seed alone, not on how the batches are cut.
    noise = torch.randn((num, *loaded.meta.shape), generator=torch.Generator().manual_seed(options.seed))
    outputs, trajectories, nfe, spent, times = [], [], 0, 0, None
    start = time.perf_counter()
    for first in range(0, num, batch_size):
        count = min(batch_size, num - first)
        x1 = noise[first : first + count].to(device)
        conditioning = {} if condition is None else {"y": condition[first : first + count].to(device)}
        if reference is not None and cfg != 1.0:
            conditioning["y_ref"] = reference[first : first + count].to(device)
        velocity = WatchedVelocity(guided, count, lambda done, first=first: progress and progress(first + done, num))
        before = guided.passes
        result = solver.solve(velocity, x1, integration, conditioning)
        outputs.append(result.x.float().cpu())
        nfe, spent = max(nfe, result.nfe), max(spent, guided.passes - before)
        if result.trajectory is not None:
            trajectories.append(result.trajectory.float().cpu())
            times = result.times
        if progress and velocity.done < count:  # solvers whose last evaluation is before t = 0 (euler)
            progress(first + count, num)
    samples, trajectory = torch.cat(outputs), torch.cat(trajectories, dim=1) if trajectories else None
    if decode and loaded.autoencoder is not None:  # a latent model: pictures (the decoding is part of the time)
        samples = decode_latents(loaded.autoencoder, samples)
        trajectory = None if trajectory is None else torch.stack([decode_latents(loaded.autoencoder, frame)
                                                                  for frame in trajectory])  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return SampleResult(
        batch_size=batch_size,
        samples=samples,
        labels=condition,
        nfe=nfe,
        seconds=time.perf_counter() - start,
        cfg=cfg,
        options=options,
        times=times,
        trajectory=trajectory,
        time_grid=grid.label,
        passes=spent,
        guidance=guidance,
        velocity=guided,
    )


DECODE_PIXELS = 2**21  # pixels decoded per batch: 128 images at 128 px, 8 at 512 px


@torch.inference_mode()
def decode_latents(autoencoder, latents: Tensor) -> Tensor:
    """A latent model's samples [N, c, h, w] (CPU) as model-space pictures [N, C, H, W] on the CPU, decoded on the
    autoencoder's device in batches of about DECODE_PIXELS pixels."""
    device = autoencoder.shift.device
    side = latents.shape[-1] * autoencoder.factor
    batch = max(1, DECODE_PIXELS // (side * side))
    pictures = [autoencoder.decode(latents[start : start + batch].to(device)).float().cpu()
                for start in range(0, len(latents), batch)]  # fmt: skip
    return torch.cat(pictures)


# The grids the training loop writes every --sample-every steps: a quick look, not a measurement.
PREVIEW = SamplingOptions(steps=10, cfg=1.0, seed=1234)  # heun 10; a MeanFlow model's own few steps
PREVIEW_PER_CLASS = 8


def preview_count(num_classes: int, kind: str) -> int:
    """How many items a preview grid shows: 8 per class, else 64 images or 1,000 points."""
    return PREVIEW_PER_CLASS * num_classes if num_classes else (1000 if kind == "points" else 64)


def write_sample_grid(loaded: LoadedModel, path: Path):
    """A PNG of samples: 8 per class (one row each) for conditional image models, 8 for each of a text model's
    preview prompts (eight training captions), 64 images or 1,000 points otherwise. Used by training for its
    ``samples/step-*.png`` previews; returns the picture."""
    num_classes, points = loaded.meta.num_classes, loaded.meta.data["kind"] == "points"
    prompts = loaded.meta.data.get("prompts") if loaded.meta.condition == "text" else None
    num = PREVIEW_PER_CLASS * len(prompts) if prompts else preview_count(num_classes, loaded.meta.data["kind"])
    classes = balanced_classes(num, num_classes) if num_classes else None
    if prompts:
        classes = loaded.model.tokenize([p for p in prompts for _ in range(PREVIEW_PER_CLASS)])
        num_classes = len(prompts)  # one row per prompt
    preview = replace(PREVIEW, steps=None) if loaded.meta.model_config.get("interval") else PREVIEW
    result = generate(loaded, preview, num=num, condition=classes)
    if points:
        picture = scatter_image(result.samples, result.labels)
    else:
        picture = grid_image(to_uint8(result.samples), nrow=PREVIEW_PER_CLASS if num_classes else None, scale=2)
    atomic_write_bytes(path, png_bytes(picture))
    return picture
