"""Velocity networks v(x, t, y=None): a U-Net for images and an MLP for 2-D points.

Every model is built from a plain JSON-serialisable config dict (stored in checkpoints):
``{"name": "unet", ...keyword arguments of the class...}``.
"""

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass
class ModelSpec:
    name: str
    description: str
    build: Callable[..., nn.Module]     # build(**config_without_name) -> nn.Module


def build_model(config: dict) -> nn.Module:
    from fmcli.registry import get_model

    kwargs = {k: v for k, v in config.items() if k != "name"}
    return get_model(config["name"]).build(**kwargs)
