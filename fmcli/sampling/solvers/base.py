"""The solver contract: one call, ``solver.solve(velocity, x, integration, conditioning=None)``.

A velocity function has the model's signature ``v(x, t, **conditioning)``: ``x`` is the batch [B, ...],
``t`` a 0-dim tensor (one time for the whole batch) on ``x``'s device, and ``conditioning`` (class labels
and the like) is passed through untouched. ``Integration`` says how to integrate: from ``t_start`` to
``t_end`` (sampling 1 -> 0, noise to data; likelihoods 0 -> 1), on which time grid with how many steps
(fixed-step solvers), with which tolerances (adaptive ones), and at which times to keep the state
(``save_at``, a trajectory from the same solve), and optionally one velocity scale per step (``step_scales``,
from ``fm tune``; fixed-step solvers only). The result counts the model evaluations (NFE).

``Solver`` is the base class of every built-in solver and the one to subclass in a plugin: its ``solve``
checks the integration, counts evaluations, and calls the subclass's ``run(f, x, integration)``. Fixed-step
methods subclass ``fmcli.sampling.solvers.fixed.FixedStepSolver`` instead and define only ``step``.

A solver with ``needs_interval = True`` calls ``f(x, t, r=r)``: the average velocity over [r, t] of a MeanFlow
model (``fmcli.sampling.solvers.meanflow``).
"""

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from fmcli.errors import FMError
from fmcli.sampling.solvers.grids import TIME_GRIDS, make_time_grid

VelocityFn = Callable[..., Tensor]


@dataclass(frozen=True)
class Integration:
    """How to integrate dx/dt = v(x, t): validated on creation, so a bad value fails before any work.

    ``time_grid`` is a grid name (``fmcli.sampling.solvers.grids``) or the times themselves, a strictly
    monotone sequence from t_start to t_end (a tuned grid); with explicit times ``steps`` is their count - 1.
    ``step_scales`` (s_1 .. s_K, one per step, positive): every velocity evaluation made during step k is
    multiplied by s_k (for euler, x_k+1 = x_k + s_k h_k v(x_k, t_k)); None is s_k = 1, the plain solver.
    """

    t_start: float = 1.0
    t_end: float = 0.0
    steps: int = 20  # steps of fixed-step solvers (adaptive ones choose their own)
    time_grid: str | tuple[float, ...] = "uniform"
    rtol: float = 1e-5  # tolerances of adaptive solvers
    atol: float = 1e-5
    save_at: tuple[float, ...] | None = None  # times at which to keep the state (a trajectory)
    step_scales: tuple[float, ...] | None = None  # one velocity scale per step (fm tune), fixed-step solvers only

    def __post_init__(self) -> None:
        if not (0.0 <= min(self.t_start, self.t_end) and max(self.t_start, self.t_end) <= 1.0) or (
            self.t_start == self.t_end
        ):
            raise FMError(
                f"cannot integrate from t={self.t_start} to t={self.t_end}: use two different times in [0, 1]"
            )
        if isinstance(self.time_grid, str):
            if self.time_grid not in TIME_GRIDS:
                raise FMError(f"--time-grid must be one of {', '.join(TIME_GRIDS)} (got {self.time_grid!r})")
            if self.steps < 1:
                raise FMError(f"--steps must be at least 1 (got {self.steps})")
        else:
            times = tuple(float(t) for t in self.time_grid)
            object.__setattr__(self, "time_grid", times)
            object.__setattr__(self, "steps", len(times) - 1)
            check_explicit_grid(times, self.t_start, self.t_end)
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value < 1):
                raise FMError(f"--{name} must be a tolerance between 0 and 1, exclusive (got {value:g})")
        if self.save_at is not None:
            object.__setattr__(self, "save_at", tuple(float(s) for s in self.save_at))
            low, high = min(self.t_start, self.t_end), max(self.t_start, self.t_end)
            outside = [s for s in self.save_at if not low <= s <= high]
            if outside:
                raise FMError(f"save_at times {outside} lie outside the integration interval [{low}, {high}]")
        if self.step_scales is not None:
            scales = tuple(float(s) for s in self.step_scales)
            object.__setattr__(self, "step_scales", scales)
            if len(scales) != self.steps or not all(math.isfinite(s) and s > 0 for s in scales):
                raise FMError(f"step_scales must be {self.steps} positive numbers, one per step (got {list(scales)})")

    def grid(self) -> list[float]:
        """The steps + 1 times of a fixed-step solve, t_start first and t_end last (exact)."""
        if isinstance(self.time_grid, tuple):
            return list(self.time_grid)
        return make_time_grid(self.time_grid, self.steps, self.t_start, self.t_end).tolist()

    def save_times(self) -> list[float] | None:
        """The ``save_at`` times sorted in the direction of integration."""
        return None if self.save_at is None else sorted(self.save_at, reverse=self.t_start > self.t_end)

    def with_(self, **changes: Any) -> "Integration":
        return replace(self, **changes)


def check_explicit_grid(times: Sequence[float], t_start: float, t_end: float) -> None:
    """An explicit grid must run from t_start to t_end, strictly monotone, with at least one step."""
    if len(times) < 2 or not all(math.isfinite(t) for t in times):
        raise FMError(f"a time grid needs at least two finite times (got {list(times)})")
    if abs(times[0] - t_start) > 1e-9 or abs(times[-1] - t_end) > 1e-9:
        raise FMError(f"a time grid must run from t={t_start} to t={t_end} (got {times[0]} ... {times[-1]})")
    sign = 1 if t_end > t_start else -1
    if any(sign * (b - a) <= 0 for a, b in zip(times[:-1], times[1:], strict=True)):
        raise FMError(f"a time grid must be strictly monotone from t={t_start} to t={t_end} (got {list(times)})")


@dataclass
class SolveResult:
    x: Tensor  # state at t_end
    nfe: int  # number of velocity evaluations (for the whole batch)
    times: Tensor | None = None  # [T] the times of ``trajectory`` (the requested save_at)
    trajectory: Tensor | None = None  # [T, B, ...] states at ``times`` (on the CPU)


def time_dtype(x: Tensor) -> torch.dtype:
    """The dtype of the times passed to the velocity: x's if it is float32/64, else float32.

    (A bfloat16 time cannot tell t = 0.996 from t = 1, so half-precision states get float32 times.)
    """
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def time_tensor(t: float | Tensor, like: Tensor) -> Tensor:
    """t as a 0-dim tensor on ``like``'s device, in ``time_dtype(like)``."""
    if isinstance(t, Tensor):
        return t.to(device=like.device, dtype=time_dtype(like)).reshape(())
    return torch.tensor(t, device=like.device, dtype=time_dtype(like))


class CountingVelocity:
    """``velocity(x, t, **conditioning)`` as ``f(x, t)``, counting every evaluation (the NFE).

    Times may be floats or tensors; ``f(x, t, r=r)`` passes an interval start (MeanFlow) as a time too.
    The conditioning's values reach the velocity untouched (same objects).
    """

    def __init__(self, velocity: VelocityFn, conditioning: dict[str, Any] | None):
        self.velocity = velocity
        self.conditioning = conditioning or {}
        self.nfe = 0

    def __call__(self, x: Tensor, t: float | Tensor, r: float | Tensor | None = None) -> Tensor:
        self.nfe += 1
        if r is None:
            return self.velocity(x, time_tensor(t, x), **self.conditioning)
        return self.velocity(x, time_tensor(t, x), r=time_tensor(r, x), **self.conditioning)


class Solver:
    """Base class of all solvers. Subclasses set the attributes and implement ``run``."""

    name: str = ""
    description: str = ""
    adaptive: bool = False  # True: step sizes chosen by error control (rtol/atol); grids and steps unused
    order: int | None = None  # order of accuracy (None if not meaningful)
    evals_per_step: int | None = None  # NFE per step of fixed-step solvers
    needs_interval: bool = False  # calls f(x, t, r=r): only for models with MeanFlow's interval input
    applies_step_scales: bool = False  # honours Integration.step_scales (FixedStepSolver does)

    def solve(
        self, velocity: VelocityFn, x: Tensor, integration: Integration, conditioning: dict[str, Any] | None = None
    ) -> SolveResult:
        """Integrate dx/dt = velocity(x, t, **conditioning) as ``integration`` says; the one solver call."""
        self.check(integration)
        if integration.step_scales is not None and not self.applies_step_scales:
            raise FMError(f"solver {self.name!r} cannot apply per-step scales (a tuned grid's): use a fixed-step one")
        f = CountingVelocity(velocity, conditioning)
        final, times, trajectory = self.run(f, x, integration)
        return SolveResult(x=final, nfe=f.nfe, times=times, trajectory=trajectory)

    def check(self, integration: Integration) -> None:
        """Refuse an integration this solver cannot do (FMError); the base accepts every valid one."""

    def run(
        self, f: CountingVelocity, x: Tensor, integration: Integration
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(the state at t_end, the saved times [T] or None, the states at them [T, B, ...] on the CPU or None)."""
        raise NotImplementedError


def needs_interval(solver: Any) -> bool:
    """Whether the solver passes an interval start r to the velocity (MeanFlow models only)."""
    return bool(getattr(solver, "needs_interval", False))


OLD_CONTRACT = (
    "implements fm 0.1's solve(velocity, x, *, t_start, t_end, steps, time_grid, rtol, atol, save_at, "
    "conditioning); fm 0.2 calls solve(velocity, x, integration, conditioning) with one "
    "fmcli.sampling.solvers.Integration (see CHANGELOG.md, 0.2: 'The solver contract'). Subclass "
    "fmcli.sampling.solvers.Solver or FixedStepSolver"
)


def check_contract(solver: Any) -> Any:
    """The solver itself, or a one-line FMError when it follows the old (0.1) ``solve`` signature."""
    try:
        parameters = inspect.signature(solver.solve).parameters
    except (TypeError, ValueError):  # a callable without a signature (C extension): trust it
        return solver
    if "t_start" in parameters or "integration" not in parameters and len(parameters) < 3:
        raise FMError(f"solver {solver.name!r} {OLD_CONTRACT}")
    return solver
