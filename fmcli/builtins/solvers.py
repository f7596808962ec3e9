"""Built-in solvers: fixed-step ODE (euler, midpoint, heun, rk4), scipy's rk45, torchdiffeq's adaptive ones,
and MeanFlow's few-step sampler (for models with the interval input).

Registered by name, imported on first use (``fmcli.specs.LazyItem``): listing them costs no torch import.
"""

from fmcli.hookspecs import hookimpl
from fmcli.specs import LazyItem

FIXED_STEP = ("euler", "midpoint", "heun", "rk4")  # fmcli.sampling.solvers.fixed
TORCHDIFFEQ = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")  # fmcli.sampling.solvers.adaptive
NAMES = (*FIXED_STEP, "rk45", *TORCHDIFFEQ, "meanflow")  # for --help, which never loads plugins


@hookimpl
def fm_register_solvers(register):
    for name in FIXED_STEP:
        register(LazyItem(name, "fmcli.sampling.solvers.fixed:FIXED_STEP_SOLVERS"))
    register(LazyItem("rk45", "fmcli.sampling.solvers.scipy_rk45:ScipyRK45Solver"))
    for name in TORCHDIFFEQ:
        register(LazyItem(name, "fmcli.sampling.solvers.adaptive:TORCHDIFFEQ_SOLVERS"))
    register(LazyItem("meanflow", "fmcli.sampling.solvers.meanflow:MeanFlowSolver"))
