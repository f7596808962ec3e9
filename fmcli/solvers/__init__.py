"""ODE solvers for sampling: integrate dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data)."""

from fmcli.solvers.base import SolveResult, Solver, VelocityFn

__all__ = ["SolveResult", "Solver", "VelocityFn"]
