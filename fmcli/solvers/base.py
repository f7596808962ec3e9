"""What every solver provides, built in or plugged in.

A velocity function has the model's signature ``v(x, t, **conditioning)``: ``x`` is the
batch [B, ...], ``t`` a 0-dim tensor (one time for the whole batch) on ``x``'s device,
and ``conditioning`` (class labels, guidance scale, ...) is passed through untouched.

Solvers integrate from ``t_start`` to ``t_end``; sampling uses 1 -> 0 (noise to data),
likelihoods use 0 -> 1. They count model evaluations (NFE) and can return the state at
requested times (``save_at``) from the same solve.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

VelocityFn = Callable[..., Tensor]


@dataclass
class SolveResult:
    x: Tensor                      # state at t_end
    nfe: int                       # number of velocity evaluations (for the whole batch)
    times: Tensor | None = None    # [T] the times of ``trajectory`` (the requested save_at)
    trajectory: Tensor | None = None  # [T, B, ...] states at ``times`` (on the CPU when large)


class Solver(Protocol):
    name: str
    description: str
    adaptive: bool            # True: step size chosen by error control (--rtol/--atol)
    order: int | None         # order of accuracy (None if not meaningful)
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
    ) -> SolveResult:
        ...
