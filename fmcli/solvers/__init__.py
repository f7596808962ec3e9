"""Deprecated since 0.2: the solvers moved to ``fmcli.sampling.solvers``.

Plugins written for 0.1 import ``fmcli.solvers.fixed.FixedStepSolver`` (and ``base``, ``grids``); those
imports keep working, with a DeprecationWarning, until 0.3. New code imports ``fmcli.sampling.solvers``.
"""

import importlib
import sys
import warnings

warnings.warn(
    "fmcli.solvers moved to fmcli.sampling.solvers in fm 0.2; import it from there (this alias goes in 0.3)",
    DeprecationWarning,
    stacklevel=2,
)
for _name in ("base", "fixed", "grids"):
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"fmcli.sampling.solvers.{_name}")
from fmcli.sampling.solvers.base import Integration, Solver, SolveResult, VelocityFn  # noqa: E402,F401
from fmcli.sampling.solvers.fixed import FixedStepSolver  # noqa: E402,F401
