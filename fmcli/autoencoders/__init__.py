"""Autoencoders: pictures in, small latent grids out, so a flow model can work at the sizes people hold.

    base.py      the ``Autoencoder`` interface (encode -> normalised latents, decode, export, digest), the file
                 format of a saved autoencoder (one safetensors file: weights and JSON metadata) and its checks
    builtin.py   ``builtin``: a small residual convolutional autoencoder fm trains itself (``fm autoencoder train``)
    diffusers.py ``diffusers``: an ``AutoencoderKL`` (Stable Diffusion's VAE) from a local directory, offline
    load.py      from what the user typed (a run folder, a file, a diffusers directory) to a loaded autoencoder

Autoencoders are plugins (``fm_register_autoencoders``); ``fmcli.registry.get_autoencoder(name)`` gives the spec.
Images are model-space [-1, 1]; ``encode`` returns latents already shifted and scaled by the stored per-channel
statistics, so they are about N(0, 1) per channel, the scale a flow model's noise has.

May import: torch, safetensors, ``fmcli.errors``, ``fmcli.specs``, ``fmcli.hookspecs``, ``fmcli.registry``,
``fmcli.device``, ``fmcli.runtime``, ``fmcli.io`` (atomic writes); diffusers only inside diffusers.py's functions.
Training (``fmcli.training``), evaluation (``fmcli.eval``) and, later, the latent data cache import this room, never
the reverse.
"""

from fmcli.autoencoders.base import Autoencoder

__all__ = ["Autoencoder"]
