"""From what the user typed (a data set name or a folder path) to a loaded ``ArrayDataset``.

Also the two summaries other features need: ``content_hash`` (a cache key for extracted eval
features) and ``describe`` (stored in checkpoints, printed by ``fm info``).
"""

import hashlib
from pathlib import Path

from fmcli import registry
from fmcli.data.base import ArrayDataset, DatasetSpec, LoadOptions
from fmcli.data.captions import apply_caption_mode
from fmcli.data.folder import load_folder
from fmcli.errors import FMError


def looks_like_path(text: str) -> bool:
    """True for input meant as a path: data set names are plain words, without separators, . or ~ in front."""
    return "/" in text or "\\" in text or text.startswith((".", "~"))


def registered_dataset(text: str) -> DatasetSpec | None:
    """The registered data set ``text`` names, or None when it is a path or no registered name."""
    return None if looks_like_path(text) else registry.datasets().get(text)


def load_data(name_or_path: str, options: LoadOptions) -> ArrayDataset:
    """A folder path -> the image-folder loader; a name -> the registered data set of that name.

    A bare word that is both a registered name and a folder in the working directory (say a
    ``mnist/`` folder holding the IDX files) means the registered data set; write ``./mnist``
    for the folder. ``options.captions`` "none" / "classes" apply to every data set (``apply_caption_mode``).
    """
    spec = registered_dataset(name_or_path)
    if spec is None and (looks_like_path(name_or_path) or Path(name_or_path).exists()):
        return load_folder(name_or_path, options)  # also raises the "missing" / "not a folder" errors
    spec = spec or registry.get_dataset(name_or_path)  # unknown name: FMError with the closest match
    if options.split not in spec.splits:
        raise FMError(f"data set {spec.name!r} has no split {options.split!r}; available: {', '.join(spec.splits)}")
    return apply_caption_mode(spec.load(options), options)


def content_hash(dataset: ArrayDataset) -> str:
    """First 16 hex digits of SHA-256 over shape, dtype, data bytes and labels bytes.

    A loader that already knows an identity of its content sets ``info["content_hash"]`` and that is
    used instead: an image folder mapped from its cache gives its cache key (files' paths, sizes,
    mtimes and the decoding options), since hashing the pixels would read the whole file from disk.
    """
    if dataset.info.get("content_hash"):
        return str(dataset.info["content_hash"])
    digest = hashlib.sha256()
    for tensor in (dataset.data, dataset.labels):
        if tensor is None:
            digest.update(b"no labels")
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def describe(dataset: ArrayDataset) -> dict:
    """Plain-JSON summary: name, split, kind, shape (per item), num_classes, class_names, size."""
    return {
        "name": dataset.name,
        "split": dataset.split,
        "kind": dataset.kind,
        "shape": list(dataset.shape),
        "num_classes": dataset.num_classes,
        "class_names": list(dataset.class_names) if dataset.class_names else None,
        "size": len(dataset),
    }
