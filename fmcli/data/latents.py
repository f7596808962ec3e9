"""A data set of pictures as latents: encoded once by an autoencoder, kept in a file, mapped on every later load.

``encode_dataset(images, autoencoder)`` gives an ``ArrayDataset`` of kind ``"latent"``: float16 [N, c, h, w]
normalised latents (about N(0, 1) per channel, ``fmcli.autoencoders``), the same labels, captions and attributes,
and with ``mirrored=True`` the latents of the mirror images too (``.mirrored``, row i the mirror of item i):
a latent is not flipped by flipping it, so ``--hflip`` trains on the encoded mirror instead.

The file: ``$FM_CACHE_DIR/latents/<key>.npy`` (and ``<key>-mirror.npy``), a NumPy array written row block by row
block through a memory map (RAM stays bounded at any N), renamed into place when complete, mapped read-only on
later loads. Key: the data's content hash (``fmcli.data.resolve.content_hash``: a folder's cache key), its split,
size and item shape, the autoencoder's digest. A file of the wrong shape or dtype is rebuilt, never used; a cache
folder that cannot be written keeps the latents in memory with ``info["cache_warning"]``.
"""

import hashlib
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fmcli.data.base import ArrayDataset, to_model_space
from fmcli.data.cache import tensor_of_map
from fmcli.data.resolve import content_hash
from fmcli.io.files import default_cache_dir

PIXELS_PER_BATCH = 2**22  # images encoded per batch: 256 at 128 px, 16 at 512 px
Progress = Callable[[int, int], None]  # (images encoded, images to encode)


def latent_cache_dir() -> Path:
    return default_cache_dir() / "latents"


def latent_key(data: ArrayDataset, digest: str) -> str:
    text = f"{content_hash(data)}\0{data.split}\0{len(data)}\0{list(data.shape)}\0{digest}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@torch.no_grad()
def encode_rows(autoencoder, images_uint8: Tensor, out, *, mirror: bool = False, progress: Progress | None = None,
                done: int = 0, total: int = 0) -> None:  # fmt: skip
    """Encode uint8 images batch by batch into ``out`` (an array or tensor of N rows, float16)."""
    device = autoencoder.shift.device
    count, (_, height, width) = len(images_uint8), images_uint8.shape[1:]
    batch = max(1, PIXELS_PER_BATCH // (height * width))
    for start in range(0, count, batch):
        images = to_model_space(images_uint8[start : start + batch].to(device))
        latents = autoencoder.encode(images.flip(-1) if mirror else images).to(torch.float16).cpu()
        out[start : start + len(latents)] = latents.numpy() if isinstance(out, np.ndarray) else latents
        if progress:
            progress(done + start + len(latents), total)


def _mapped(path: Path, shape: tuple[int, ...]) -> Tensor | None:
    """The latents at ``path`` mapped read-only, or None when absent or not of ``shape`` float16 (then rebuilt)."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if array.shape != shape or array.dtype != np.float16:
        return None
    return tensor_of_map(array)


def _encode_to_file(path: Path, autoencoder, images: Tensor, shape: tuple[int, ...], mirror: bool,
                    progress: Progress | None, done: int, total: int) -> Tensor:  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape)
        encode_rows(autoencoder, images, out, mirror=mirror, progress=progress, done=done, total=total)
        out.flush()
        del out
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    mapped = _mapped(path, shape)
    assert mapped is not None, f"{path} was just written"
    return mapped


def encode_dataset(data: ArrayDataset, autoencoder, *, mirrored: bool = False, cache: bool = True,
                   progress: Progress | None = None) -> ArrayDataset:  # fmt: skip
    """``data`` (uint8 images) as normalised latents (kind "latent"), from the cache when it holds them."""
    latent_shape = (len(data), *autoencoder.latent_shape(tuple(data.shape)))
    key = latent_key(data, autoencoder.digest)
    files = [latent_cache_dir() / f"{key}.npy"] + ([latent_cache_dir() / f"{key}-mirror.npy"] if mirrored else [])
    total, arrays, info = len(data) * len(files), [], {"cache_hit": True}
    for index, path in enumerate(files):
        found = _mapped(path, latent_shape) if cache else None
        if found is None:
            info["cache_hit"] = False
            found = _encode(path, autoencoder, data.data, latent_shape, bool(index), progress, index * len(data),
                            total, cache, info)  # fmt: skip
        arrays.append(found)
    extra = {"image_shape": list(data.shape), "latent_cache": str(files[0]) if cache else None}
    return replace(data, kind="latent", data=arrays[0], mirrored=arrays[1] if mirrored else None,
                   info=data.info | extra | info)  # fmt: skip


def _encode(path: Path, autoencoder, images: Tensor, shape, mirror: bool, progress, done: int, total: int,
            cache: bool, info: dict) -> Tensor:  # fmt: skip
    if cache:
        try:
            return _encode_to_file(path, autoencoder, images, shape, mirror, progress, done, total)
        except OSError as error:  # a read-only or full cache folder: the latents stay in memory
            info["cache_warning"] = f"latents not cached ({error.strerror or error}); encoded in memory"
    out = torch.empty(shape, dtype=torch.float16)
    encode_rows(autoencoder, images, out, mirror=mirror, progress=progress, done=done, total=total)
    return out
