"""fm plugin: the ``ab2`` Adams-Bashforth solver and the ``rings`` data set.

fm loads this module through the ``fmcli`` entry point in pyproject.toml and calls the
hook implementations below, exactly as it does for its built-ins. This module stays light:
it names what it provides, and fm imports the implementations (and torch) only when they are
used, so ``fm --help`` and shell completion stay fast with the plugin installed.
"""

from fmcli import hookimpl
from fmcli.specs import DatasetSpec, LazyItem, lazy_callable

__version__ = "0.1.0"


@hookimpl
def fm_register_solvers(register):
    register(LazyItem("ab2", "fm_adams_bashforth.solver:AdamsBashforth2Solver"))


@hookimpl
def fm_register_datasets(register):
    register(
        DatasetSpec(
            name="rings",
            description="three concentric circles (2-D points, label = ring); example plugin data set",
            kind="points",
            splits=("train", "test"),
            load=lazy_callable("fm_adams_bashforth.rings:load_rings"),
        )
    )
