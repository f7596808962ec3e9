"""``mnist-mini``: 12,000 real MNIST digits shipped inside the package, so nothing needs downloading.

``train``: 1,000 digits per class (10,000) from the official training set; ``test``: 200 per class
(2,000) from the official test set. Built by ``scripts/build_mnist_mini.py`` (seeded, balanced);
the file records the positions of each digit in the official files, the seed and the source
files' SHA-256 under ``meta``.

MNIST: Yann LeCun and Corinna Cortes (with Christopher J. C. Burges), CC BY-SA 3.0.
"""

import functools
import json
from pathlib import Path

import numpy as np
import torch

from fmcli.data.base import ArrayDataset, LoadOptions, resize_images, set_channels
from fmcli.data.mnist import CLASS_NAMES
from fmcli.errors import FMError

NPZ_PATH = Path(__file__).with_name("mnist_mini.npz")
SPLITS = ("train", "test")


@functools.lru_cache(maxsize=1)
def read_npz(path: Path = NPZ_PATH) -> dict[str, np.ndarray]:
    """Every array of the embedded file (its members are LZMA-compressed; ``numpy.load`` reads them)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise FMError(f"{path} is missing from the installation; reinstall fmcli") from None
    except RuntimeError as error:  # zipfile: "Compression requires the (missing) lzma module"
        raise FMError(f"cannot read {path}: {error}; use a Python built with lzma support") from None


def metadata() -> dict:
    """Seed, counts, source checksums and credit recorded when the file was built."""
    return json.loads(str(read_npz()["meta"]))


def load_mnist_mini(options: LoadOptions) -> ArrayDataset:
    """The ``options.split`` subset as uint8 [N, 1, 28, 28] with int64 labels (resized / recoloured on request)."""
    if options.split not in SPLITS:
        raise FMError(f"mnist-mini has no split {options.split!r}; use one of: {', '.join(SPLITS)}")
    arrays = read_npz()
    data = torch.from_numpy(arrays[f"{options.split}_images"].copy()).unsqueeze(1)
    if options.image_size:
        data = resize_images(data, options.image_size)
    return ArrayDataset(
        name="mnist-mini",
        split=options.split,
        kind="image",
        data=set_channels(data, options.channels),
        labels=torch.from_numpy(arrays[f"{options.split}_labels"].astype(np.int64)),
        class_names=list(CLASS_NAMES),
        info={"source": str(NPZ_PATH), **metadata()},
    )
