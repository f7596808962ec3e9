"""How far an interval (MeanFlow) model's jumps land from the flow they stand for.

A MeanFlow model's one step from t = 1 (noise) to r is x_r = z - (1 - r) u(z, r, 1). Its reference is an
accurate solve of the flow it learnt: the teacher's guided velocity for a distilled student, or the model's
own instantaneous velocity u(x, t, t) = v(x, t) for one trained from scratch. The baseline is what an
untrained interval branch gives, a single Euler step of that velocity: z - (1 - r) v(z, 1). A jump error that
stays at the Euler baseline for long intervals says those intervals are not trained yet.

    reference = jump_reference(velocity, noise, labels)     # once: dopri5 from 1 to 0, states at JUMP_TIMES
    jump_errors(average_velocity, reference)                # every few hundred steps, 5 + 2 + 4 evaluations

Errors are root-mean-square differences in [0, 1] image units (model space / 2), averaged over the pool;
the default few-step grids (2 and 4 uniform jumps, 1 -> 0) are scored on their final state.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fmcli.sampling.solvers import get_solver
from fmcli.sampling.solvers.base import Integration

JUMP_TIMES = (0.9, 0.75, 0.5, 0.25, 0.0)  # where the one-step jumps from t = 1 land
GRID_STEPS = (2, 4)  # the few-step sampler's other default grids, scored end to end


@dataclass
class JumpReference:
    noise: Tensor  # [N, ...] the states at t = 1
    labels: Tensor | None  # [N] the classes they are drawn for (None: unconditional)
    states: dict[float, Tensor]  # r -> the accurate state at r (dopri5 of the reference velocity from t = 1)
    euler: dict[float, Tensor]  # r -> one Euler step of the reference velocity from 1 to r (the untrained baseline)
    nfe: int  # evaluations the reference solve took


def rmse(a: Tensor, b: Tensor) -> float:
    """Root-mean-square difference in [0, 1] image units (model space spans [-1, 1])."""
    return float((a.double() - b.double()).pow(2).mean().sqrt() / 2)


@torch.no_grad()
def jump_reference(
    velocity: Callable[..., Tensor], noise: Tensor, labels: Tensor | None = None, *, rtol: float = 1e-5
) -> JumpReference:
    """The reference flow's states at ``JUMP_TIMES`` from ``noise`` (one dopri5 solve) and its Euler baseline.

    ``velocity(x, t, y)`` is the flow's velocity with its guidance already applied (``guided_velocity``).
    """
    conditioning = {} if labels is None else {"y": labels}
    spec = Integration(t_start=1.0, t_end=0.0, rtol=rtol, atol=rtol, save_at=JUMP_TIMES)
    solved = get_solver("dopri5").solve(velocity, noise, spec, conditioning)
    states = {float(t): state for t, state in zip(solved.times.tolist(), solved.trajectory, strict=True)}
    v1 = velocity(noise, torch.tensor(1.0, dtype=noise.dtype, device=noise.device), labels)
    euler = {r: (noise - (1.0 - r) * v1).cpu() for r in JUMP_TIMES}
    return JumpReference(noise=noise, labels=labels, states=states, euler=euler, nfe=solved.nfe)


@torch.no_grad()
def jump_errors(average_velocity: Callable[..., Tensor], reference: JumpReference) -> dict[str, float]:
    """``jump_R`` (the model's one jump from 1 to R), ``euler_R`` (the baseline) and ``grid_K`` (K uniform jumps to 0),
    as RMSE against the reference; ``average_velocity(x, t, y, r=...)`` is the model's guided u."""
    z, labels = reference.noise, reference.labels
    one = torch.tensor(1.0, dtype=z.dtype, device=z.device)
    errors = {}
    for r in JUMP_TIMES:
        jumped = z - (1.0 - r) * average_velocity(z, one, labels, r=torch.tensor(r, dtype=z.dtype, device=z.device))
        errors[f"jump_{r:g}"] = rmse(jumped.cpu(), reference.states[r])
        errors[f"euler_{r:g}"] = rmse(reference.euler[r], reference.states[r])
    meanflow = get_solver("meanflow")
    conditioning = {} if labels is None else {"y": labels}
    for steps in GRID_STEPS:
        final = meanflow.solve(average_velocity, z, Integration(steps=steps), conditioning).x
        errors[f"grid_{steps}"] = rmse(final.cpu(), reference.states[0.0])
    return errors
