"""MeanFlow's few-step sampler: jump along the flow with the average velocity, one evaluation per step.

A model trained with ``fmcli.training.objectives.MeanFlow`` predicts the average velocity over [r, t],

    u(x_t, r, t) = 1/(t - r) * integral_r^t v(x_s, s) ds,

so x_r = x_t - (t - r) u(x_t, r, t) is the flow map from t back to r: exact for an exact u, at any
step size. On a time grid t_0 = t_start > t_1 > ... > t_K = t_end:

    x_{t_{k+1}} = x_{t_k} - (t_k - t_{k+1}) u(x_{t_k}, r = t_{k+1}, t = t_k),      NFE = K.

K = 1 from t = 1 to 0 is one-step generation, x0 = x1 - u(x1, 0, 1). It is a fixed-step method whose step
asks the model for the average velocity over the step (``f(x, t, r=...)``), so the velocity must take the
interval start r: ``fmcli.sampling.guidance.guided_velocity`` of a model built with ``interval=True``.
Solvers that integrate dx/dt = v (euler, heun, ...) still work with such a model: they pass no r, which
means r = t, the instantaneous velocity.
"""

from collections.abc import Iterator

from torch import Tensor

from fmcli.errors import FMError
from fmcli.sampling.solvers.base import Integration
from fmcli.sampling.solvers.fixed import FixedStepSolver, StepFn


class MeanFlowSolver(FixedStepSolver):
    name = "meanflow"
    description = (
        "MeanFlow few-step sampler, 1 NFE/step (1 step is enough); needs a model trained for it "
        "(interval input), sampling only (1 -> 0)."
    )
    evals_per_step = 1
    needs_interval = True  # calls f(x, t, r=...): only for models with the interval input

    def check(self, integration: Integration) -> None:
        if integration.t_start < integration.t_end:
            # u(x, r, t) is learnt for r <= t only, i.e. for jumps toward the data end.
            raise FMError(
                f"the meanflow sampler runs from noise toward data (t_start > t_end), not from "
                f"t={integration.t_start} to t={integration.t_end}; use an ODE solver such as heun for that direction"
            )

    def integrate(self, f: StepFn, x: Tensor, grid: list[float]) -> Iterator[Tensor]:
        """x_r = x_t - (t - r) u(x_t, r, t) for each (t, r) of the grid (r the exact grid time, not t + h)."""
        for t, r in zip(grid[:-1], grid[1:], strict=True):
            x = x - (t - r) * f(x, t, r=r)
            yield x
