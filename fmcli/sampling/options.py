"""``SamplingOptions``: the one shape of "how to sample" that ``fm sample``, ``fm animate``, ``fm eval``, the
Python API and the training loop's preview grids all pass to ``generate``.

The CLI declares these options once (``fmcli.cli._common.SAMPLING_OPTIONS``); ``integration()`` turns them
into the ``Integration`` a solver takes, from t = 1 (noise) to t = 0 (data).
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from fmcli.errors import FMError
from fmcli.sampling.stored_guidance import check_label, parse_interval

if TYPE_CHECKING:  # imported where used: reading the defaults (fm info, fm serve's page) needs no torch
    from fmcli.io.header import CheckpointMeta
    from fmcli.sampling.solvers.base import Integration, Solver

DEFAULT_GUIDANCE = 2.0
# What a checkpoint samples with when no --solver / --steps is given: heun 20 for flow models, the
# few-step sampler for models trained with --objective meanflow or distilled.
FLOW_DEFAULT = ("heun", 20)
FEW_STEP_DEFAULT = ("meanflow", 4)  # 4 steps: the distilled demo model's FID matches its teacher's heun 20 there
TUNED = "tuned"  # --time-grid tuned: the grid fm tune fitted for these settings (fmcli.sampling.tuned)
# Sampling seeds lie below 2**63; fm tune's calibration noise is drawn from seeds at and above it, so a
# calibration draw can never be a sampling draw (held-out figures stay held out).
MAX_SEED = 2**63


def default_sampler(meta: "CheckpointMeta") -> tuple[str, int]:
    """(solver, steps) a checkpoint samples with by default: its own few-step sampler if it has one."""
    return FEW_STEP_DEFAULT if meta.model_config.get("interval") else FLOW_DEFAULT


def solver_name(solver: "str | Solver | None") -> str | None:
    """A solver's name for reports: the registered name, or a solver object's ``name`` (else its class name)."""
    if solver is None or isinstance(solver, str):
        return solver
    return getattr(solver, "name", "") or type(solver).__name__


def resolve_solver(solver: "str | Solver") -> Any:
    """The solver to call: the registered one for a name, or the object itself, checked to follow the contract
    (a ``solve(velocity, x, integration, conditioning)`` method; FMError otherwise)."""
    if isinstance(solver, str):
        from fmcli.sampling.solvers import get_solver

        return get_solver(solver)  # unknown names: FMError with the closest match
    from fmcli.sampling.solvers.base import check_contract

    if not callable(getattr(solver, "solve", None)):
        raise FMError(
            f"solver must be a registered name (fm plugins lists them) or a Solver object with a solve method "
            f"(got {type(solver).__name__})"
        )
    return check_contract(solver)


@dataclass(frozen=True)
class SamplingOptions:
    """How to integrate from noise to data. Validated on creation: a bad value fails before any work."""

    # A registered solver's name (fm plugins lists them), or a Solver object (e.g. a FixedStepSolver subclass
    # of the caller's own, registered nowhere); None: the checkpoint's default.
    solver: "str | Solver | None" = None
    steps: int | None = None  # steps of a fixed-step solver (NFE = steps x evaluations per step); None: default
    # Where fixed-step solvers put their steps: a grid name (fmcli.sampling.solvers.grids), "tuned" (the grid
    # fm tune fitted for exactly these settings), or the times themselves, strictly monotone from 1 to 0
    # (``steps`` is then their count - 1). None: the tuned grid when one exists for these settings, else uniform
    # (``generate`` resolves None and "tuned" against the checkpoint).
    time_grid: str | Sequence[float] | None = None
    rtol: float = 1e-5  # tolerances of adaptive solvers
    atol: float = 1e-5
    cfg: float | None = None  # guidance scale; None: the stored setting's (fm tune --guidance), else ``default_cfg``
    # Where guidance acts: (LO, HI) in fm's times (t = 1 noise), or "LO,HI"; (0, 1) everywhere. None: the stored
    # setting's, else everywhere. Outside it the unconditional (or guide's) pass is skipped.
    guidance_interval: tuple[float, float] | str | None = None
    # The guide of autoguidance: a checkpoint path (an earlier checkpoint of the run, a smaller model), or "none"
    # (the model's own unconditional velocity). None: the stored setting's, else none.
    guide: str | None = None
    guide_label: str | None = None  # the guide's velocity for the "null" class or the "same" class; None: stored/null
    seed: int = 0  # seed of the noise: same checkpoint, seed and options give the same samples
    # samples per solver call; None: as many as fit the memory this process may use and still run fast
    # (fmcli.sampling.batching). Adaptive solvers share one step size per call, so their samples depend on it.
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.solver is not None:
            resolve_solver(self.solver)  # unknown names, objects that are no solver: FMError now
        if self.steps is not None and self.steps < 1:
            raise FMError(f"--steps must be at least 1 (got {self.steps})")
        if self.time_grid is not None and not isinstance(
            self.time_grid, str
        ):  # explicit times: a tuple (hashable), and the steps they make
            times = tuple(float(t) for t in self.time_grid)
            if self.steps is not None and self.steps != len(times) - 1:
                raise FMError(f"steps={self.steps} but the time grid has {len(times) - 1} steps; give one of them")
            object.__setattr__(self, "time_grid", times)
            object.__setattr__(self, "steps", max(len(times) - 1, 1))
        self.integration()  # the grid and the tolerances are checked where the solvers read them
        if self.cfg is not None and not math.isfinite(self.cfg):
            raise FMError(f"--cfg must be a finite number (got {self.cfg})")
        object.__setattr__(self, "guidance_interval", parse_interval(self.guidance_interval))
        if self.guide is not None:
            object.__setattr__(self, "guide", str(self.guide))
            if not self.guide.strip():
                raise FMError("--guide is empty: give a checkpoint, or none")
        if self.guide_label is not None:
            check_label(self.guide_label)
        if not 0 <= self.seed < MAX_SEED:
            raise FMError(f"--seed must be in [0, 2**63) (got {self.seed})")
        if self.batch_size is not None and self.batch_size < 1:
            raise FMError(f"--batch-size must be at least 1 (got {self.batch_size})")

    @property
    def solver_name(self) -> str | None:
        return solver_name(self.solver)

    def as_dict(self) -> dict:
        """Plain values for reports: a solver object by its name, explicit grid times as a list."""
        plain = asdict(replace(self, solver=None)) | {"solver": self.solver_name}
        if self.guidance_interval is not None:
            plain["guidance_interval"] = list(self.guidance_interval)
        return plain | ({"time_grid": list(self.time_grid)} if isinstance(self.time_grid, tuple) else {})

    def integration(self, save_at=None) -> "Integration":
        """The solver's spec: from t = 1 (noise) to t = 0 (data) with these steps, grid and tolerances.

        A tuned grid needs the checkpoint: here "tuned" and None stand for uniform (``generate`` puts the
        tuned times and scales in place with ``fmcli.sampling.tuned.resolve_grid``)."""
        from fmcli.sampling.solvers.base import Integration

        return Integration(
            t_start=1.0,
            t_end=0.0,
            steps=self.steps or FLOW_DEFAULT[1],
            time_grid="uniform" if self.time_grid in (None, TUNED) else self.time_grid,
            rtol=self.rtol,
            atol=self.atol,
            save_at=None if save_at is None else tuple(save_at),
        )

    def for_model(self, meta: "CheckpointMeta") -> "SamplingOptions":
        """These options with the checkpoint's defaults filled in: solver and steps (few-step sampling for
        MeanFlow models); the guidance (``default_cfg``) is left to ``generate``."""
        solver, steps = default_sampler(meta)
        if self.solver is not None and self.solver_name != solver:
            steps = FLOW_DEFAULT[1]  # another solver than the checkpoint's own: the usual step count
        return replace(self, solver=solver if self.solver is None else self.solver, steps=self.steps or steps)
