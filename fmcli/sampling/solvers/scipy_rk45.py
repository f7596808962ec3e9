"""``rk45``: scipy's adaptive Dormand-Prince RK45, the way the original blog sampled.

It exists for fidelity with the blog's results. ``dopri5`` (``fmcli.sampling.solvers.adaptive``)
uses the same Butcher tableau but stays on the model's device, so prefer it for speed.

How the batch is solved: the whole batch [B, ...] is flattened into ONE state vector of length
B * D, so scipy chooses ONE step size for the whole batch, from the error norm over all samples
together (the hardest sample sets the pace; results differ slightly from solving the samples
one at a time, within the tolerances). The state lives on the scipy side in float64; at every
evaluation it is copied CPU -> model device (in the input's dtype), the velocity is evaluated
there, and the result copied back to the CPU. On a GPU those two copies (and the
synchronisation they force) cost real time at every one of the ~6 evaluations per step.

Trajectories: ``save_at`` times are passed to solve_ivp as ``t_eval``, which scipy fills from
its dense output (4th-order interpolation) without changing the steps; one solve.
"""

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from fmcli.errors import FMError
from fmcli.sampling.solvers.base import CountingVelocity, Integration, Solver


class ScipyRK45Solver(Solver):
    name = "rk45"
    description = (
        "scipy solve_ivp RK45 (Dormand-Prince 5(4)), adaptive, on the CPU in float64; "
        "one step size for the whole batch (--rtol/--atol, default 1e-5/1e-5). As in the blog; "
        "dopri5 is the same method on the model's device."
    )
    adaptive = True
    order = 5

    def run(self, f: CountingVelocity, x: Tensor, integration: Integration):
        """Integrate from t_start to t_end with error control (steps and time grid unused)."""
        t_start, t_end, save_times = integration.t_start, integration.t_end, integration.save_times()
        shape, dtype, device = x.shape, x.dtype, x.device

        def rhs(t: float, y: np.ndarray) -> np.ndarray:
            state = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
            return f(state, t).detach().to("cpu", torch.float64).numpy().ravel()

        # Output times: the requested ones, then t_end (the final state), without repeats.
        t_eval = sorted(set((save_times or []) + [t_end]), reverse=t_start > t_end)
        y0 = x.detach().to("cpu", torch.float64).numpy().ravel()
        sol = solve_ivp(
            rhs, (t_start, t_end), y0, method="RK45", t_eval=t_eval, rtol=integration.rtol, atol=integration.atol
        )
        if sol.status != 0:
            raise FMError(f"rk45 failed: {sol.message} (try dopri5, or looser --rtol/--atol)")

        def state_at(s: float) -> Tensor:
            if s == t_start:  # exactly the input, not an interpolation of it
                return x.detach()
            column = sol.y[:, t_eval.index(s)]
            return torch.from_numpy(column.copy()).reshape(shape).to(dtype)

        final = state_at(t_end).to(device)
        if save_times is None:
            return final, None, None
        trajectory = torch.stack([state_at(s).to("cpu") for s in save_times])
        return final, torch.tensor(save_times, dtype=torch.float64), trajectory
