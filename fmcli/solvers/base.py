"""What every solver provides, built in or plugged in.

A velocity function has the model's signature ``v(x, t, **conditioning)``: ``x`` is the
batch [B, ...], ``t`` a 0-dim tensor (one time for the whole batch) on ``x``'s device,
and ``conditioning`` (class labels, guidance scale, ...) is passed through untouched.

Solvers integrate from ``t_start`` to ``t_end``; sampling uses 1 -> 0 (noise to data),
likelihoods use 0 -> 1. They count model evaluations (NFE) and can return the state at
requested times (``save_at``) from the same solve.

A solver with ``needs_interval = True`` (an optional attribute, default False; read it with
``needs_interval(solver)``) calls ``velocity(x, t, r=r, **conditioning)`` instead, for the average
velocity over [r, t] of a MeanFlow model (``fmcli.solvers.meanflow``).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from fmcli.errors import FMError

VelocityFn = Callable[..., Tensor]


@dataclass
class SolveResult:
    x: Tensor  # state at t_end
    nfe: int  # number of velocity evaluations (for the whole batch)
    times: Tensor | None = None  # [T] the times of ``trajectory`` (the requested save_at)
    trajectory: Tensor | None = None  # [T, B, ...] states at ``times`` (on the CPU when large)


class Solver(Protocol):
    name: str
    description: str
    adaptive: bool  # True: step size chosen by error control (--rtol/--atol)
    order: int | None  # order of accuracy (None if not meaningful)
    evals_per_step: int | None  # NFE per step for fixed-step solvers

    def solve(
        self,
        velocity: VelocityFn,
        x: Tensor,
        *,
        t_start: float = 1.0,
        t_end: float = 0.0,
        steps: int = 20,
        time_grid: str = "uniform",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        save_at: Sequence[float] | None = None,
        conditioning: dict[str, Any] | None = None,
    ) -> SolveResult: ...


# --- helpers shared by the built-in solvers (and handy for plugged-in ones) -------------------


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


def needs_interval(solver: Any) -> bool:
    """Whether the solver passes an interval start r to the velocity (MeanFlow models only)."""
    return bool(getattr(solver, "needs_interval", False))


class CountingVelocity:
    """``velocity(x, t, **conditioning)`` as ``f(x, t)``, counting every evaluation (the NFE).

    The conditioning dict is unpacked as keyword arguments on every call; its values reach the
    velocity untouched (same objects).
    """

    def __init__(self, velocity: VelocityFn, conditioning: dict[str, Any] | None):
        self.velocity = velocity
        self.conditioning = conditioning or {}
        self.nfe = 0

    def __call__(self, x: Tensor, t: float | Tensor) -> Tensor:
        self.nfe += 1
        return self.velocity(x, time_tensor(t, x), **self.conditioning)


def check_interval(t_start: float, t_end: float) -> None:
    if not (0.0 <= min(t_start, t_end) and max(t_start, t_end) <= 1.0) or t_start == t_end:
        raise FMError(f"cannot integrate from t={t_start} to t={t_end}: use two different times in [0, 1]")


def sorted_save_times(save_at: Sequence[float] | None, t_start: float, t_end: float) -> list[float] | None:
    """The requested ``save_at`` times as floats, sorted in the direction of integration.

    Raises FMError for a time outside [min(t_start, t_end), max(t_start, t_end)].
    """
    if save_at is None:
        return None
    times = [float(s) for s in save_at]
    low, high = min(t_start, t_end), max(t_start, t_end)
    outside = [s for s in times if not low <= s <= high]
    if outside:
        raise FMError(f"save_at times {outside} lie outside the integration interval [{low}, {high}]")
    return sorted(times, reverse=t_start > t_end)
