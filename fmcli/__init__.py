"""fm: flow-matching generative models from the command line.

Time convention used everywhere in this package (it is the opposite of some other
libraries): ``t = 0`` is data and ``t = 1`` is Gaussian noise.

    x_t = (1 - t) * x0 + t * x1,    x0 ~ data,  x1 ~ N(0, I)
    target velocity  u = dx_t/dt = x1 - x0
    sampling integrates dx/dt = v(x, t) from t = 1 (noise) down to t = 0 (data).

Plugins decorate their hook implementations with ``@fmcli.hookimpl`` (see ``fmcli.hookspecs``).
"""

from fmcli.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
