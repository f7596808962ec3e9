"""``ab2``: the two-step Adams-Bashforth method, 2nd order for 1 velocity evaluation per step.

On a grid t_0, t_1, ... (any spacing, any direction) with f_n = v(x_n, t_n), h_n = t_{n+1} - t_n
and r = h_n / h_{n-1}, the variable-step AB2 update extrapolates the last two velocities:

    x_{n+1} = x_n + h_n [ (1 + r/2) f_n - (r/2) f_{n-1} ]

It needs f_{n-1}, so the first step is a Heun step (2 evaluations, re-using f_0). Total NFE
for N steps: N + 1. Same order as heun at about half the evaluations, but less stable for
large steps (the extrapolation amplifies errors when the velocity changes quickly).
"""

from collections.abc import Iterator

from torch import Tensor

from fmcli.sampling.solvers.fixed import FixedStepSolver, StepFn


class AdamsBashforth2Solver(FixedStepSolver):
    name = "ab2"
    description = "Adams-Bashforth 2-step, 2nd order, 1 NFE/step (+1 for the Heun start-up step). Plugin example."
    order = 2
    evals_per_step = 1

    def integrate(self, f: StepFn, x: Tensor, grid: list[float]) -> Iterator[Tensor]:
        f_prev = f(x, grid[0])
        h_prev = grid[1] - grid[0]
        # Start-up: one Heun step (2nd order, so the method stays 2nd order overall).
        predictor = x + h_prev * f_prev
        x = x + 0.5 * h_prev * (f_prev + f(predictor, grid[1]))
        yield x
        for t, t_next in zip(grid[1:-1], grid[2:], strict=True):
            h = t_next - t
            ratio = h / h_prev
            f_now = f(x, t)
            x = x + h * ((1 + 0.5 * ratio) * f_now - 0.5 * ratio * f_prev)
            yield x
            f_prev, h_prev = f_now, h
