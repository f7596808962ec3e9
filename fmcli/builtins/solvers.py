"""Built-in ODE solvers: fixed-step (euler, midpoint, heun, rk4), scipy's rk45, torchdiffeq's adaptive ones."""

from fmcli.hookspecs import hookimpl
from fmcli.solvers.fixed import FIXED_STEP_SOLVERS
from fmcli.solvers.scipy_rk45 import ScipyRK45Solver
from fmcli.solvers.torchdiffeq_solvers import TORCHDIFFEQ_SOLVERS


@hookimpl
def fm_register_solvers(register):
    for solver in (*FIXED_STEP_SOLVERS, ScipyRK45Solver(), *TORCHDIFFEQ_SOLVERS):
        register(solver)
