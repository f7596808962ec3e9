"""Built-in autoencoders for latent-space models: ``builtin`` (a small convolutional one fm trains itself) and
``diffusers`` (an AutoencoderKL from a local directory). Implementations live in ``fmcli.autoencoders``, imported on
use."""

from fmcli.hookspecs import hookimpl
from fmcli.specs import AutoencoderSpec, lazy_callable


@hookimpl
def fm_register_autoencoders(register):
    register(
        AutoencoderSpec(
            name="builtin",
            description="a small residual convolutional autoencoder fm trains on your images (fm autoencoder train; "
            "factor 4, 4 latent channels by default), latents normalised by statistics stored with it",
            load=lazy_callable("fmcli.autoencoders.builtin:load"),
            build=lazy_callable("fmcli.autoencoders.builtin:build"),
        )
    )
    register(
        AutoencoderSpec(
            name="diffusers",
            description="a diffusers AutoencoderKL (e.g. Stable Diffusion's VAE) from a local directory saved with "
            "save_pretrained (never downloads); needs pip install 'fmcli[diffusers]'",
            load=lazy_callable("fmcli.autoencoders.diffusers:load"),
            requires="diffusers",
            install="pip install 'fmcli[diffusers]'",
        )
    )
