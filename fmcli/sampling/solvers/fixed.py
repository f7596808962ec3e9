"""Fixed-step Runge-Kutta solvers: euler, midpoint, heun, rk4.

Each step goes from t to t + h on the integration's time grid (a named grid from ``grids.py``, or
explicit times; h < 0 when sampling, 1 -> 0). With f(x, t) = v(x, t, **conditioning):

    euler     x + h f(x, t)                                              order 1, 1 NFE/step
    midpoint  x + h f(x + h/2 f(x, t), t + h/2)                          order 2, 2 NFE/step
    heun      p = x + h f(x, t);  x + h/2 [f(x, t) + f(p, t + h)]        order 2, 2 NFE/step
    rk4       classic 4-stage Runge-Kutta                                order 4, 4 NFE/step

The NFE reported is the number of evaluations actually made: steps * evals_per_step.

Trajectories (``save_at``): the grid is NOT changed to hit the requested times (that would
change the answer). The state at a requested time is interpolated linearly in t between
the two grid states around it: exact at grid times (and at t_start and t_end), and exact
anywhere on a straight path, which is what flow matching learns; costs no extra evaluation.
Saved states are kept on the CPU.

Per-step scales (``Integration.step_scales``, fitted by ``fm tune``): every velocity evaluation made while
computing step k is multiplied by s_k, so euler's step becomes x + s_k h f(x, t). The solvers themselves
never see the scales: ``steps_on_grid`` hands their ``step``/``integrate`` a scaled f.
"""

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from fmcli.sampling.solvers.base import CountingVelocity, Integration, Solver

StepFn = Callable[..., Tensor]  # f(x, t) -> velocity (a CountingVelocity)


class LinearTrajectory:
    """Collects states at requested times by linear interpolation between consecutive grid states."""

    def __init__(self, save_times: list[float] | None):
        self.pending = list(save_times or [])
        self.requested = list(save_times) if save_times is not None else None
        self.states: list[Tensor] = []

    def segment(self, t_a: float, x_a: Tensor, t_b: float, x_b: Tensor) -> None:
        """Record every pending time between t_a and t_b (inclusive; either order)."""
        lo, hi = min(t_a, t_b), max(t_a, t_b)
        while self.pending and lo <= self.pending[0] <= hi:
            s = self.pending.pop(0)
            if s == t_a:
                state = x_a
            elif s == t_b:
                state = x_b
            else:
                w = (s - t_a) / (t_b - t_a)
                state = torch.lerp(x_a, x_b, w)
            self.states.append(state.detach().to("cpu", copy=True))

    def result(self) -> tuple[Tensor | None, Tensor | None]:
        if self.requested is None:
            return None, None
        times = torch.tensor(self.requested, dtype=torch.float64)
        return times, torch.stack(self.states) if self.states else None


class StepScaledVelocity:
    """f(x, t, ...) with every evaluation multiplied by the scale of the current step (``step``, set by the
    caller between steps); with no scales, f itself. Scales may be floats or 0-dim tensors (fm tune's fit)."""

    def __init__(self, f: StepFn, scales):
        self.f, self.scales, self.step = f, scales, 0

    def __call__(self, x: Tensor, t, **kwargs) -> Tensor:
        v = self.f(x, t, **kwargs)
        return v if self.scales is None else v * self.scales[self.step]


class FixedStepSolver(Solver):
    """Base class: integrate on a time grid, one ``step`` per grid interval.

    Subclasses define ``step`` (one-step methods) or override ``integrate`` (multistep methods,
    like the Adams-Bashforth plugin) and set name, description, order, evals_per_step.
    """

    applies_step_scales = True

    def step(self, f: StepFn, x: Tensor, t: float, h: float) -> Tensor:
        raise NotImplementedError

    def integrate(self, f: StepFn, x: Tensor, grid: list[float]) -> Iterator[Tensor]:
        """Yield the state at grid[1], grid[2], ..., grid[-1]."""
        for t, t_next in zip(grid[:-1], grid[1:], strict=True):
            x = self.step(f, x, t, t_next - t)
            yield x

    def steps_on_grid(self, f: StepFn, x: Tensor, grid: list, scales=None) -> Iterator[Tensor]:
        """``integrate`` with step k's velocity evaluations scaled by scales[k] (None: unscaled).

        A generator runs step k's evaluations between its (k-1)-th and k-th yield, so the scale is switched
        right after each yield. Times and scales may be tensors: fm tune differentiates through this.
        """
        scaled = StepScaledVelocity(f, scales)
        for k, state in enumerate(self.integrate(scaled, x, grid)):
            yield state
            scaled.step = k + 1

    def run(self, f: CountingVelocity, x: Tensor, integration: Integration):
        """``integration.steps`` steps on its time grid (rtol/atol unused); save_at states interpolated."""
        grid = integration.grid()
        trajectory = LinearTrajectory(integration.save_times())
        t_prev, x_prev = grid[0], x
        states = self.steps_on_grid(f, x, grid, integration.step_scales)
        for t_next, x_next in zip(grid[1:], states, strict=True):
            trajectory.segment(t_prev, x_prev, t_next, x_next)
            t_prev, x_prev = t_next, x_next
        return (x_prev, *trajectory.result())


class EulerSolver(FixedStepSolver):
    name = "euler"
    description = "Euler, 1st order, 1 NFE/step. Cheapest; fine for straight (reflowed) flows."
    order = 1
    evals_per_step = 1

    def step(self, f: StepFn, x: Tensor, t: float, h: float) -> Tensor:
        return x + h * f(x, t)


class MidpointSolver(FixedStepSolver):
    name = "midpoint"
    description = "Explicit midpoint, 2nd order, 2 NFE/step."
    order = 2
    evals_per_step = 2

    def step(self, f: StepFn, x: Tensor, t: float, h: float) -> Tensor:
        k1 = f(x, t)
        return x + h * f(x + 0.5 * h * k1, t + 0.5 * h)


class HeunSolver(FixedStepSolver):
    name = "heun"
    description = "Heun (trapezoid predictor-corrector), 2nd order, 2 NFE/step. A good default."
    order = 2
    evals_per_step = 2

    def step(self, f: StepFn, x: Tensor, t: float, h: float) -> Tensor:
        k1 = f(x, t)
        predictor = x + h * k1
        k2 = f(predictor, t + h)
        return x + 0.5 * h * (k1 + k2)


class RK4Solver(FixedStepSolver):
    name = "rk4"
    description = "Classic Runge-Kutta, 4th order, 4 NFE/step. Most accurate per step."
    order = 4
    evals_per_step = 4

    def step(self, f: StepFn, x: Tensor, t: float, h: float) -> Tensor:
        k1 = f(x, t)
        k2 = f(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = f(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = f(x + h * k3, t + h)
        return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


FIXED_STEP_SOLVERS: tuple[FixedStepSolver, ...] = (EulerSolver(), MidpointSolver(), HeunSolver(), RK4Solver())
