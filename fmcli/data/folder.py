"""Load a folder of images (searched recursively) as one uint8 [N, C, S, S] data set.

Rules:

* Labels: when the top level holds sub-folders, each sub-folder is a class (names sorted, so
  label ``i`` is the ``i``-th name) and images lying directly at the top level are ignored
  (counted in ``info["ignored_top_level"]``), as torchvision's ``ImageFolder`` does. A sub-folder
  without any readable image is not a class (listed in ``info["empty_classes"]``). Without
  sub-folders the data set is unlabelled. Hidden files and folders (``.name``) are skipped.
* A folder has no splits: whatever split is asked for, every image is returned.
* Channels: 1 when every image is grayscale (RGB images whose three channels are equal count as
  grayscale), else 3; ``options.channels`` forces 1 or 3. Transparent pixels are composited over
  white; 16-bit images are scaled to 8 bits; palette images are expanded.
* Size: every image is resized (bilinear, antialiased) so its shorter side is ``S``, then
  centre-cropped to ``S x S``; ``S = options.image_size``, or ``DEFAULT_IMAGE_SIZE`` (32) when unset.
* Files that cannot be decoded (corrupt, truncated, not really images) are skipped:
  ``info["skipped"] = {"count": n, "examples": [up to 5 "name: reason"]}`` (absent when none was);
  the CLI warns once.
  Values stay in [0, 255]; ``fmcli.data.base.to_model_space`` maps them to [-1, 1] later.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from fmcli.data.base import ArrayDataset, LoadOptions
from fmcli.errors import FMError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
DEFAULT_IMAGE_SIZE = 32
MAX_LISTED_SKIPS = 5
WHITE = (255, 255, 255, 255)


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


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


def read_all(paths: list[Path], size: int) -> list[Image.Image | str]:
    """Decode in threads (Pillow releases the GIL while decoding); keeps the order of ``paths``."""
    workers = min(8, os.cpu_count() or 1, max(1, len(paths)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: read_image(p, size), paths))


def load_folder(path: str | Path, options: LoadOptions) -> ArrayDataset:
    """All readable images under ``path``; see the module docstring for labels, size and channels."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FMError(f"no folder at {path}: give an existing folder of images or a data set name")
    if not root.is_dir():
        raise FMError(f"{path} is a file, not a folder: give a folder of images or a data set name")
    if options.channels not in (None, 1, 3):
        raise FMError(f"channels must be 1 or 3, not {options.channels}")
    size = options.image_size or DEFAULT_IMAGE_SIZE

    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if class_dirs:
        groups = [(d.name, image_files(d)) for d in class_dirs]
        ignored_top_level = sum(1 for f in root.iterdir() if f.is_file() and is_image_name(f.name))
    else:
        groups = [("", image_files(root))]
        ignored_top_level = 0
    paths = [p for _, files in groups for p in files]
    if not paths:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise FMError(f"no image files under {path} (looked recursively for {kinds})")

    results = read_all(paths, size)
    images: list[Image.Image] = []
    labels: list[int] = []
    class_names: list[str] = []
    empty_classes: list[str] = []
    skipped: list[str] = []
    position = 0
    for class_name, files in groups:
        readable = []
        for file, result in zip(files, results[position : position + len(files)]):
            if isinstance(result, str):
                skipped.append(f"{file.relative_to(root)}: {result}")
            else:
                readable.append(result)
        position += len(files)
        if not readable:
            empty_classes.append(class_name)
            continue
        images += readable
        labels += [len(class_names)] * len(readable)
        class_names.append(class_name)
    if not images:
        raise FMError(f"none of the {len(paths)} image files under {path} could be read (e.g. {skipped[0]})")

    channels = options.channels or (1 if all(image.mode == "L" for image in images) else 3)
    mode = "L" if channels == 1 else "RGB"
    pixels = np.stack([np.asarray(image.convert(mode)) for image in images])  # [N, S, S] or [N, S, S, 3]
    data = torch.from_numpy(pixels.reshape(len(images), size, size, channels)).permute(0, 3, 1, 2).contiguous()
    labelled = bool(class_dirs)
    info: dict = {"source": str(root), "image_size": size}
    if skipped:  # only present when something was skipped, so callers can warn on ``if info.get("skipped")``
        info["skipped"] = {"count": len(skipped), "examples": skipped[:MAX_LISTED_SKIPS]}
    if labelled:
        info["ignored_top_level"] = ignored_top_level
        info["empty_classes"] = [name for name in empty_classes if name]
    return ArrayDataset(
        name=str(path),
        split=options.split,
        kind="image",
        data=data,
        labels=torch.tensor(labels, dtype=torch.int64) if labelled else None,
        class_names=class_names if labelled else None,
        info=info,
    )
