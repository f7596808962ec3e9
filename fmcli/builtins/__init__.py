"""Built-in plugins: fm's own solvers, data sets, models, feature extractors, loggers, text encoders and autoencoders,
registered through the same hooks as third-party plugins (one small module each; implementations are imported on
first use).

May import: ``fmcli.hookspecs`` and ``fmcli.specs`` only; everything else is named by a lazy reference.
"""

from fmcli.builtins import datasets, solvers

# What --help lists without loading any plugin (tests/test_layout.py checks it against the registry).
BUILTIN_NAMES = {"solvers": solvers.NAMES, "datasets": datasets.NAMES}
