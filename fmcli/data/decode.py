"""One image file -> the ``S x S`` pixels every folder loader stores; no torch here.

The folder cache decodes in worker processes; this module imports only Pillow and numpy so a
worker started with ``spawn`` (macOS, Windows) is ready in a fraction of a second instead of
importing torch first. ``fmcli.data.folder`` re-exports these names.

Change ``DECODER_VERSION`` whenever a change here alters any decoded pixel: it is part of the
folder cache's key, so caches written by the old code are then rebuilt instead of reused.
"""

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fmcli.data import DEFAULT_IMAGE_SIZE  # noqa: F401 - re-exported

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
DECODER_VERSION = 1
WHITE = (255, 255, 255, 255)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS  # as Path(name).suffix, without a Path per file


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden entries skipped), by extension, sorted by path."""
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found += [Path(directory) / f for f in files if not f.startswith(".") and is_image_name(f)]
    return sorted(found)


def to_gray_or_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> "L" (when the pixels are gray) or "RGB"."""
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit: 0..65535 -> 0..255
        pixels = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba)
    if image.mode in ("1", "L"):
        return image.convert("L")
    rgb = image.convert("RGB")  # palette, CMYK, YCbCr, composited RGBA ...
    pixels = np.asarray(rgb)
    if (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all():
        return Image.fromarray(np.ascontiguousarray(pixels[..., 0]), mode="L")
    return rgb


def resize_and_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side -> ``size`` (bilinear; Pillow widens the filter when shrinking), then centre crop."""
    width, height = image.size
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return image.crop((left, top, left + size, top + size))


def read_image(path: Path, size: int) -> Image.Image | str:
    """The image as a ``size x size`` "L" or "RGB" Pillow image, or the reason it cannot be read."""
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: truncated or corrupt data raises here
            image = ImageOps.exif_transpose(opened)  # camera orientation
            return resize_and_crop(to_gray_or_rgb(image), size)
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        reason = str(error).replace(f" {str(path)!r}", "").replace(str(path), "the file")
        return f"{type(error).__name__}: {reason[:100]}"  # short: it goes into a warning


def decode_row(path: Path, size: int, mode: str | None = None) -> np.ndarray | str:
    """uint8 [C, size, size] (C = 1 for "L", 3 for "RGB"), or the reason the file cannot be read.

    ``mode`` "L" or "RGB" converts with Pillow exactly as the in-memory loader does; ``None`` keeps
    the image's own mode (gray stays one channel; the cache widens it later if colour turns up).
    """
    image = read_image(path, size)
    if isinstance(image, str):
        return image
    pixels = np.asarray(image.convert(mode) if mode else image)
    return pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def decode_batch(paths: list[Path], size: int, mode: str | None = None) -> list[np.ndarray | str]:
    """``decode_row`` over a few files: one task per batch keeps the cost of a process hop small."""
    return [decode_row(path, size, mode) for path in paths]
