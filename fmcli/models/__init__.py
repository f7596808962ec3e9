"""Velocity networks v(x, t, y=None): a U-Net for images and an MLP for 2-D points.

Every model is built from a plain JSON-serialisable config dict (stored in checkpoints):
``{"name": "unet", ...keyword arguments of the class...}``.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fmcli.errors import FMError


@dataclass
class ModelSpec:
    name: str
    description: str
    build: Callable[..., Any]  # build(**config_without_name) -> torch.nn.Module with a ``config`` dict


def build_model(config: dict) -> Any:
    from fmcli.registry import get_model

    kwargs = {k: v for k, v in config.items() if k != "name"}
    spec = get_model(config.get("name", "?"))
    try:
        return spec.build(**kwargs)
    except TypeError as error:  # an option the architecture does not have
        raise FMError(f"model {spec.name!r}: {error}") from None
