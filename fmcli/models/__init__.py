"""Velocity networks v(x, t, y=None): a U-Net for images and an MLP for 2-D points.

Every model is built from a plain JSON-serialisable config dict (stored in checkpoints):
``{"name": "unet", ...keyword arguments of the class...}``.

    unet.py        the U-Net (time + class conditioning, optional attention, MeanFlow's interval input)
    embedding.py   the time, class and interval embeddings both networks share
    mlp.py         a residual MLP for 2-D points
    presets.py     the default config per image size and device, and a FLOP counter
    forward_ad.py  forward-mode (jvp) rules that keep MeanFlow's target cheap

May import: torch, ``fmcli.registry`` (models are looked up by name), ``fmcli.specs``, ``fmcli.errors``.
Nothing here trains or samples.
"""

from typing import Any

from fmcli.errors import FMError
from fmcli.specs import ModelSpec  # re-exported: plugins import it from here

__all__ = ["ModelSpec", "build_model"]


def build_model(config: dict) -> Any:
    from fmcli.registry import get_model

    kwargs = {k: v for k, v in config.items() if k != "name"}
    spec = get_model(config.get("name", "?"))
    try:
        return spec.build(**kwargs)
    except TypeError as error:  # an option the architecture does not have
        raise FMError(f"model {spec.name!r}: {error}") from None
