"""Sampling: from noise (t = 1) to data (t = 0) with any registered solver.

    options.py    ``SamplingOptions``: solver, steps, time grid, tolerances, guidance, seed, batch size
    guidance.py   guidance (classifier-free, by a guide, in an interval: the velocity the solvers call), ``--class``
    stored_guidance.py  a guidance setting as plain values, and the one ``fm tune --guidance`` stores (no torch)
    generate.py   ``generate``: samples from a loaded checkpoint; the training loop's preview grids
    animate.py    one solve recorded frame by frame: GIFs and filmstrips of noise turning into data
    solvers/      the ODE solvers and their one call, ``solve(velocity, x, integration, conditioning)``

May import: ``fmcli.io``, ``fmcli.models``, ``fmcli.flow``, ``fmcli.data`` (to_uint8, a 2-D plot's
background points), ``fmcli.registry``, ``fmcli.errors``. Never ``fmcli.training``, ``fmcli.eval`` or the CLI.
This file imports nothing, so ``fmcli.sampling.solvers.grids`` (read by --help) stays free of torch.
"""
