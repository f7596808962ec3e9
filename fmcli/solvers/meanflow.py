"""MeanFlow's few-step sampler: jump along the flow with the average velocity, one evaluation per step.

A model trained with ``fmcli.flow.meanflow_loss`` predicts the average velocity over [r, t],

    u(x_t, r, t) = 1/(t - r) * integral_r^t v(x_s, s) ds,

so x_r = x_t - (t - r) u(x_t, r, t) is the flow map from t back to r: exact for an exact u, at any
step size. On a time grid t_0 = t_start > t_1 > ... > t_K = t_end (``fmcli.solvers.grids``):

    x_{t_{k+1}} = x_{t_k} - (t_k - t_{k+1}) u(x_{t_k}, r = t_{k+1}, t = t_k),      NFE = K.

K = 1 from t = 1 to 0 is one-step generation, x0 = x1 - u(x1, 0, 1). The velocity is called as
``velocity(x, t, r=r, **conditioning)`` with 0-dim t and r, so it must take the interval start r:
``fmcli.sampling.guided_velocity`` of a model built with ``interval=True``. Solvers that integrate
dx/dt = v (euler, heun, ...) still work with such a model: they pass no r, which means r = t, the
instantaneous velocity. States at ``save_at`` times are interpolated linearly between grid states,
as by the fixed-step solvers (exact at grid times, no extra evaluation).
"""

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from fmcli.errors import FMError
from fmcli.solvers.base import SolveResult, VelocityFn, check_interval, sorted_save_times, time_tensor
from fmcli.solvers.fixed import LinearTrajectory
from fmcli.solvers.grids import make_time_grid


class MeanFlowSolver:
    name = "meanflow"
    description = (
        "MeanFlow few-step sampler, 1 NFE/step (1 step is enough); needs a model trained for it "
        "(interval input), sampling only (1 -> 0)."
    )
    adaptive = False
    order = None
    evals_per_step = 1
    needs_interval = True  # calls velocity(x, t, r=...): only for models with the interval input

    def solve(
        self,
        velocity: VelocityFn,
        x: Tensor,
        *,
        t_start: float = 1.0,
        t_end: float = 0.0,
        steps: int = 1,
        time_grid: str = "uniform",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        save_at: Sequence[float] | None = None,
        conditioning: dict[str, Any] | None = None,
    ) -> SolveResult:
        """``steps`` jumps x <- x - (t - r) u(x, r, t) from t_start down to t_end (rtol/atol unused)."""
        check_interval(t_start, t_end)
        if t_start < t_end:
            # u(x, r, t) is learnt for r <= t only, i.e. for jumps toward the data end.
            raise FMError(
                f"the meanflow sampler runs from noise toward data (t_start > t_end), not from "
                f"t={t_start} to t={t_end}; use an ODE solver such as heun for that direction"
            )
        grid = make_time_grid(time_grid, steps, t_start, t_end).tolist()
        conditioning = conditioning or {}
        trajectory = LinearTrajectory(sorted_save_times(save_at, t_start, t_end))
        nfe = 0
        for t, r in zip(grid[:-1], grid[1:], strict=True):
            u = velocity(x, time_tensor(t, x), r=time_tensor(r, x), **conditioning)
            nfe += 1
            x_next = x - (t - r) * u
            trajectory.segment(t, x, r, x_next)
            x = x_next
        times, states = trajectory.result()
        return SolveResult(x=x, nfe=nfe, times=times, trajectory=states)
