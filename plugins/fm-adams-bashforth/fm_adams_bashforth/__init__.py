"""fm plugin: the ``ab2`` Adams-Bashforth solver and the ``rings`` data set.

fm loads this module through the ``fmcli`` entry point in pyproject.toml and calls the
hook implementations below, exactly as it does for its built-ins.
"""

from fmcli.hookspecs import hookimpl

from fm_adams_bashforth.rings import RINGS
from fm_adams_bashforth.solver import AdamsBashforth2Solver

__version__ = "0.1.0"


@hookimpl
def fm_register_solvers(register):
    register(AdamsBashforth2Solver())


@hookimpl
def fm_register_datasets(register):
    register(RINGS)
