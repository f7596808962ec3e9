"""``SamplingOptions``: the one shape of "how to sample" that ``fm sample``, ``fm animate``, ``fm eval``, the
Python API and the training loop's preview grids all pass to ``generate``.

The CLI declares these options once (``fmcli.cli._common.SAMPLING_OPTIONS``); ``integration()`` turns them
into the ``Integration`` a solver takes, from t = 1 (noise) to t = 0 (data).
"""

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from fmcli.errors import FMError
from fmcli.sampling.solvers.base import Integration

if TYPE_CHECKING:
    from fmcli.io.checkpoint import CheckpointMeta

DEFAULT_GUIDANCE = 2.0
# What a checkpoint samples with when no --solver / --steps is given: heun 20 for flow models, the
# few-step sampler for models trained with --objective meanflow or distilled.
FLOW_DEFAULT = ("heun", 20)
FEW_STEP_DEFAULT = ("meanflow", 4)  # 4 steps: the distilled demo model's FID matches its teacher's heun 20 there


def default_sampler(meta: "CheckpointMeta") -> tuple[str, int]:
    """(solver, steps) a checkpoint samples with by default: its own few-step sampler if it has one."""
    return FEW_STEP_DEFAULT if meta.model_config.get("interval") else FLOW_DEFAULT


@dataclass(frozen=True)
class SamplingOptions:
    """How to integrate from noise to data. Validated on creation: a bad value fails before any work."""

    solver: str | None = None  # a registered solver (fm plugins lists them); None: the checkpoint's default
    steps: int | None = None  # steps of a fixed-step solver (NFE = steps x evaluations per step); None: default
    time_grid: str = "uniform"  # where fixed-step solvers put their steps (fmcli.sampling.solvers.grids)
    rtol: float = 1e-5  # tolerances of adaptive solvers
    atol: float = 1e-5
    cfg: float | None = None  # guidance scale; None: ``default_cfg`` (2 for --class on a model with label dropout)
    seed: int = 0  # seed of the noise: same checkpoint, seed and options give the same samples
    batch_size: int = 500  # samples per solver call

    def __post_init__(self) -> None:
        if self.solver is not None:
            from fmcli.sampling.solvers import get_solver

            get_solver(self.solver)  # unknown names: FMError with the closest match
        if self.steps is not None and self.steps < 1:
            raise FMError(f"--steps must be at least 1 (got {self.steps})")
        self.integration()  # the grid and the tolerances are checked where the solvers read them
        if self.cfg is not None and not math.isfinite(self.cfg):
            raise FMError(f"--cfg must be a finite number (got {self.cfg})")
        if self.batch_size < 1:
            raise FMError(f"--batch-size must be at least 1 (got {self.batch_size})")

    def as_dict(self) -> dict:
        return asdict(self)

    def integration(self, save_at=None) -> Integration:
        """The solver's spec: from t = 1 (noise) to t = 0 (data) with these steps, grid and tolerances."""
        return Integration(
            t_start=1.0,
            t_end=0.0,
            steps=self.steps or FLOW_DEFAULT[1],
            time_grid=self.time_grid,
            rtol=self.rtol,
            atol=self.atol,
            save_at=None if save_at is None else tuple(save_at),
        )

    def for_model(self, meta: "CheckpointMeta") -> "SamplingOptions":
        """These options with the checkpoint's defaults filled in: solver and steps (few-step sampling for
        MeanFlow models); the guidance (``default_cfg``) is left to ``generate``."""
        solver, steps = default_sampler(meta)
        if self.solver is not None and self.solver != solver:
            steps = FLOW_DEFAULT[1]  # another solver than the checkpoint's own: the usual step count
        return replace(self, solver=self.solver or solver, steps=self.steps or steps)
