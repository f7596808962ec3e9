"""A complete fm plugin in one file: a solver (``ralston``) and a data set (``gaussian-grid``).

Walk-through: examples/writing_a_plugin.md. To try it without installing anything::

    from fmcli.plugins import pm
    from fmcli import registry
    import my_plugin
    pm.register(my_plugin, name="my-plugin"); registry.reset()
    registry.get_solver("ralston")

To make ``fm`` load it, ship it in a package with an entry point in the ``fmcli`` group
(see plugins/fm-adams-bashforth/pyproject.toml).
"""

import numpy as np
import torch
from torch import Tensor

from fmcli.data.base import ArrayDataset, DatasetSpec, LoadOptions
from fmcli.errors import FMError
from fmcli.hookspecs import hookimpl
from fmcli.sampling.solvers.fixed import FixedStepSolver, StepFn

# --- a solver ---------------------------------------------------------------------------------


class RalstonSolver(FixedStepSolver):
    """Ralston's 2-stage method: the 2nd-order Runge-Kutta with the smallest error bound.

        k1 = f(x, t),   k2 = f(x + 2/3 h k1, t + 2/3 h),   x + h (k1/4 + 3 k2/4)

    ``FixedStepSolver`` supplies the rest: time grids, both directions, NFE counting,
    conditioning pass-through and ``save_at`` trajectories. One-step methods only define ``step``.
    """

    name = "ralston"
    description = "Ralston's RK2, 2nd order, 2 NFE/step (example plugin)"
    order = 2
    evals_per_step = 2

    def step(self, f: StepFn, x: Tensor, t: float, h: float) -> Tensor:
        k1 = f(x, t)
        k2 = f(x + (2 / 3) * h * k1, t + (2 / 3) * h)
        return x + h * (0.25 * k1 + 0.75 * k2)


# --- a data set ------------------------------------------------------------------------------

SPLITS = ("train", "test")


def load_gaussian_grid(options: LoadOptions) -> ArrayDataset:
    """Nine Gaussians (std 0.1) centred on the 3 x 3 grid {-1, 0, 1}^2; label = component."""
    if options.split not in SPLITS:
        raise FMError(f"gaussian-grid has splits {SPLITS}, not {options.split!r}")
    n = options.num_samples or 10_000
    rng = np.random.default_rng([options.seed, SPLITS.index(options.split)])  # test != train stream
    labels = rng.integers(0, 9, n)
    centres = np.stack([labels % 3 - 1, labels // 3 - 1], axis=1)
    points = centres + rng.normal(0, 0.1, (n, 2))
    return ArrayDataset(
        name="gaussian-grid",
        split=options.split,
        kind="points",
        data=torch.from_numpy(points).float(),
        labels=torch.from_numpy(labels).long(),
        class_names=[str(k) for k in range(9)],
    )


GAUSSIAN_GRID = DatasetSpec(
    name="gaussian-grid",
    description="nine Gaussians on a 3x3 grid (2-D), labelled by component",
    kind="points",
    splits=SPLITS,
    load=load_gaussian_grid,
)

# --- the hooks fm calls ------------------------------------------------------------------------


@hookimpl
def fm_register_solvers(register):
    register(RalstonSolver())


@hookimpl
def fm_register_datasets(register):
    register(GAUSSIAN_GRID)
