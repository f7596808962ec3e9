"""Built-in solvers: fixed-step ODE (euler, midpoint, heun, rk4), scipy's rk45, torchdiffeq's adaptive ones,
and MeanFlow's few-step sampler (for models with the interval input).

Registered by name, imported on first use (``fmcli.specs.LazyItem``): listing them costs no torch import.
"""

from fmcli.hookspecs import hookimpl
from fmcli.specs import LazyItem

FIXED_STEP = ("euler", "midpoint", "heun", "rk4")  # fmcli.solvers.fixed
TORCHDIFFEQ = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")  # fmcli.solvers.torchdiffeq_solvers


@hookimpl
def fm_register_solvers(register):
    for name in FIXED_STEP:
        register(LazyItem(name, "fmcli.solvers.fixed:FIXED_STEP_SOLVERS"))
    register(LazyItem("rk45", "fmcli.solvers.scipy_rk45:ScipyRK45Solver"))
    for name in TORCHDIFFEQ:
        register(LazyItem(name, "fmcli.solvers.torchdiffeq_solvers:TORCHDIFFEQ_SOLVERS"))
    register(LazyItem("meanflow", "fmcli.solvers.meanflow:MeanFlowSolver"))
