"""Built-in solvers: fixed-step ODE (euler, midpoint, heun, rk4), scipy's rk45, torchdiffeq's adaptive ones,
and MeanFlow's few-step sampler (for models with the interval input)."""

from fmcli.hookspecs import hookimpl
from fmcli.solvers.fixed import FIXED_STEP_SOLVERS
from fmcli.solvers.meanflow import MeanFlowSolver
from fmcli.solvers.scipy_rk45 import ScipyRK45Solver
from fmcli.solvers.torchdiffeq_solvers import TORCHDIFFEQ_SOLVERS


@hookimpl
def fm_register_solvers(register):
    for solver in (*FIXED_STEP_SOLVERS, ScipyRK45Solver(), *TORCHDIFFEQ_SOLVERS, MeanFlowSolver()):
        register(solver)
