"""Data sets: IDX reader, MNIST (full, checksums, offline), mnist-mini, image folders, toys, resolution.

Nothing here downloads: every test replaces ``fmcli.data.mnist.fetch_url``. The real MNIST files
are used when present (conftest's ``mnist_dir``), otherwise those tests are skipped.
"""

import gzip
import hashlib
import io
import json
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmcli.data import mini, mnist
from fmcli.data.base import LoadOptions
from fmcli.data.folder import load_folder
from fmcli.data.idx import read_idx
from fmcli.data.resolve import content_hash, describe, load_data
from fmcli.data.toys import TOYS, load_toy
from fmcli.errors import FMError


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, and an empty download cache of the test's own."""

    def refuse(url):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(mnist, "fetch_url", refuse)
    monkeypatch.setenv("FM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def no_data_dir(monkeypatch):
    monkeypatch.delenv("FM_DATA_DIR", raising=False)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as IDX (the inverse of read_idx), written independently of fmcli.data.idx."""
    codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


# ---------------------------------------------------------------- IDX


def test_idx_reads_raw_and_gzip_by_magic_not_extension(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 5)).astype(np.uint8)
    values = np.array([[-3, 7], [300, -32768]], dtype=np.int16)
    floats = np.linspace(-1, 1, 6, dtype=np.float32)
    (tmp_path / "images.gz").write_bytes(idx_bytes(images))  # raw despite its name
    (tmp_path / "values").write_bytes(gzip.compress(idx_bytes(values)))  # gzip without .gz
    (tmp_path / "floats.gz").write_bytes(gzip.compress(idx_bytes(floats)))
    for name, expected in (("images.gz", images), ("values", values), ("floats.gz", floats)):
        got = read_idx(tmp_path / name)
        assert got.dtype == expected.dtype.newbyteorder("=") and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_idx_rejects_truncated_and_malformed_files(tmp_path):
    whole = idx_bytes(np.arange(24, dtype=np.int32).reshape(2, 3, 4))
    cases = {
        "short_data": (whole[:-5], "truncated"),
        "short_header": (whole[:9], "truncated"),
        "extra": (whole + b"\0", "longer than its header"),
        "not_idx": (b"PK\x03\x04" + whole[4:], "not an IDX file"),
        "bad_type": (b"\0\0\x07\x01" + whole[4:], "unknown IDX element type"),
        "bad_gzip": (gzip.compress(whole)[:-12], "damaged gzip"),
    }
    for name, (contents, message) in cases.items():
        (tmp_path / name).write_bytes(contents)
        with pytest.raises(FMError, match=message):
            read_idx(tmp_path / name)
    with pytest.raises(FMError, match="cannot read"):
        read_idx(tmp_path / "absent")


# ---------------------------------------------------------------- full MNIST


def test_full_mnist_loads_both_splits_with_known_labels(mnist_dir):
    train = mnist.load_mnist(LoadOptions(data_dir=mnist_dir, download=False))
    assert train.data.shape == (60000, 1, 28, 28) and train.data.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.class_names == [str(d) for d in range(10)]
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the well-known first digits
    test = mnist.load_mnist(LoadOptions(split="test", data_dir=mnist_dir, download=False))
    assert test.data.shape == (10000, 1, 28, 28)
    assert test.labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # strokes are bright on a black background: corners empty, some pixels saturated
    assert test.data[:, :, 0, 0].max() == 0 and test.data.max() == 255


def write_fake_mnist(folder: Path, monkeypatch, count: int = 3) -> dict[str, bytes]:
    """Tiny IDX files under the official names (images gzipped, labels raw) + a matching checksum table."""
    rng = np.random.default_rng(1)
    arrays = {}
    for image_name, label_name in mnist.SPLIT_FILES.values():
        arrays[image_name] = idx_bytes(rng.integers(0, 256, (count, 28, 28)).astype(np.uint8))
        arrays[label_name] = idx_bytes(rng.integers(0, 10, count).astype(np.uint8))
    folder.mkdir(parents=True, exist_ok=True)
    for name, contents in arrays.items():
        if "images" in name:
            (folder / f"{name}.gz").write_bytes(gzip.compress(contents))
        else:
            (folder / name).write_bytes(contents)
    monkeypatch.setattr(mnist, "SHA256", {n: hashlib.sha256(c).hexdigest() for n, c in arrays.items()})
    return arrays


def test_mnist_checksums_accept_matching_and_reject_altered_files(tmp_path, monkeypatch, no_data_dir):
    arrays = write_fake_mnist(tmp_path / "data" / "mnist", monkeypatch)
    monkeypatch.setenv("FM_DATA_DIR", str(tmp_path / "data"))  # found in its mnist/ sub-folder
    loaded = mnist.load_mnist(LoadOptions(split="test", download=False))
    expected = np.frombuffer(arrays["t10k-images-idx3-ubyte"][16:], np.uint8).reshape(3, 1, 28, 28)
    np.testing.assert_array_equal(loaded.data.numpy(), expected)
    assert loaded.labels.tolist() == list(arrays["t10k-labels-idx1-ubyte"][8:])

    altered = bytearray(arrays["t10k-labels-idx1-ubyte"])
    altered[-1] = (altered[-1] + 1) % 10
    (tmp_path / "data" / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(bytes(altered))
    with pytest.raises(FMError, match="t10k-labels-idx1-ubyte.*SHA-256 mismatch"):
        mnist.load_mnist(LoadOptions(split="test", download=False))


def test_mnist_download_skips_failing_and_wrong_mirrors_then_caches(tmp_path, monkeypatch, no_data_dir):
    arrays = write_fake_mnist(tmp_path / "elsewhere", monkeypatch)
    monkeypatch.setattr(mnist, "MIRRORS", ("https://down/", "https://wrong/", "https://good/"))
    requested = []

    def fake_fetch(url):
        requested.append(url)
        if url.startswith("https://down/"):
            raise urllib.error.URLError("unreachable")
        name = url.rsplit("/", 1)[1].removesuffix(".gz")
        contents = arrays[name] if url.startswith("https://good/") else arrays[name][:-1] + b"\x01"
        return gzip.compress(contents)

    monkeypatch.setattr(mnist, "fetch_url", fake_fetch)
    loaded = mnist.load_mnist(LoadOptions(split="train"))
    assert len(loaded) == 3
    cached = sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir())
    assert cached == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert len(requested) == 6  # each file: down, wrong (rejected by checksum), good
    requested.clear()
    mnist.load_mnist(LoadOptions(split="train"))
    assert requested == []  # second time from the cache


def test_mnist_offline_error_names_the_files_and_where_to_put_them(no_data_dir):
    for download in (True, False):
        with pytest.raises(FMError) as caught:
            mnist.load_mnist(LoadOptions(split="test", download=download))
        message = str(caught.value)
        for needed in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "--data-dir", "FM_DATA_DIR"):
            assert needed in message
        assert ("network disabled" in message) == download


# ---------------------------------------------------------------- mnist-mini


def test_mnist_mini_is_small_balanced_and_recorded():
    assert mini.NPZ_PATH.stat().st_size <= 2_000_000
    meta = mini.metadata()
    assert meta["source_sha256_uncompressed"] == mnist.SHA256
    for split, per_class in (("train", meta["train_per_class"]), ("test", meta["test_per_class"])):
        data = load_data("mnist-mini", LoadOptions(split=split))
        assert data.data.shape == (10 * per_class, 1, 28, 28) and data.data.dtype == torch.uint8
        assert data.labels.bincount().tolist() == [per_class] * 10
        indices = mini.read_npz()[f"{split}_indices"]
        assert len(np.unique(indices)) == len(indices)
    assert (meta["train_per_class"], meta["test_per_class"]) == (1000, 200)


def test_mnist_mini_digits_are_the_recorded_official_ones(mnist_dir):
    import importlib.util

    arrays = mini.read_npz()
    meta = mini.metadata()
    spec = importlib.util.spec_from_file_location("build", Path(__file__).parents[1] / "scripts/build_mnist_mini.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    rng = np.random.default_rng(meta["seed"])  # the script draws train, then test, from one generator
    for split, official in (("train", "train"), ("test", "t10k")):
        folders = [mnist_dir]
        images = read_idx(mnist.find_file(f"{official}-images-idx3-ubyte", folders))
        labels = read_idx(mnist.find_file(f"{official}-labels-idx1-ubyte", folders))
        indices = arrays[f"{split}_indices"]
        np.testing.assert_array_equal(arrays[f"{split}_images"], images[indices])
        np.testing.assert_array_equal(arrays[f"{split}_labels"], labels[indices])
        redrawn = build.balanced_indices(labels, meta[f"{split}_per_class"], rng)
        np.testing.assert_array_equal(redrawn, indices)  # the selection is reproducible from the seed


def test_mnist_mini_resize_and_channels():
    data = load_data("mnist-mini", LoadOptions(split="test", image_size=14, channels=3))
    assert data.data.shape == (2000, 3, 14, 14)
    assert torch.equal(data.data[:, 0], data.data[:, 2])
    originals = load_data("mnist-mini", LoadOptions(split="test")).data[:50, 0].numpy()
    pillow = np.stack([np.asarray(Image.fromarray(x).resize((14, 14), Image.Resampling.BILINEAR)) for x in originals])
    assert np.abs(data.data[:50, 0].numpy().astype(int) - pillow).max() <= 1  # Pillow's bilinear, up to rounding


# ---------------------------------------------------------------- image folders


def save(path: Path, image: Image.Image, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def class_folder(tmp_path) -> Path:
    root = tmp_path / "pets"
    save(root / "cats" / "red.png", Image.new("RGB", (20, 30), (255, 0, 0)))
    save(root / "cats" / "deep" / "gray16.png", Image.fromarray(np.full((40, 50), 32896, np.uint16)))  # 0.502
    save(root / "cats" / "blue.jpg", Image.new("RGB", (50, 40), (0, 0, 255)))
    save(root / "dogs" / "clear.png", Image.new("RGBA", (12, 12), (0, 0, 0, 0)))  # transparent -> white
    palette = Image.new("P", (30, 20), 1)
    palette.putpalette([0, 0, 0, 0, 128, 0])  # index 1 = green
    save(root / "dogs" / "palette.png", palette)
    save(root / "dogs" / "gray.bmp", Image.new("L", (25, 25), 10))
    (root / "dogs" / "garbage.png").write_bytes(os.urandom(300))
    (root / "dogs" / "cut.jpg").write_bytes(jpeg_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))[:200])
    (root / "dogs" / "notes.txt").write_text("not an image")
    save(root / "loose.png", Image.new("RGB", (8, 8)))  # top level next to class folders: ignored
    (root / "empty").mkdir()
    return root


def test_folder_with_classes_labels_sorted_skips_corrupt_files(class_folder):
    data = load_folder(class_folder, LoadOptions(image_size=16))
    assert data.class_names == ["cats", "dogs"] and data.info["empty_classes"] == ["empty"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.data.shape == (6, 3, 16, 16) and data.data.dtype == torch.uint8  # RGB present -> 3 channels
    assert data.info["skipped"]["count"] == 2
    skipped_names = sorted(example.split(":")[0] for example in data.info["skipped"]["examples"])
    assert skipped_names == ["dogs/cut.jpg", "dogs/garbage.png"]
    assert data.info["ignored_top_level"] == 1
    # files in sorted order within each class: cats/blue.jpg, cats/deep/gray16.png, cats/red.png, dogs/clear, ...
    colours = [tuple(image[:, 8, 8].tolist()) for image in data.data]
    assert abs(colours[0][2] - 254) <= 2 and colours[0][0] <= 2  # blue (JPEG: nearly exact)
    assert colours[1:] == [(128, 128, 128), (255, 0, 0), (255, 255, 255), (10, 10, 10), (0, 128, 0)]


def test_folder_channels_from_data_or_forced(tmp_path):
    root = tmp_path / "plain"
    save(root / "a.png", Image.new("L", (20, 30), 50))
    save(root / "b.png", Image.new("RGB", (50, 40), (90, 90, 90)))  # RGB, but gray pixels
    save(root / "c.png", Image.new("LA", (16, 16), (70, 255)))
    data = load_folder(root, LoadOptions(image_size=8))
    assert data.labels is None and data.class_names is None
    assert data.data.shape == (3, 1, 8, 8)
    assert data.data[:, 0, 4, 4].tolist() == [50, 90, 70]
    forced = load_folder(root, LoadOptions(image_size=8, channels=3))
    assert forced.data.shape == (3, 3, 8, 8) and "skipped" not in forced.info


def test_folder_resizes_shorter_side_then_centre_crops(tmp_path):
    pixels = np.zeros((40, 20), np.uint8)  # 20 wide, 40 tall: top half black, bottom half white
    pixels[20:] = 255
    save(tmp_path / "tall" / "x.png", Image.fromarray(pixels))
    data = load_folder(tmp_path / "tall", LoadOptions(image_size=10)).data[0, 0]  # 20x40 -> 10x20 -> rows 5..14
    assert data.shape == (10, 10)
    assert data[:4].max() <= 5 and data[6:].min() >= 250


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("hello")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "file.png").write_bytes(b"")
    for path, message in (
        (tmp_path / "empty", "no image files"),
        (tmp_path / "texts", "no image files"),
        (tmp_path / "broken", "none of the 1 image files"),
        (tmp_path / "missing", "no folder at"),
        (tmp_path / "file.png", "is a file, not a folder"),
    ):
        with pytest.raises(FMError, match=message):
            load_folder(path, LoadOptions(image_size=8))


# ---------------------------------------------------------------- toys


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toys_shapes_and_determinism(name):
    first = load_toy(name, LoadOptions(num_samples=500, seed=3))
    again = load_toy(name, LoadOptions(num_samples=500, seed=3))
    other_seed = load_toy(name, LoadOptions(num_samples=500, seed=4))
    test = load_toy(name, LoadOptions(num_samples=500, seed=3, split="test"))
    assert first.data.shape == (500, 2) and first.data.dtype == torch.float32 and first.kind == "points"
    assert torch.equal(first.data, again.data)
    assert not torch.allclose(first.data, other_seed.data) and not torch.allclose(first.data, test.data)
    assert 0.3 < first.data.std() < 2.0 and first.data.abs().max() < 4  # roughly unit scale
    if first.labels is not None:
        assert first.labels.min() >= 0 and first.labels.max() < first.num_classes
    assert load_toy(name, LoadOptions()).data.shape == (20000, 2)


def test_toys_have_their_shapes():
    gaussians = load_toy("8gaussians", LoadOptions(num_samples=4000))
    angles = 2 * torch.pi * gaussians.labels / 8
    centres = np.sqrt(2) * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    assert (gaussians.data - centres).norm(dim=1).max() < 0.15 * 5  # each point near its labelled mode
    assert gaussians.labels.bincount().min() > 400

    board = load_toy("checkerboard", LoadOptions(num_samples=4000)).data
    cells = torch.floor(board)
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all() and board.abs().max() <= 2  # only dark squares
    assert len(torch.unique(cells, dim=0)) == 8

    moons = load_toy("moons", LoadOptions(num_samples=4000))
    assert moons.labels.bincount().tolist() == [2000, 2000]
    upper, lower = moons.data[moons.labels == 0], moons.data[moons.labels == 1]
    assert upper[:, 1].mean() > lower[:, 1].mean()

    spirals = load_toy("spirals", LoadOptions(num_samples=4000))
    arm0, arm1 = spirals.data[spirals.labels == 0], spirals.data[spirals.labels == 1]
    assert abs(arm0.mean(0) + arm1.mean(0)).max() < 0.1  # point symmetric arms


# ---------------------------------------------------------------- resolution


def test_resolve_by_name_by_path_and_errors(class_folder, tmp_path, monkeypatch):
    toy = load_data("moons", LoadOptions(num_samples=100, split="test"))
    assert (toy.name, toy.split, len(toy)) == ("moons", "test", 100)

    folder = load_data(str(class_folder), LoadOptions(image_size=8))
    assert folder.name == str(class_folder) and folder.class_names == ["cats", "dogs"]

    with pytest.raises(FMError, match="Did you mean 'mnist-mini'"):
        load_data("mnist-mnii", LoadOptions())
    with pytest.raises(FMError, match="no split 'val'; available: train, test"):
        load_data("spirals", LoadOptions(split="val"))
    with pytest.raises(FMError, match="no folder at"):
        load_data(str(tmp_path / "nowhere"), LoadOptions())

    monkeypatch.chdir(tmp_path)  # a folder called like a data set: the name wins, ./name is the folder
    save(tmp_path / "moons" / "x.png", Image.new("L", (8, 8)))
    assert load_data("moons", LoadOptions(num_samples=10)).kind == "points"
    assert load_data("./moons", LoadOptions(image_size=8)).kind == "image"


def test_content_hash_and_describe():
    data = load_toy("8gaussians", LoadOptions(num_samples=64))
    same = load_toy("8gaussians", LoadOptions(num_samples=64))
    assert content_hash(data) == content_hash(same) and len(content_hash(data)) == 16
    same.labels[0] = (same.labels[0] + 1) % 8
    assert content_hash(same) != content_hash(data)
    assert content_hash(load_toy("8gaussians", LoadOptions(num_samples=64, seed=1))) != content_hash(data)
    summary = describe(data)
    assert summary == {
        "name": "8gaussians",
        "split": "train",
        "kind": "points",
        "shape": [2],
        "num_classes": 8,
        "class_names": [str(k) for k in range(8)],
        "size": 64,
    }
    json.dumps(summary)  # must be storable in a checkpoint
