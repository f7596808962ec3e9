"""``fm eval``: sample quality (FID, KID, precision/recall), class accuracy, likelihood and solver sweeps.

Modules: ``metrics`` (the formulas), ``features`` (the extractor protocol), ``classifier`` /
``inception`` / ``points`` (the built-in extractors), ``reference`` (cached real-data features),
``nll`` (likelihoods by the instantaneous change of variables), ``plot`` (Pillow line plot) and
``run`` (the functions the CLI calls), ``real`` (the real-data floor), ``sweep`` (solvers x steps x guidance),
``guidance_search`` (``fm tune --guidance``: the guidance setting a checkpoint samples best with).

May import: ``fmcli.sampling``, ``fmcli.data``, ``fmcli.io``, ``fmcli.models``, ``fmcli.registry``, ``fmcli.errors``.
Never ``fmcli.training`` or the CLI.
"""
