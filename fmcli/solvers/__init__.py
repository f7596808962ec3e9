"""ODE solvers for sampling: integrate dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data).

``SolveResult``, ``Solver`` and ``VelocityFn`` come from ``fmcli.solvers.base``, imported on first
use so that importing ``fmcli.solvers.grids`` (for --help) does not import torch.
"""

__all__ = ["SolveResult", "Solver", "VelocityFn"]


def __getattr__(name: str):
    if name in __all__:
        from fmcli.solvers import base

        return getattr(base, name)
    raise AttributeError(f"module 'fmcli.solvers' has no attribute {name!r}")
