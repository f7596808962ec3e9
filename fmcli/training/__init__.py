"""Training: the loop and everything it is made of.

    loop.py         ``train(overrides)`` and the ``Trainer``: steps, precision, distribution, files
    objectives/     what a batch is trained towards: flow matching, MeanFlow (with its targets)
    config.py       ``TrainConfig``: every option, its help text, defaults < --config TOML < command line
    defaults.py     the default layers: the data set's, the device's, latent space's, the objective's (and why)
    setup.py        data, teacher, model and optimizer, wrappers: built and checked before the first step
    batches.py      what step k trains on, from (seed, k) alone: order, noise, times, labels, flips
    optim.py        AdamW, warm-up + cosine schedule, EMA
    budget.py       --max-time: from a wall-clock budget to a number of steps
    state.py        what a checkpoint holds to resume bit for bit
    runs.py         run folders, ``--resume latest``, last.safetensors, the folder lock
    loggers.py      metrics.jsonl and the --log-to loggers
    events.py       callbacks, results, Ctrl-C / SIGTERM
    distributed.py  torch.distributed under torchrun
    distill.py      the options that make a flow checkpoint a teacher
    latent.py       pixels or latents (--autoencoder), the run's autoencoder, the data encoded as latents
    autoencoder.py  ``fm autoencoder train``: the built-in autoencoder's run (state, resume, --max-time, lock)

May import: ``fmcli.sampling`` (preview grids, guidance for a teacher), ``fmcli.data``, ``fmcli.io``,
``fmcli.autoencoders``, ``fmcli.models``, ``fmcli.flow``, ``fmcli.registry``, ``fmcli.errors``. Never ``fmcli.eval``
or the CLI.
"""
