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
  centre-cropped to ``S x S``; ``S = options.image_size``, or ``DEFAULT_IMAGE_SIZE`` (32) when unset;
  at least ``MIN_IMAGE_SIZE`` (8).
* Files that cannot be decoded (corrupt, truncated, not really images) are skipped:
  ``info["skipped"] = {"count": n, "examples": [up to 5 "name: reason"]}`` (absent when none was);
  the CLI warns once.
  Values stay in [0, 255]; ``fmcli.data.base.to_model_space`` maps them to [-1, 1] later.
* Cache: by default the decoded pixels are written once to a file under ``$FM_CACHE_DIR/folders``
  and later loads map that file instead of decoding again (``fmcli.data.cache``); the tensor is
  then backed by the file, not by RAM. ``LoadOptions(cache=False)`` decodes into memory as before;
  so does a cache folder that cannot be written, with ``info["cache_warning"]`` saying why.
* Captions: ``metadata.jsonl`` / ``metadata.csv`` (Hugging Face's layout) or ``NAME.txt`` beside each image, read
  at every load before anything is decoded, never cached (``fmcli.data.captions``): ``captions[i]`` holds the
  captions of row ``i``, ``info["captions"]`` the coverage.
"""

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fmcli.data import cache, decode
from fmcli.data.base import ArrayDataset, LoadOptions
from fmcli.data.captions import FolderCaptions, apply_caption_mode, read_folder_captions, relative_key, set_captions
from fmcli.data.decode import (  # noqa: F401 - re-exported: this module's names since the first release
    DEFAULT_IMAGE_SIZE,
    IMAGE_EXTENSIONS,
    image_files,
    is_image_name,
    read_image,
    resize_and_crop,
    to_gray_or_rgb,
)
from fmcli.data.listing import (  # noqa: F401 - re-exported: this module's names since the first release
    MAX_LISTED_SKIPS,
    MIN_IMAGE_SIZE,
    FolderListing,
    check_folder,
    list_folder,
    none_readable,
)


def read_all(paths: list[Path], size: int) -> list[Image.Image | str]:
    """Decode in threads (Pillow releases the GIL while decoding); keeps the order of ``paths``."""
    workers = min(8, os.cpu_count() or 1, max(1, len(paths)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: decode.read_image(p, size), paths))


def load_folder(
    path: str | Path,
    options: LoadOptions,
    progress: Callable[[int, int], None] | None = None,
) -> ArrayDataset:
    """All readable images under ``path``; see the module docstring for labels, size, channels, captions and the cache.

    ``progress(done, total)`` is called while images are decoded into the cache (not on a cache hit).
    """
    root, size = check_folder(path, options)
    listing = list_folder(root, path)
    captions = read_folder_captions(listing, options)  # first: a bad caption file stops the load before any work
    data, warning = None, None
    if options.cache:
        try:
            data = cache.load_cached(path, listing, size, options, progress)
        except cache.CacheUnavailable as error:  # e.g. a read-only home or a full disk: still train, say so once
            warning = (
                f"image cache not used ({error}); decoding into memory instead "
                f"(set FM_CACHE_DIR to a writable folder with room for the images)"
            )
        skipped = data.info.get("skipped") if data is not None else None
        if captions and skipped and "files" not in skipped:
            data = None  # an entry written before fm listed every skipped file: its rows cannot be matched to files
    if data is None:
        data = load_in_memory(path, listing, size, options)
    if warning:
        data.info["cache_warning"] = warning
    if captions:
        attach_captions(data, listing, captions)
    return apply_caption_mode(data, options)


def attach_captions(data: ArrayDataset, listing: FolderListing, captions: FolderCaptions) -> None:
    """``data.captions[i]`` = the captions of the file row ``i`` was decoded from (skipped files have no row)."""
    skipped = set(data.info.get("skipped", {}).get("files", ()))
    rows = [file for file in listing.paths if not skipped or relative_key(file, listing.root) not in skipped]
    set_captions(data, captions.for_rows(rows), captions.source)
    if captions.missing_files:
        data.info["captions_missing_files"] = captions.missing_files


def load_in_memory(path: str | Path, listing: FolderListing, size: int, options: LoadOptions) -> ArrayDataset:
    """Decode every image into one tensor in RAM (the reference the cache must match pixel for pixel)."""
    root, paths = listing.root, listing.paths
    results = read_all(paths, size)
    images: list[Image.Image] = []
    labels: list[int] = []
    class_names: list[str] = []
    empty_classes: list[str] = []
    skipped: list[Path] = []
    reasons: list[str] = []
    position = 0
    for class_name, files in listing.groups:
        readable = []
        for file, result in zip(files, results[position : position + len(files)], strict=True):
            if isinstance(result, str):
                skipped.append(file.relative_to(root))
                reasons.append(f"{file.relative_to(root)}: {result}")
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
        raise none_readable(path, len(paths), reasons[0])

    channels = options.channels or (1 if all(image.mode == "L" for image in images) else 3)
    mode = "L" if channels == 1 else "RGB"
    pixels = np.stack([np.asarray(image.convert(mode)) for image in images])  # [N, S, S] or [N, S, S, 3]
    data = torch.from_numpy(pixels.reshape(len(images), size, size, channels)).permute(0, 3, 1, 2).contiguous()
    labelled = listing.labelled
    info: dict = {"source": str(root), "image_size": size}
    if skipped:  # only present when something was skipped, so callers can warn on ``if info.get("skipped")``
        info["skipped"] = {
            "count": len(skipped),
            "examples": reasons[:MAX_LISTED_SKIPS],
            "files": [file.as_posix() for file in skipped],  # every one (captions find their rows by file)
        }
    if labelled:
        info["ignored_top_level"] = len(listing.ignored)
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
