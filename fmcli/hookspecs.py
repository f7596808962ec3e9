"""Every hook a plugin can implement. Each one receives a ``register`` callback.

A plugin is any module or object with functions decorated by ``fmcli.hookimpl``;
installed packages expose theirs through the ``fmcli`` entry-point group::

    [project.entry-points.fmcli]
    my_solvers = "my_package.plugin"

and implement, for example::

    @fmcli.hookimpl
    def fm_register_solvers(register):
        register(MySolver())            # an object with .name and .solve(...)
"""

import pluggy

hookspec = pluggy.HookspecMarker("fmcli")
hookimpl = pluggy.HookimplMarker("fmcli")


@hookspec
def fm_register_solvers(register):
    """Register ODE solvers: ``register(solver)``, where ``solver`` follows ``fmcli.sampling.solvers.base.Solver``."""


@hookspec
def fm_register_datasets(register):
    """Register data sets: ``register(spec)``, where ``spec`` is a ``fmcli.data.base.DatasetSpec``."""


@hookspec
def fm_register_models(register):
    """Register model architectures: ``register(spec)``, a ``fmcli.models.ModelSpec``."""


@hookspec
def fm_register_loggers(register):
    """Register training loggers (``fm train --log-to NAME``): ``register(spec)``, a ``fmcli.specs.LoggerSpec``.

    ``spec.open(run_dir, config)`` returns an object with ``log(record)`` (a dict of numbers with its
    ``step``), ``log_image(step, tag, image)`` (a PIL image) and ``close()``; it is called on rank 0
    only. The built-in ``jsonl`` (metrics.jsonl, always on) and ``tensorboard`` come through this hook.
    """


@hookspec
def fm_register_feature_extractors(register):
    """Register feature extractors for ``fm eval``: ``register(spec)``, a ``fmcli.eval.features.ExtractorSpec``."""


@hookspec
def fm_register_text_encoders(register):
    """Register text encoders for caption-conditioned models: ``register(spec)``, a ``fmcli.specs.TextEncoderSpec``.

    ``spec.build(captions, **options)`` returns a new ``fmcli.text.base.TextEncoder`` (a torch module with
    ``tokenize``, ``forward(ids) -> (tokens, pooled, mask)`` and ``export()``); ``spec.restore(exported)`` rebuilds
    the one ``export()`` described. The built-in ``builtin`` (trained from scratch on the captions) and ``clip``
    (a CLIP text tower from a local directory) come through this hook.
    """


@hookspec
def fm_register_autoencoders(register):
    """Register autoencoders for latent-space models: ``register(spec)``, a ``fmcli.specs.AutoencoderSpec``.

    ``spec.load(path)`` returns a ``fmcli.autoencoders.base.Autoencoder`` (a torch module with ``encode(images)``
    -> normalised latents, ``decode(latents)``, ``export()`` and a content ``digest``); ``spec.build(**config)``,
    where given, a new untrained one ``fm autoencoder train`` can train. The built-in ``builtin`` (trained by fm)
    and ``diffusers`` (an AutoencoderKL from a local directory) come through this hook.
    """
