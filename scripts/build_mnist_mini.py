"""Build fmcli/data/mnist_mini.npz: a balanced, seeded subset of the official MNIST files.

    python scripts/build_mnist_mini.py [DATA_DIR] [--seed 0] [--train-per-class 1000] [--test-per-class 200]

DATA_DIR holds the four IDX files (gzipped or not; default $FM_DATA_DIR, also its mnist/ sub-folder).
The training subset is drawn from the 60,000 official training digits and the test subset from
the 10,000 official test digits, so the two never overlap. For every class the script draws
``per_class`` indices without replacement with ``numpy.random.default_rng(seed)`` and keeps them in
ascending order; images are stored exactly as in the source (uint8, 28x28).

The file is an ordinary ``.npz`` (``numpy.load`` reads it) whose members are compressed with LZMA
instead of deflate: 15% smaller, which keeps 12,000 digits under 2 MB. ``meta`` is a JSON string
with the seed, the counts, the source files' SHA-256 (of their uncompressed contents) and the credit.

MNIST: Yann LeCun and Corinna Cortes (with Christopher J. C. Burges), CC BY-SA 3.0.
"""

import argparse
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fmcli.data.idx import parse_idx  # noqa: E402
from fmcli.data.mnist import SHA256, SPLIT_FILES, find_file, search_dirs, verified_contents  # noqa: E402
from fmcli.errors import FMError  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "fmcli" / "data" / "mnist_mini.npz"
CREDIT = "MNIST by Yann LeCun and Corinna Cortes (with Christopher J. C. Burges), CC BY-SA 3.0"


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` distinct indices of each label 0-9, drawn without replacement, ascending."""
    chosen = [rng.choice(np.flatnonzero(labels == digit), size=per_class, replace=False) for digit in range(10)]
    return np.sort(np.concatenate(chosen)).astype(np.int32)


def read_split(split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    folders = search_dirs(data_dir)
    arrays, hashes = [], {}
    for name in SPLIT_FILES[split]:
        path = find_file(name, folders)
        if path is None:
            raise FMError(f"{name}(.gz) not found in {', '.join(map(str, folders))}; pass the MNIST folder")
        arrays.append(parse_idx(verified_contents(name, path), str(path)))  # refuses unofficial files
        hashes[name] = SHA256[name]
    return arrays[0], arrays[1], hashes


def write_npz_lzma(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``numpy.savez_compressed`` but with LZMA members (``numpy.load`` reads them unchanged)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_LZMA) as archive:
        for key, array in arrays.items():
            entry = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))  # fixed: reproducible bytes
            entry.compress_type = zipfile.ZIP_LZMA
            with archive.open(entry, "w") as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    path.write_bytes(buffer.getvalue())


def build(data_dir: Path | None, out: Path, seed: int, train_per_class: int, test_per_class: int) -> dict:
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images, labels, hashes = read_split(split, data_dir)
        indices = balanced_indices(labels, per_class, rng)
        arrays[f"{split}_images"] = images[indices].astype(np.uint8)
        arrays[f"{split}_labels"] = labels[indices].astype(np.uint8)
        arrays[f"{split}_indices"] = indices  # positions in the official file, for provenance checks
        sources.update(hashes)
    meta = {
        "seed": seed,
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "selection": "numpy.random.default_rng(seed).choice per class without replacement, train then test",
        "source_sha256_uncompressed": sources,
        "credit": CREDIT,
        "built_by": "scripts/build_mnist_mini.py",
    }
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))  # a str array loads without pickle
    write_npz_lzma(out, arrays)
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", nargs="?", type=Path, default=None, help="folder with the MNIST IDX files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    args = parser.parse_args()
    if args.data_dir is None and not os.environ.get("FM_DATA_DIR"):
        parser.error("give DATA_DIR or set FM_DATA_DIR")
    try:
        build(args.data_dir, args.out, args.seed, args.train_per_class, args.test_per_class)
    except FMError as error:
        sys.exit(f"error: {error}")
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size:,} bytes): {10 * args.train_per_class} train + {10 * args.test_per_class} test")


if __name__ == "__main__":
    main()
