"""ODE solvers: integrate dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data), or back for likelihoods.

    base.py       the contract: ``Solver.solve(velocity, x, integration, conditioning)`` and ``Integration``
    grids.py      where fixed-step solvers put their steps (uniform, quadratic, cosine)
    fixed.py      euler, midpoint, heun, rk4 (and ``FixedStepSolver`` for plugins)
    meanflow.py   MeanFlow's few-step jumps with the average velocity
    adaptive.py   torchdiffeq's error-controlled solvers (dopri5, ...), on the model's device
    scipy_rk45.py scipy's RK45, as in the blog post fm grew from

Solvers are registered by name through the plugin hooks (``fmcli.builtins.solvers``); look one up with
``get_solver(name)``. May import: torch, torchdiffeq, scipy, ``fmcli.errors`` and ``fmcli.registry``.
``Solver``, ``FixedStepSolver``, ``Integration`` and ``SolveResult`` are imported from here on first use, so
that reading ``TIME_GRIDS`` for --help does not import torch.
"""

__all__ = ["FixedStepSolver", "Integration", "SolveResult", "Solver", "VelocityFn", "get_solver"]


def get_solver(name: str):
    """The registered solver ``name`` (FMError for unknown names, or a plugin written for fm 0.1's contract)."""
    from fmcli.registry import get_solver as lookup
    from fmcli.sampling.solvers.base import check_contract

    return check_contract(lookup(name))


def __getattr__(name: str):
    if name == "FixedStepSolver":
        from fmcli.sampling.solvers.fixed import FixedStepSolver

        return FixedStepSolver
    if name in __all__:
        from fmcli.sampling.solvers import base

        return getattr(base, name)
    raise AttributeError(f"module 'fmcli.sampling.solvers' has no attribute {name!r}")
