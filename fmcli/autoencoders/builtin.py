"""``builtin``: a small residual convolutional autoencoder that fm trains itself (``fm autoencoder train``).

Encoder: a 3x3 convolution to ``width`` channels, then per halving a stride-2 convolution and a residual block
(GroupNorm, SiLU, two 3x3 convolutions), then GroupNorm, SiLU and a 3x3 convolution to ``latent_channels``. The
decoder mirrors it with nearest-neighbour upsampling. Widths double per level up to 4 x ``width``. No residual block
runs at full resolution (only the first convolution and the decoder's last two), which keeps a 128 px picture cheap
on a CPU.

Training (``fmcli.training.autoencoder``) minimises L1 + L2 reconstruction error plus ``LATENT_PENALTY`` times the
raw latents' mean square: a light pull toward zero that keeps their scale from drifting (no sampling, so
encoding is deterministic); afterwards the per-channel mean and standard deviation of the training images' latents
are measured and stored, and ``encode`` divides them out.
"""

import math
from pathlib import Path

from torch import Tensor, nn

from fmcli.autoencoders.base import Autoencoder, content_digest, read_file
from fmcli.errors import FMError

NAME = "builtin"
FACTORS = (2, 4, 8, 16)
LATENT_PENALTY = 1e-3  # weight of mean(z_raw^2) in the training loss
# Provisional, from bench/autoencoder_choice.py at 128 px on a shared 2-core CPU (bench/measured/
# autoencoder_choice.json): for equal time, factor 4 reconstructed held-out shapes 3-8 dB better than factor 8
# (25.1 vs 17.4 dB after 6 min); width 16 is what fits a CPU at 128 px (32 costs several times more per step).
DEFAULTS = {"factor": 4, "latent_channels": 4, "width": 16}


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def widths(width: int, levels: int) -> list[int]:
    """Channels at each resolution, full size first: width, 2 width, 4 width, 4 width, ..."""
    return [width * 2 ** min(level, 2) for level in range(levels + 1)]


class BuiltinAutoencoder(Autoencoder):
    name = NAME

    def __init__(self, channels: int, image_size: int, factor: int = 4, latent_channels: int = 4, width: int = 16):
        check_config(channels, image_size, factor, latent_channels, width)
        super().__init__(latent_channels)
        self.channels, self.image_size, self.factor = channels, image_size, factor
        self.latent_channels = latent_channels
        self.config = {
            "channels": channels, "image_size": image_size, "factor": factor,
            "latent_channels": latent_channels, "width": width,
        }  # fmt: skip
        self.trained: dict = {}  # what it was trained on and for how long (the description records it)
        sizes = widths(width, int(math.log2(factor)))
        down: list[nn.Module] = [nn.Conv2d(channels, sizes[0], 3, padding=1)]
        for before, after in zip(sizes, sizes[1:], strict=False):
            down += [nn.Conv2d(before, after, 3, stride=2, padding=1), ResBlock(after)]
        down += [_norm(sizes[-1]), nn.SiLU(), nn.Conv2d(sizes[-1], latent_channels, 3, padding=1)]
        up: list[nn.Module] = [nn.Conv2d(latent_channels, sizes[-1], 3, padding=1), ResBlock(sizes[-1])]
        for before, after in zip(sizes[::-1], sizes[::-1][1:], strict=False):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(before, after, 3, padding=1)]
            up += [ResBlock(after)] if after != sizes[0] else []
        up += [_norm(sizes[0]), nn.SiLU(), nn.Conv2d(sizes[0], channels, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*down), nn.Sequential(*up)

    def encode_raw(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def decode_raw(self, latents: Tensor) -> Tensor:
        return self.decoder(latents)

    def description(self) -> dict:
        return {
            "kind": NAME,
            "config": dict(self.config),
            "channels": self.channels,
            "image_size": self.image_size,
            "factor": self.factor,
            "latent_channels": self.latent_channels,
            "shift": [round(float(v), 8) for v in self.shift],
            "scale": [round(float(v), 8) for v in self.scale],
            "trained": dict(self.trained),
        }

    def export(self) -> dict:
        description = self.description()
        return description | {"digest": content_digest(description, self.state_dict())}

    @property
    def digest(self) -> str:
        return self.export()["digest"]


def check_config(channels: int, image_size: int, factor: int, latent_channels: int, width: int) -> None:
    """One line for a configuration that cannot be built, before anything is written."""
    if factor not in FACTORS:
        raise FMError(f"--factor must be one of {', '.join(map(str, FACTORS))} (got {factor})")
    if image_size % factor:
        raise FMError(
            f"--image-size {image_size} is not a multiple of the downsampling factor {factor}; use e.g. "
            f"{max(factor, image_size // factor * factor)} or {(image_size // factor + 1) * factor}"
        )
    if channels not in (1, 3):
        raise FMError(f"the built-in autoencoder takes 1- or 3-channel images (got {channels})")
    if not 1 <= latent_channels <= 64:
        raise FMError(f"--latent-channels must be between 1 and 64 (got {latent_channels})")
    if width < 4 or width % 4:
        raise FMError(f"--width must be a positive multiple of 4 (got {width})")


def build(**config) -> BuiltinAutoencoder:
    """A new, untrained autoencoder; ``config`` as ``BuiltinAutoencoder`` takes it."""
    return BuiltinAutoencoder(**config)


def from_state(tensors: dict[str, Tensor], description: dict, path: Path | str = "autoencoder") -> BuiltinAutoencoder:
    """The autoencoder ``description`` and ``tensors`` (its state dict) describe."""
    try:
        model = BuiltinAutoencoder(**description["config"])
        model.load_state_dict(tensors)
    except (KeyError, TypeError, RuntimeError) as error:
        reason = (str(error).splitlines() or [""])[0][:160]
        raise FMError(f"{path}: its weights do not fit a built-in autoencoder ({reason})") from None
    model.trained = dict(description.get("trained") or {})
    return model.eval()


def load(path: Path | str) -> BuiltinAutoencoder:
    """A saved built-in autoencoder (one .safetensors file), checked against its digest."""
    tensors, description = read_file(Path(path))
    if description.get("kind") != NAME:
        raise FMError(f"{path} holds a {description.get('kind')!r} autoencoder, not a built-in one")
    return from_state(tensors, description, path)
