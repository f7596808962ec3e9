"""``fm tune``: fit a fixed-step solver's time grid (and one velocity scale per step) to one checkpoint.

Sampling integrates dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data). A fixed-step solver with K steps on
the grid 1 = t_0 > t_1 > ... > t_K = 0 maps each noise draw x1 to a sample x0(theta), a smooth function of
its K - 1 interior times and, optionally, K velocity scales s_k (every evaluation of step k is multiplied by
s_k; for euler x_k+1 = x_k + s_k (t_k+1 - t_k) v(x_k, t_k), so the evaluation times and the step lengths are
decoupled, the one-step case of Bespoke solvers, Shaul et al. 2023). As in Align Your Steps (Sabour et al.
2024) and Bespoke solvers, theta is chosen for THIS model, guidance and solver by minimising

    L(theta) = mean over a calibration pool of || clamp(x0(theta)) - clamp(x0_ref) ||^2 / 4,

the squared error in [0, 1] image units (the 8-bit RMSE reported is sqrt(L) up to rounding) against an
accurate solve x0_ref of the same noise. The pool is a few draws per class (balanced, as fm sample --class
all), drawn from seeds >= 2**63 so they are never a sampling seed (``options.MAX_SEED``). The reference is
rk4 on a quadratic grid (dense near the data end, where the learned field changes fastest), computed once
and shared by every step count.

Parametrisation: the K step fractions are softmax(logits), so every parameter vector is a valid grid
(strictly decreasing, ends exactly 1 and 0) with no constraint; scales are exp(log_scale) > 0.
Optimiser: Adam on (logits, log_scales) with gradients through the solver (the model is differentiable in t
and x; times enter as 0-dim tensors), starting from the best of the built-in grids and a dynamic-programming grid
on the reference trajectory (``trajectory_grid``), keeping the best iterate. Measured on the demo model
(bench/tune.py --parts optimiser, K = 4): Adam and Nelder-Mead reach the same held-out error for the same number of
solves (one backward pass costs one to two forward solves); Adam is kept because its cost per iteration does not
grow with the 2K - 1 parameters, where Nelder-Mead needs 2K solves for its first simplex alone.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fmcli.errors import FMError
from fmcli.io.checkpoint import LoadedModel
from fmcli.models.embedding import NO_INTERVAL_INPUT
from fmcli.sampling.batching import sampling_batch
from fmcli.sampling.generate import WatchedVelocity
from fmcli.sampling.guidance import balanced_classes, resolve_guidance
from fmcli.sampling.options import MAX_SEED, resolve_solver
from fmcli.sampling.solvers.base import CountingVelocity
from fmcli.sampling.solvers.fixed import FixedStepSolver
from fmcli.sampling.solvers.grids import TIME_GRIDS, make_time_grid
from fmcli.sampling.stored_guidance import parse_interval
from fmcli.sampling.tuned import TunedGrid, TunedSetting
from fmcli.specs import LazyItem

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class TuneOptions:
    """What ``fm tune`` fits, validated on creation (before any work)."""

    solver: str = "euler"
    steps: tuple[int, ...] = (4, 6, 8)
    cfg: float | None = None  # None: as fm sample --class would guide (the stored setting, else default_cfg)
    guidance_interval: tuple[float, float] | str | None = None  # as SamplingOptions': None, the stored or everywhere
    guide: str | None = None  # as SamplingOptions': a checkpoint, "none", or None (the stored, else none)
    guide_label: str | None = None  # as SamplingOptions'
    conditional: bool = True  # per class (text models: per kept training caption); False: unlabelled draws, cfg 1
    pool: int = 20  # noise draws in the calibration pool (rounded up to a multiple of the class or prompt count)
    iterations: int = 8  # Adam steps per step count (8: three step counts fit in 60 s on 2 CPU cores)
    learning_rate: float = 0.05
    scales: bool = True  # fit one velocity scale per step as well as the times
    reference_steps: int = 20  # rk4 steps of the reference solve (on the quadratic grid)
    pool_seed: int = 0  # which calibration pool (its noise comes from seed MAX_SEED + pool_seed)
    batch_size: int | None = None  # draws per forward/backward pass; None: at most 50, fewer where memory needs it

    def __post_init__(self) -> None:
        if not self.steps or min(self.steps) < 2:
            raise FMError(
                f"--steps: a tuned grid needs at least 2 steps (one step has no time to move; got {list(self.steps)})"
            )
        if len(set(self.steps)) != len(self.steps):
            raise FMError(f"--steps lists a step count twice ({list(self.steps)})")
        if self.pool < 1 or self.iterations < 0 or self.reference_steps < 2 or (self.batch_size or 1) < 1:
            raise FMError(
                "--pool and --batch-size must be at least 1, --iterations at least 0, --reference-steps at least 2"
            )
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise FMError(f"--learning-rate must be positive (got {self.learning_rate})")
        if self.cfg is not None and not math.isfinite(self.cfg):
            raise FMError(f"--cfg must be a finite number (got {self.cfg})")
        object.__setattr__(self, "guidance_interval", parse_interval(self.guidance_interval))
        if not 0 <= self.pool_seed < 2**62:
            raise FMError(f"--pool-seed must be in [0, 2**62) (got {self.pool_seed})")
        tunable_solver(self.solver)


def tunable_solver(name: str) -> FixedStepSolver:
    """The registered fixed-step solver ``name`` (built in or a plugin's), or FMError: unknown names, adaptive
    solvers (grids do not apply) and solvers that are no FixedStepSolver (their steps cannot be scaled)."""
    solver = resolve_solver(name)
    solver = solver.resolve() if isinstance(solver, LazyItem) else solver
    if getattr(solver, "adaptive", False):
        raise FMError(f"--solver {name}: an adaptive solver chooses its own steps, so it has no grid to tune")
    if not isinstance(solver, FixedStepSolver):
        raise FMError(f"--solver {name}: fm tune needs a fixed-step solver (a FixedStepSolver subclass)")
    return solver


# --- the grid's parameters -----------------------------------------------------------------------------


def grid_from_logits(logits: Tensor) -> Tensor:
    """K logits -> the K + 1 times 1 = t_0 > t_1 > ... > t_K = 0, float64, differentiable.

    Step k has length softmax(logits)_k > 0 and the lengths sum to 1, so the grid is strictly decreasing for
    every logit vector; the ends are set exactly (not 1 - sum), so the solve always ends at t = 0."""
    fractions = torch.softmax(logits.to(torch.float64), dim=0)
    interior = 1.0 - torch.cumsum(fractions, dim=0)[:-1]
    ends = torch.tensor([1.0, 0.0], dtype=torch.float64)
    return torch.cat([ends[:1], interior, ends[1:]])


def logits_from_grid(times: Tensor) -> Tensor:
    """The inverse of ``grid_from_logits`` (up to softmax's constant): log step lengths, the last at 0."""
    lengths = (times[:-1] - times[1:]).to(torch.float64)
    logits = lengths.log()
    return logits - logits[-1]


# --- pool, reference, solves -------------------------------------------------------------------------


def calibration_pool(loaded: LoadedModel, size: int, conditional: bool, pool_seed: int) -> tuple[Tensor, Tensor | None]:
    """Noise x1 ~ N(0, I) [N, ...] and its conditions (None when unconditional): balanced class indices, or a text
    model's token ids of the training captions its checkpoint keeps (the previews'), each an equal share; N is
    ``size`` rounded up to a multiple of their count. The seed MAX_SEED + pool_seed is one no sampling run can use."""
    text = conditional and loaded.meta.condition == "text"
    prompts = list(loaded.meta.data.get("prompts") or []) if text else []
    if text and not prompts:
        raise FMError("this text model's checkpoint keeps no training captions to calibrate with (--unconditional)")
    kinds = len(prompts) if text else loaded.meta.num_classes if conditional else 0
    size = math.ceil(size / kinds) * kinds if kinds else size
    x1 = torch.randn((size, *loaded.meta.shape), generator=torch.Generator().manual_seed(MAX_SEED + pool_seed))
    which = balanced_classes(size, kinds) if kinds else None
    return x1, loaded.model.tokenize(prompts)[which] if text else which


def _batches(x1: Tensor, labels: Tensor | None, batch_size: int, device: torch.device):
    for first in range(0, x1.shape[0], batch_size):
        chunk = slice(first, first + batch_size)
        yield chunk, x1[chunk].to(device), ({} if labels is None else {"y": labels[chunk].to(device)})


@dataclass
class ReferenceTrajectory:
    """An accurate solve of the pool: the states at the reference grid's times and the velocities there."""

    times: list[float]  # M + 1 times, 1 -> 0 (the quadratic grid: dense near the data end)
    states: Tensor  # [M + 1, N, ...] on the CPU; states[-1] is the reference x0
    velocities: Tensor  # [M, N, ...] v(states[m], times[m]): rk4's first stage, free


@torch.no_grad()
def reference_solve(
    velocity, x1: Tensor, labels: Tensor | None, steps: int, batch_size: int, device
) -> ReferenceTrajectory:
    """Classic rk4 with ``steps`` steps on the quadratic grid, keeping every state and its velocity."""
    times = make_time_grid("quadratic", steps).tolist()
    states, velocities = [], []
    for _, x, cond in _batches(x1, labels, batch_size, device):
        f = CountingVelocity(velocity, cond)
        kept, slopes = [x.float().cpu()], []
        for t, t_next in zip(times[:-1], times[1:], strict=True):
            h = t_next - t
            k1 = f(x, t)
            k2 = f(x + 0.5 * h * k1, t + 0.5 * h)
            k3 = f(x + 0.5 * h * k2, t + 0.5 * h)
            x = x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + f(x + h * k3, t_next))
            kept.append(x.float().cpu())
            slopes.append(k1.float().cpu())
        states.append(torch.stack(kept))
        velocities.append(torch.stack(slopes))
    return ReferenceTrajectory(times, torch.cat(states, dim=1), torch.cat(velocities, dim=1))


REFINE = 4  # candidate times per reference step for the dynamic programme


def refined(reference: ReferenceTrajectory, parts: int) -> tuple[list[float], Tensor, Tensor]:
    """More candidate times: each reference step cut in ``parts``, states and velocities interpolated linearly
    in t (flow-matching paths are nearly straight; the fit that follows uses the real solver anyway)."""
    times, states, velocities = [], [], []
    for m, (t, t_next) in enumerate(zip(reference.times[:-1], reference.times[1:], strict=True)):
        v_next = reference.velocities[min(m + 1, len(reference.velocities) - 1)]
        for p in range(parts):
            w = p / parts
            times.append(t + w * (t_next - t))
            states.append(torch.lerp(reference.states[m], reference.states[m + 1], w))
            velocities.append(torch.lerp(reference.velocities[m], v_next, w))
    times.append(reference.times[-1])
    states.append(reference.states[-1])
    return times, torch.stack(states).double(), torch.stack(velocities).double()


def trajectory_grid(reference: ReferenceTrajectory, steps: int, scaled: bool = True) -> tuple[Tensor, Tensor]:
    """A K-step start for the fit, by dynamic programming on the reference trajectory (no model evaluation).

    The local error of one scaled Euler step from reference state i to reference time j is known in closed
    form: with d = (t_j - t_i) v_i and D = x_j - x_i, the best scale is s = <d, D> / <d, d> and the error
    |D - s d|. The K-step path 1 -> 0 through the reference times minimising the sum of these errors is found
    in O(K M^2); returns its times and scales (s = 1 unless ``scaled``). A start, not the answer: it ignores
    how errors propagate from step to step."""
    times, x, v = refined(reference, REFINE)
    m = len(times) - 1
    cost = torch.full((m + 1, m + 1), math.inf, dtype=torch.float64)
    best_scale = torch.ones((m + 1, m + 1), dtype=torch.float64)
    for i in range(m):
        for j in range(i + 1, m + 1):
            d, change = (times[j] - times[i]) * v[i], x[j] - x[i]
            scale = float((d * change).sum() / (d * d).sum().clamp_min(1e-30))
            scale = min(max(scale, 0.25), 4.0) if scaled else 1.0  # a guard against degenerate pools
            cost[i, j] = float((change - scale * d).pow(2).mean().sqrt())
            best_scale[i, j] = scale
    total = torch.full((steps + 1, m + 1), math.inf, dtype=torch.float64)
    came_from = torch.zeros((steps + 1, m + 1), dtype=torch.long)
    total[0, 0] = 0.0
    for k in range(1, steps + 1):
        total[k], came_from[k] = (total[k - 1].unsqueeze(1) + cost).min(dim=0)
    path = [m]
    for k in range(steps, 0, -1):
        path.append(int(came_from[k, path[-1]]))
    path.reverse()
    scales = torch.tensor([float(best_scale[a, b]) for a, b in zip(path[:-1], path[1:], strict=True)])
    return torch.tensor([times[i] for i in path], dtype=torch.float64), scales.double()


def solve_on_grid(
    solver: FixedStepSolver, velocity, x1: Tensor, conditioning: dict, times: Tensor, scales: Tensor | None
) -> Tensor:
    """``solver`` from t = 1 to 0 on exactly ``times`` with step scales, as sampling runs it
    (``FixedStepSolver.steps_on_grid``); differentiable in times and scales when they require grad."""
    grid = list(times.unbind()) if times.requires_grad else times.tolist()
    f = CountingVelocity(velocity, conditioning)
    *_, final = solver.steps_on_grid(f, x1, grid, scales)
    return final


def squared_error(x: Tensor, reference: Tensor, images: bool) -> Tensor:
    """The loss L: mean squared difference, for images of the clamped pictures in [0, 1] units (model space
    [-1, 1] halved; pixels both beyond the range cost nothing, as in the saved picture); for points as is."""
    if images:
        x, reference = x.clamp(-1, 1) * 0.5, reference.clamp(-1, 1) * 0.5
    return (x - reference).pow(2).mean()


def final_error(x: Tensor, reference: Tensor, images: bool) -> float:
    """The figure fm tune reports: RMSE of the 8-bit images in [0, 1] units (the issue's measure), or of the
    points themselves."""

    def eight_bit(pictures: Tensor) -> Tensor:
        return ((pictures.float().clamp(-1, 1) + 1) * 127.5).round() / 255.0

    if images:
        x, reference = eight_bit(x), eight_bit(reference)
    return float((x.double() - reference.double()).pow(2).mean().sqrt())


@dataclass
class Calibration:
    """The pool, its reference, and the velocity: what every step count's fit shares."""

    solver: FixedStepSolver
    velocity: Callable
    x1: Tensor
    labels: Tensor | None
    trajectory: ReferenceTrajectory
    device: torch.device
    batch_size: int
    images: bool = True  # image data: clamped, 8-bit errors; points: plain ones

    @property
    def reference(self) -> Tensor:
        return self.trajectory.states[-1]

    def final(self, times: Tensor, scales: Tensor | None) -> Tensor:
        """x0 of every pool draw on this grid (no gradient), on the CPU."""
        with torch.no_grad():
            outs = [
                solve_on_grid(self.solver, self.velocity, x, cond, times, scales).float().cpu()
                for _, x, cond in _batches(self.x1, self.labels, self.batch_size, self.device)
            ]
        return torch.cat(outs)

    def error(self, times: Tensor, scales: Tensor | None) -> float:
        """``final_error`` of the pool on this grid: 8-bit RMSE for images."""
        return final_error(self.final(times, scales), self.reference, self.images)

    def loss(self, times: Tensor, scales: Tensor | None) -> float:
        """L on the pool, without rounding: what the fit compares (8-bit rounding hides small gains)."""
        return float(squared_error(self.final(times, scales), self.reference, self.images))

    def loss_and_gradient(self, times: Tensor, scales: Tensor | None) -> float:
        """L on the pool; its gradient is accumulated into whatever ``times`` and ``scales`` depend on.

        The pool is solved in batches: each batch's graph is freed after its backward pass, the gradients with
        respect to the grid (K + 1 numbers) and scales are summed, then passed back through the parametrisation."""
        leaves = [times.detach().requires_grad_(True)] + (
            [] if scales is None else [scales.detach().requires_grad_(True)]
        )
        total, count = 0.0, self.x1.shape[0]
        for chunk, x, cond in _batches(self.x1, self.labels, self.batch_size, self.device):
            final = solve_on_grid(
                self.solver, self.velocity, x, cond, leaves[0], leaves[1] if scales is not None else None
            )
            part = squared_error(final.float(), self.reference[chunk].to(final.device), self.images)
            part = part * (x.shape[0] / count)
            part.backward()
            total += float(part.detach())
        outputs = [times] + ([] if scales is None else [scales])
        torch.autograd.backward(outputs, [leaf.grad for leaf in leaves])
        return total


@dataclass
class FitResult:
    """One step count's fit: the grid, its scales, and the calibration errors (8-bit RMSE) around it."""

    steps: int
    times: Tensor  # [K + 1] float64, 1 -> 0
    scales: Tensor | None  # [K] or None
    start: str  # where the fit started: a built-in grid, or "trajectory" (trajectory_grid)
    error_uniform: float  # calibration error of the uniform grid (what sampling uses without fm tune)
    error_start: float
    error_tuned: float
    seconds: float


def fit_grid(calibration: Calibration, steps: int, options: TuneOptions, progress: Progress | None = None) -> FitResult:
    """Fit the K = ``steps`` grid (and scales): start at the best built-in grid, then Adam through the solver."""
    start_time = time.perf_counter()
    starts = {name: (make_time_grid(name, steps), None) for name in TIME_GRIDS}
    if steps <= REFINE * (len(calibration.trajectory.times) - 1):
        times, scales = trajectory_grid(calibration.trajectory, steps, options.scales)
        starts["trajectory"] = (times, scales if options.scales else None)
    finals = {name: calibration.final(*start) for name, start in starts.items()}
    losses = {name: float(squared_error(x, calibration.reference, calibration.images)) for name, x in finals.items()}
    start = min(losses, key=losses.get)  # chosen on the unrounded loss: 8-bit rounding hides small gains
    logits = logits_from_grid(starts[start][0]).requires_grad_(True)
    initial_scales = starts[start][1]
    log_scales = (
        torch.zeros(steps, dtype=torch.float64) if initial_scales is None else initial_scales.log()
    ).requires_grad_(options.scales)
    optimiser = torch.optim.Adam([logits, log_scales] if options.scales else [logits], lr=options.learning_rate)
    best = (math.inf, logits.detach().clone(), log_scales.detach().clone())
    for iteration in range(options.iterations + 1):
        optimiser.zero_grad()
        times, scales = grid_from_logits(logits), log_scales.exp() if options.scales else None
        if iteration == options.iterations:  # the last iterate: evaluated, not stepped from
            with torch.no_grad():
                loss = calibration.loss(times, scales)
        else:
            loss = calibration.loss_and_gradient(times, scales)
        if loss < best[0]:
            best = (loss, logits.detach().clone(), log_scales.detach().clone())
        if iteration < options.iterations:
            optimiser.step()
        if progress:
            progress(f"{options.solver} {steps} steps", iteration + 1, options.iterations + 1)
    times = grid_from_logits(best[1]).detach()
    scales = best[2].exp() if options.scales else None
    if best[0] >= losses[start]:  # never worse than where it started (a fit that did not help keeps the start)
        times, scales = starts[start]
    uniform, begun = (
        final_error(finals[name], calibration.reference, calibration.images) for name in ("uniform", start)
    )
    tuned = calibration.error(times, scales)
    return FitResult(steps, times, scales, start, uniform, begun, tuned, time.perf_counter() - start_time)


@dataclass
class TuneReport:
    fits: list[FitResult]
    grids: list[TunedGrid]  # what is stored, one per step count
    setting: dict  # solver, cfg, conditional, weights, pool size, reference
    reference_seconds: float
    seconds: float


def calibrate(loaded: LoadedModel, options: TuneOptions, progress: Progress | None = None) -> tuple[Calibration, dict]:
    """The calibration pool and its reference solve (what every step count's fit shares), and the setting."""
    solver = tunable_solver(options.solver)
    interval = bool(loaded.meta.model_config.get("interval"))
    if getattr(solver, "needs_interval", False) and not interval:
        raise FMError(f"--solver {options.solver}: {NO_INTERVAL_INPUT} (use an ODE solver such as euler)")
    x1, labels = calibration_pool(
        loaded, options.pool, options.conditional and loaded.meta.conditional, options.pool_seed
    )
    guidance = resolve_guidance(loaded, options, labels)
    cfg = guidance.setting.scale
    guides = [loaded.model] + ([] if guidance.guide is None else [guidance.guide.model])
    for parameter in (p for model in guides for p in model.parameters()):  # gradients reach the grid alone
        parameter.requires_grad_(False)
    velocity = WatchedVelocity(guidance.velocity(loaded))
    # The fit keeps every evaluation of a solve for its backward pass: memory for all of them, at most 50 draws.
    passes = guidance.max_passes(labels is not None) * max(options.steps) * (solver.evals_per_step or 1)
    batch = options.batch_size or min(
        50, sampling_batch(loaded.model, loaded.meta.shape, loaded.device, passes, loaded.meta.null_condition)
    )
    if progress:
        progress("reference solve", 0, 1)
    trajectory = reference_solve(velocity, x1, labels, options.reference_steps, batch, loaded.device)
    if progress:
        progress("reference solve", 1, 1)
    images = loaded.meta.data.get("kind") == "image"  # a latent model's grid is fitted on its latents
    kind = "latents" if loaded.meta.autoencoder else "points"
    calibration = Calibration(solver, velocity, x1, labels, trajectory, loaded.device, batch, images)
    setting = {
        "solver": options.solver,
        "cfg": float(cfg),
        "guidance": guidance.key(),
        "conditional": labels is not None,
        "weights": loaded.weights,
        "pool": x1.shape[0],
        "reference": f"rk4 {options.reference_steps} steps, quadratic grid",
        "error": "RMSE of the 8-bit images in [0, 1] units" if images else f"RMSE of the {kind}",
    }
    return calibration, setting


def tune(loaded: LoadedModel, options: TuneOptions, progress: Progress | None = None) -> TuneReport:
    """The reference solve of the calibration pool, then one fit per step count (nothing is written here)."""
    started = time.perf_counter()
    calibration, setting = calibrate(loaded, options, progress)
    reference_seconds = time.perf_counter() - started
    fits, grids = [], []
    for steps in options.steps:
        fit = fit_grid(calibration, steps, options, progress)
        fits.append(fit)
        key = TunedSetting(
            options.solver, steps, setting["cfg"], setting["conditional"], loaded.weights, setting["guidance"]
        )
        notes = {
            "error_uniform": round(fit.error_uniform, 5),
            "error_tuned": round(fit.error_tuned, 5),
            "start": fit.start,
            "pool": setting["pool"],
            "reference": setting["reference"],
            "error": setting["error"],
            "optimiser": f"adam {options.iterations} iterations, lr {options.learning_rate:g}",
            "seconds": round(fit.seconds, 2),
        }
        scales = None if fit.scales is None else tuple(float(s) for s in fit.scales)
        grids.append(TunedGrid(key, tuple(float(t) for t in fit.times), scales, notes))
    return TuneReport(fits, grids, setting, reference_seconds, time.perf_counter() - started)
