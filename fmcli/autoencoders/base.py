"""The interface every autoencoder follows, and the file a trained one is saved as.

An autoencoder maps model-space images [B, C, H, W] in [-1, 1] to latents [B, latent_channels, H / factor,
W / factor] and back. ``encode`` returns *normalised* latents, ``(raw - shift) * scale`` per channel, with ``shift``
and ``scale`` measured on the training data (the built-in) or given by the model's config (diffusers'
``scaling_factor``), so a flow model sees latents of about unit variance, like its noise; ``decode`` undoes it.

A saved autoencoder is ONE safetensors file: its weights, plus JSON metadata under ``fmcli-autoencoder`` (its kind,
config, channels, factor, latent channels, image size, shift, scale, what it was trained on) and its ``digest``:
the first 16 hex digits of SHA-256 over that description and every weight, so a latent checkpoint can name the
autoencoder that decodes it by content, and a damaged file is caught when it is read.
"""

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor

from fmcli.errors import FMError
from fmcli.io.files import atomic_write_bytes

FORMAT = "fmcli-autoencoder"
FORMAT_VERSION = 1
FILE = "autoencoder.safetensors"  # the file in a run folder


class Autoencoder(torch.nn.Module):
    """Images [-1, 1] <-> normalised latents. Subclasses set the attributes and implement the raw pair."""

    name: str  # its registry name: "builtin", "diffusers"
    channels: int  # image channels (1 or 3)
    factor: int  # downsampling factor: latents are H / factor x W / factor
    latent_channels: int
    image_size: int | None  # the size it takes (the built-in: the size it was trained at); None: any multiple

    def __init__(self, latent_channels: int):
        super().__init__()
        self.register_buffer("shift", torch.zeros(latent_channels))
        self.register_buffer("scale", torch.ones(latent_channels))

    def encode_raw(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def decode_raw(self, latents: Tensor) -> Tensor:
        raise NotImplementedError

    def export(self) -> dict:
        """JSON-serialisable: everything that describes this autoencoder (kind, config, statistics, digest)."""
        raise NotImplementedError

    @property
    def digest(self) -> str:
        raise NotImplementedError

    def encode(self, images: Tensor) -> Tensor:
        """Model-space images [B, C, H, W] -> latents [B, latent_channels, H / factor, W / factor], ~N(0, 1)."""
        self.check_shape(tuple(images.shape[1:]))
        return (self.encode_raw(images) - self._view(self.shift)) * self._view(self.scale)

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents -> model-space images (not clamped: callers quantise)."""
        return self.decode_raw(latents / self._view(self.scale) + self._view(self.shift))

    def reconstruct(self, images: Tensor) -> Tensor:
        return self.decode(self.encode(images))

    @staticmethod
    def _view(values: Tensor) -> Tensor:
        return values.view(1, -1, 1, 1)

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The latent shape of images of ``image_shape`` [C, H, W] (checked first)."""
        self.check_shape(image_shape)
        return (self.latent_channels, image_shape[1] // self.factor, image_shape[2] // self.factor)

    def check_shape(self, image_shape: tuple[int, ...], what: str = "the images") -> None:
        """One line when images of ``image_shape`` [C, H, W] are not what this autoencoder takes."""
        describe = f"the {self.name} autoencoder"
        if len(image_shape) != 3:
            raise FMError(f"{describe} takes images [C, H, W]; {what} have shape {list(image_shape)}")
        channels, height, width = image_shape
        if channels != self.channels:
            raise FMError(f"{describe} takes {self.channels}-channel images, but {what} are {channels}-channel")
        if self.image_size is not None and (height, width) != (self.image_size, self.image_size):
            raise FMError(
                f"{describe} was trained on {self.image_size}x{self.image_size} images, but {what} are "
                f"{height}x{width}; use --image-size {self.image_size} or train one at that size"
            )
        if height % self.factor or width % self.factor:
            raise FMError(
                f"{describe} downsamples by {self.factor}, which does not divide {what}' size {height}x{width}; "
                f"use an image size that is a multiple of {self.factor}"
            )

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, channels={self.channels}, factor={self.factor}, "
            f"latent_channels={self.latent_channels}, image_size={self.image_size}"
        )


HELD_OUT_SHARE = 0.1  # of data without a test split: kept out of training, reconstructed by `fm autoencoder eval`


def held_out_split(size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(training indices, held-out indices) of ``size`` items without a test split: a seeded tenth (at least one
    item, none of one item) held out. Training and evaluation call this alike, so they never overlap."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    held = max(1, round(size * HELD_OUT_SHARE)) if size > 1 else 0
    return order[held:].sort().values, order[:held].sort().values


@torch.no_grad()
def measure_statistics(autoencoder: Autoencoder, images_uint8: Tensor, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation of the raw latents of ``images_uint8`` (every item, every position),
    in float64 sums so many batches add up exactly enough."""
    device = autoencoder.shift.device
    total, squares, count = 0.0, 0.0, 0
    for start in range(0, images_uint8.shape[0], batch_size):
        batch = images_uint8[start : start + batch_size].to(device).float().div_(127.5).sub_(1.0)
        raw = autoencoder.encode_raw(batch).double()
        total = total + raw.sum(dim=(0, 2, 3))
        squares = squares + raw.pow(2).sum(dim=(0, 2, 3))
        count += raw.shape[0] * raw.shape[2] * raw.shape[3]
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.float().cpu(), std.float().cpu()


def set_statistics(autoencoder: Autoencoder, mean: Tensor, std: Tensor) -> None:
    """Store the latents' statistics: ``encode`` then returns (raw - mean) / std."""
    autoencoder.shift.copy_(mean.to(autoencoder.shift))
    autoencoder.scale.copy_((1.0 / std.clamp_min(1e-6)).to(autoencoder.scale))


def content_digest(description: dict, tensors: dict[str, Tensor]) -> str:
    """SHA-256 over the description (without its digest) and every tensor's name, dtype, shape and bytes."""
    described = {key: value for key, value in description.items() if key != "digest"}
    hasher = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        hasher.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return hasher.hexdigest()[:16]


def save_file(path: Path, tensors: dict[str, Tensor], description: dict) -> None:
    """Write weights and description as one safetensors file, atomically (``fmcli.io.files``)."""
    from safetensors.torch import save

    payload = save(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION), "autoencoder": json.dumps(description)},
    )
    atomic_write_bytes(Path(path), payload)


def read_description(path: Path) -> dict:
    """The JSON description of a saved autoencoder, read from the header only; one line when it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # noqa: BLE001 - safetensors raises several kinds for a damaged header
        reason = type(error).__name__
        raise FMError(f"{path} is not a readable autoencoder file ({reason}: damaged or truncated?)") from None
    if metadata.get("format") != FORMAT:
        raise FMError(f"{path} is a safetensors file but not an fm autoencoder (no '{FORMAT}' metadata)")
    if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
        raise FMError(f"{path} was written by a newer fm (autoencoder format {metadata['format_version']}); upgrade fm")
    try:
        return json.loads(metadata["autoencoder"])
    except (KeyError, ValueError):
        raise FMError(f"{path}: its autoencoder description is damaged") from None


def read_file(path: Path) -> tuple[dict[str, Tensor], dict]:
    """Weights and description of a saved autoencoder, checked against its digest (a damaged file is one line)."""
    from safetensors.torch import load_file

    description = read_description(path)
    try:
        tensors = load_file(str(path))
    except Exception as error:  # noqa: BLE001 - a truncated or corrupted body
        raise FMError(f"{path} is damaged: its weights cannot be read ({type(error).__name__})") from None
    if content_digest(description, tensors) != description.get("digest"):
        raise FMError(f"{path} is damaged: its content does not match its digest {description.get('digest')!r}")
    return tensors, description
