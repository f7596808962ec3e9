"""``fm eval``: sample quality (FID, KID, precision/recall), class accuracy, likelihood and solver sweeps.

Modules: ``metrics`` (the formulas), ``features`` (the extractor protocol), ``classifier`` /
``inception`` / ``points`` (the built-in extractors), ``reference`` (cached real-data features),
``nll`` (likelihoods by the instantaneous change of variables), ``plot`` (Pillow line plot) and
``run`` (the functions the CLI calls), ``real`` (the real-data floor), ``sweep`` (solvers x steps x guidance),
``guidance_search`` (``fm tune --guidance``: the guidance setting a checkpoint samples best with), ``prompts`` (how
well a text model's images follow their prompts) with ``scorer`` (an image-text scorer trained offline on the real
pairs) and ``clip_score`` (the CLIP score with a local CLIP; transformers only inside its functions).

``autoencoder``: ``fm autoencoder eval`` (PSNR and the FID of reconstructions).

May import: ``fmcli.sampling``, ``fmcli.data``, ``fmcli.io``, ``fmcli.autoencoders``, ``fmcli.models``, ``fmcli.text``,
``fmcli.registry``, ``fmcli.errors``.
Never ``fmcli.training`` or the CLI.
"""
