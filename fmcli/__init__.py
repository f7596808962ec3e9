"""fm: flow-matching generative models from the command line, and from Python.

Time convention used everywhere in this package (it is the opposite of some other
libraries): ``t = 0`` is data and ``t = 1`` is Gaussian noise.

    x_t = (1 - t) * x0 + t * x1,    x0 ~ data,  x1 ~ N(0, I)
    target velocity  u = dx_t/dt = x1 - x0
    sampling integrates dx/dt = v(x, t) from t = 1 (noise) down to t = 0 (data).

The Python API is the names in ``__all__``, and only those. Everything else, every module included, is
private by convention: it may change in any release without notice::

    import fmcli

    model = fmcli.load("runs/demo")                        # a checkpoint or a run folder -> fmcli.Model
    samples = model.sample(64, classes="all", solver="heun", steps=20, seed=0)   # the options of fm sample
    samples.images, samples.labels, samples.nfe            # uint8 [64, 28, 28, 1], int64 [64], 40
    samples.save("grid.png")                               # or .npz, as fm sample writes them
    model.animate(16, classes=7, out="seven.gif")          # the frames fm animate writes
    model.info                                             # what fm info prints
    fmcli.evaluate("runs/demo", num_samples=1000)          # the report fm eval --json prints

``solver=`` takes a registered name or a ``fmcli.Solver`` object: subclass ``fmcli.FixedStepSolver`` and
define ``step`` to try a method without writing a plugin (examples/python_api.py). The names load lazily
(PEP 562), so ``import fmcli`` (and ``fm --help``) imports no torch.

Plugins decorate their hook implementations with ``@fmcli.hookimpl`` (see ``fmcli.hookspecs``).
"""

import importlib
from typing import TYPE_CHECKING, Any

from fmcli.hookspecs import hookimpl

__version__ = "0.2.0"
__all__ = [
    "FMError",
    "FixedStepSolver",
    "Integration",
    "Model",
    "Samples",
    "SamplingOptions",
    "Solver",
    "__version__",
    "evaluate",
    "hookimpl",
    "load",
]

# public name -> the module that defines it (imported on first use)
_LAZY = {
    "FMError": "fmcli.errors",
    "FixedStepSolver": "fmcli.sampling.solvers.fixed",
    "Integration": "fmcli.sampling.solvers.base",
    "Model": "fmcli.sampling.model",
    "Samples": "fmcli.sampling.model",
    "SamplingOptions": "fmcli.sampling.options",
    "Solver": "fmcli.sampling.solvers.base",
    "evaluate": "fmcli.eval.api",
    "load": "fmcli.sampling.model",
}

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time these come from __getattr__
    from fmcli.errors import FMError
    from fmcli.eval.api import evaluate
    from fmcli.sampling.model import Model, Samples, load
    from fmcli.sampling.options import SamplingOptions
    from fmcli.sampling.solvers.base import Integration, Solver
    from fmcli.sampling.solvers.fixed import FixedStepSolver


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'fmcli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
