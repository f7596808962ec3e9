"""Full MNIST (60,000 training and 10,000 test digits, 28x28 grayscale) from its four IDX files.

Where the files are looked for, in order (each as ``name.gz`` or uncompressed ``name``, in the
folder itself or in its ``mnist/`` sub-folder):

1. ``options.data_dir`` (the CLI's ``--data-dir``)
2. ``$FM_DATA_DIR``
3. the download cache, ``$FM_CACHE_DIR/mnist`` or ``~/.cache/fmcli/mnist``

When a file is missing and ``options.download`` is true it is fetched from a public mirror into
the cache. Every file, local or downloaded, is checked against the SHA-256 of its UNCOMPRESSED
contents (gzip wrappers differ between mirrors; the IDX bytes do not).

MNIST: Yann LeCun and Corinna Cortes (with Christopher J. C. Burges), CC BY-SA 3.0.
"""

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from fmcli.data.base import ArrayDataset, LoadOptions, resize_images, set_channels
from fmcli.data.idx import maybe_gunzip, parse_idx, read_bytes
from fmcli.errors import FMError
from fmcli.io.files import default_cache_dir

SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# SHA-256 of the uncompressed IDX contents.
SHA256: dict[str, str] = {
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}

MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

CLASS_NAMES = [str(digit) for digit in range(10)]
IMAGE_SIZE = 28


def cache_dir() -> Path:
    """Where downloaded files go: ``$FM_CACHE_DIR/mnist`` or ``~/.cache/fmcli/mnist``."""
    return default_cache_dir() / "mnist"


def search_dirs(data_dir: Path | None) -> list[Path]:
    """Folders to look in, most specific first, each followed by its ``mnist/`` sub-folder."""
    roots = [Path(data_dir).expanduser()] if data_dir else []
    if os.environ.get("FM_DATA_DIR"):
        roots.append(Path(os.environ["FM_DATA_DIR"]).expanduser())
    folders = [folder for root in roots for folder in (root, root / "mnist")] + [cache_dir()]
    return list(dict.fromkeys(folders))  # drop duplicates, keep the order


def find_file(name: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    return None


def sha256(contents: bytes) -> str:
    return hashlib.sha256(contents).hexdigest()


def verified_contents(name: str, path: Path) -> bytes:
    """The uncompressed contents of ``path``, after checking them against the known checksum."""
    contents = read_bytes(path)
    if sha256(contents) != SHA256[name]:
        raise FMError(
            f"{path} is not the official {name} (SHA-256 mismatch); delete it so it can be fetched again, "
            f"or replace it with the official file"
        )
    return contents


def fetch_url(url: str) -> bytes:
    """GET ``url`` (tests replace this so nothing is ever downloaded there)."""
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - fixed https mirrors
        return response.read()


def download(name: str, target_dir: Path) -> Path:
    """Fetch ``name.gz`` from the first mirror that serves a verified copy; save it under ``target_dir``."""
    errors = []
    for mirror in MIRRORS:
        url = f"{mirror}{name}.gz"
        try:
            payload = fetch_url(url)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            errors.append(f"{url}: {getattr(error, 'reason', error)}")
            continue
        try:
            contents = maybe_gunzip(payload, url)
        except FMError as error:
            errors.append(str(error))
            continue
        if sha256(contents) != SHA256[name]:
            errors.append(f"{url}: SHA-256 mismatch")
            continue
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{name}.gz"
        partial = target.with_suffix(".gz.part")
        partial.write_bytes(payload)
        os.replace(partial, target)  # atomic: a half-written file never looks complete
        return target
    raise ConnectionError(f"{len(errors)} mirror(s) tried, last: {errors[-1]}")


def missing_files_error(names: list[str], folders: list[Path], reason: str | None) -> FMError:
    wanted = ", ".join(f"{name}.gz" for name in names)
    looked = ", ".join(str(folder) for folder in folders)
    why = f" Download failed ({reason})." if reason else " Downloading is switched off."
    return FMError(
        f"MNIST files not found: {wanted}.{why} Put the official IDX files (gzipped or not) in a folder "
        f"and pass it with --data-dir or set FM_DATA_DIR (looked in: {looked}); "
        f"or use the built-in 'mnist-mini' subset, which needs no files."
    )


def locate_files(names: list[str], options: LoadOptions) -> dict[str, Path]:
    """Path of each file, downloading the missing ones when allowed."""
    folders = search_dirs(options.data_dir)
    found = {name: find_file(name, folders) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing and not options.download:
        raise missing_files_error(missing, folders, None)
    for name in missing:
        try:
            found[name] = download(name, cache_dir())
        except (ConnectionError, OSError) as error:
            raise missing_files_error(missing, folders, str(error)) from None
    return found  # type: ignore[return-value]


def load_mnist(options: LoadOptions) -> ArrayDataset:
    """MNIST ``options.split`` as uint8 [N, 1, 28, 28] with int64 labels 0-9.

    ``options.image_size`` other than 28 resizes bilinearly (antialiased); ``options.channels=3``
    repeats the gray channel.
    """
    if options.split not in SPLIT_FILES:
        raise FMError(f"MNIST has no split {options.split!r}; use one of: {', '.join(SPLIT_FILES)}")
    image_name, label_name = SPLIT_FILES[options.split]
    paths = locate_files([image_name, label_name], options)
    images = parse_idx(verified_contents(image_name, paths[image_name]), str(paths[image_name]))
    labels = parse_idx(verified_contents(label_name, paths[label_name]), str(paths[label_name]))
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise FMError(f"{paths[image_name]} and {paths[label_name]} do not hold matching MNIST images and labels")
    data = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).unsqueeze(1)
    if options.image_size:
        data = resize_images(data, options.image_size)
    return ArrayDataset(
        name="mnist",
        split=options.split,
        kind="image",
        data=set_channels(data, options.channels),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=list(CLASS_NAMES),
        info={"source": str(paths[image_name].parent), "files": {name: str(p) for name, p in paths.items()}},
    )
