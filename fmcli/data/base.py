"""The in-memory data set every loader returns, and the spec plugins register.

Images are kept as uint8 [N, C, H, W] (MNIST's 60,000 digits are 47 MB) and normalised to
[-1, 1] on the training device, batch by batch. 2-D toy data sets are float32 [N, D].
Captions, when a data set has them, are one tuple of strings per item (``fmcli.data.captions``).
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from fmcli.errors import FMError
from fmcli.specs import DatasetSpec  # re-exported: plugins import it from here

__all__ = ["ArrayDataset", "DatasetSpec", "LoadOptions", "to_model_space", "to_uint8"]

CAPTION_MODES = ("auto", "none", "classes")


@dataclass
class LoadOptions:
    split: str = "train"  # "train" or "test" where the data has them
    data_dir: Path | None = None  # where files live (falls back to $FM_DATA_DIR)
    image_size: int | None = None  # resize + centre-crop images to this size
    channels: int | None = None  # force 1 (grayscale) or 3 (RGB)
    num_samples: int | None = None  # for procedural data sets (toys)
    seed: int = 0  # for procedural data sets
    download: bool = True  # may fetch official files when absent (never in tests)
    cache: bool = True  # image folders: decode once into a file under $FM_CACHE_DIR, then map it
    # Captions: "auto" reads them where the data has them (a folder's metadata.jsonl / metadata.csv / NAME.txt),
    # "none" ignores them, "classes" uses the class names ("golden_retriever" -> "golden retriever").
    captions: str = "auto"
    caption_column: str = "text"  # the metadata column holding the captions (Hugging Face's default)

    def __post_init__(self) -> None:
        if self.captions not in CAPTION_MODES:
            raise FMError(f"captions must be one of {', '.join(CAPTION_MODES)}, not {self.captions!r}")
        if not isinstance(self.caption_column, str) or not self.caption_column.strip():
            raise FMError("the caption column needs a name, e.g. text (the column of metadata.jsonl holding captions)")


@dataclass
class ArrayDataset:
    name: str
    split: str
    kind: str  # "image", "points" or "latent" (pictures encoded by an autoencoder: ``fmcli.data.latents``)
    data: Tensor  # uint8 [N, C, H, W] for images, float32 [N, D] for points, float16 [N, c, h, w] for latents
    labels: Tensor | None = None  # int64 [N], or None when unlabelled
    class_names: list[str] | None = None
    info: dict = field(default_factory=dict)  # e.g. skipped files, source path, content hash, caption coverage
    # Per item, its captions (one or more phrasings; training draws one); () = none: it trains the empty prompt.
    captions: list[tuple[str, ...]] | None = None
    attributes: dict[str, Tensor] | None = None  # e.g. {"shape": int64 [N], "colour": int64 [N]}: what each item shows
    attribute_names: dict[str, list[str]] | None = None  # per attribute, code -> name
    mirrored: Tensor | None = None  # latents only: row i encodes item i's mirror image (what --hflip trains on)

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])


def to_model_space(images_uint8: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1], the normalisation the seed uses."""
    return images_uint8.float().div_(127.5).sub_(1.0)


def to_uint8(images: Tensor) -> Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


def resize_images(images_uint8: Tensor, size: int) -> Tensor:
    """Square uint8 [N, C, S, S] -> [N, C, size, size], bilinear (antialiased when shrinking)."""
    if images_uint8.shape[-1] == size and images_uint8.shape[-2] == size:
        return images_uint8
    resized = torch.nn.functional.interpolate(
        images_uint8.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def set_channels(images_uint8: Tensor, channels: int | None) -> Tensor:
    """Grayscale <-> RGB: repeat one channel three times, or take ITU-R 601 luma of three."""
    if channels is None or images_uint8.shape[1] == channels:
        return images_uint8
    if channels == 3 and images_uint8.shape[1] == 1:
        return images_uint8.repeat(1, 3, 1, 1)
    if channels == 1 and images_uint8.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images_uint8.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise FMError(f"cannot convert {images_uint8.shape[1]}-channel images to {channels} channels; use 1 or 3")
