"""A teacher's ODE solutions, computed once: exact targets for the jumps the few-step sampler takes.

For a pool of noise draws z (with the classes they are drawn for, or a text teacher's prompts: each draw one
training caption, ``draw_prompts``), the teacher's guided flow is solved from
t = 1 to 0 and its states kept at the grid times ``POOL_TIMES`` (1, 3/4, 1/2, 1/4, 0: the times of the
sampler's default 1-, 2- and 4-step grids). The average velocity of the flow over any jump [r, t] between two
of them is then known exactly (to the solver's accuracy):

    u(x_t, r, t) = (x_t - x_r) / (t - r),

which a MeanFlow student can regress directly, with no jvp and no reliance on the identity propagating from
short intervals to long ones. The pool costs ``num x steps x evals_per_step`` teacher passes (doubled by
guidance) once, at the start of ``fm distill``; that time counts in the distillation's wall time.
"""

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fmcli.errors import FMError
from fmcli.sampling.guidance import balanced_classes
from fmcli.sampling.solvers import get_solver
from fmcli.sampling.solvers.base import Integration

POOL_TIMES = (1.0, 0.75, 0.5, 0.25, 0.0)
MAX_POOL_BYTES = 2 * 2**30  # the pool lives in memory (on the training device): refuse what cannot fit


class TeacherPool:
    """``states[i, k]``: pool draw i at ``POOL_TIMES[k]``; ``labels[i]``: its condition, a class or a prompt's token
    ids (None: unconditional)."""

    def __init__(self, states: Tensor, labels: Tensor | None):
        self.states, self.labels = states, labels

    def __len__(self) -> int:
        return self.states.shape[0]

    @classmethod
    @torch.no_grad()
    def build(cls, velocity, shape: tuple[int, ...], num: int, num_classes: int, *, solver: str, steps: int, seed: int,
              device: torch.device, batch_size: int = 250, rows: Tensor | None = None) -> "TeacherPool":  # fmt: skip
        """Solve the teacher's ``velocity(x, t, y)`` (guidance applied) for ``num`` seeded noise draws, equal per
        class, or each for its own condition ``rows`` ([num, L]: a text teacher's prompts, ``draw_prompts``).
        ``steps`` should be a multiple of 4 for a fixed-step solver on the uniform grid, so every pool time is a
        grid time (its state exact, not interpolated)."""
        check_pool_size(num, shape)
        noise = torch.randn((num, *shape), generator=torch.Generator().manual_seed(seed))
        labels = rows if rows is not None else balanced_classes(num, num_classes) if num_classes else None
        spec = Integration(t_start=1.0, t_end=0.0, steps=steps, save_at=POOL_TIMES)
        chunks = []
        for first in range(0, num, batch_size):
            z = noise[first : first + batch_size].to(device)
            conditioning = {} if labels is None else {"y": labels[first : first + batch_size].to(device)}
            solved = get_solver(solver).solve(velocity, z, spec, conditioning)
            chunks.append(solved.trajectory.transpose(0, 1))  # [n, len(POOL_TIMES), ...]
        return cls(torch.cat(chunks).to(device), None if labels is None else labels.to(device))

    def targets(self, rows: Tensor, t: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(x_t, the exact average velocity over [r, t], the labels) of pool ``rows`` at grid times t > r."""
        time = torch.tensor(POOL_TIMES, device=t.device, dtype=t.dtype)
        at_t = (time[None, :] - t[:, None]).abs().argmin(1)
        at_r = (time[None, :] - r[:, None]).abs().argmin(1)
        x_t, x_r = self.states[rows, at_t], self.states[rows, at_r]
        length = (t - r).reshape(-1, *([1] * (x_t.dim() - 1)))
        return x_t, (x_t - x_r) / length, None if self.labels is None else self.labels[rows]


def draw_prompts(captions: Sequence[tuple[str, ...]], num: int, seed: int) -> list[str]:
    """``num`` prompts drawn from the training captions (seeded, so a resumed run draws them again): an item drawn
    uniformly among those with a caption, then one of its captions, as a training step draws them."""
    captioned = [item for item in captions if item]
    if not captioned:
        raise FMError("no training item has a caption: a text teacher's pool draws its prompts from them")
    generator = torch.Generator().manual_seed(seed)
    items = torch.randint(len(captioned), (num,), generator=generator).tolist()
    picks = torch.rand(num, generator=generator).tolist()
    chosen = [captioned[i] for i in items]
    return [item[min(int(pick * len(item)), len(item) - 1)] for item, pick in zip(chosen, picks, strict=True)]


def check_pool_size(num: int, shape: tuple[int, ...]) -> None:
    needed = num * len(POOL_TIMES) * math.prod(shape) * 4
    if num < 1 or needed > MAX_POOL_BYTES:
        raise FMError(
            f"--pool {num}: a pool holds {len(POOL_TIMES)} states per draw, {needed / 2**30:.2f} GiB for this data; "
            f"give between 1 and {MAX_POOL_BYTES // (len(POOL_TIMES) * math.prod(shape) * 4):,} draws"
        )
