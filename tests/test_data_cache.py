"""The decoded, memory-mapped cache of image folders (fmcli.data.cache) and ``fm data``.

Every test has its own FM_CACHE_DIR. Known answers come from the in-memory loader
(``LoadOptions(cache=False)``), which the cache must match pixel for pixel.
"""

import errno
import hashlib
import io
import json
import multiprocessing
import os
import re
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fm
from PIL import Image

from fmcli.data import cache, decode
from fmcli.data.base import LoadOptions
from fmcli.data.folder import load_folder
from fmcli.data.resolve import content_hash
from fmcli.errors import FMError
from fmcli.io import files

linux_only = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")


@pytest.fixture(autouse=True)
def cache_home(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("FM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "folders"


@pytest.fixture
def decodes(monkeypatch) -> list:
    """Spy on the decoder: every file decoded in this process is appended."""
    calls = []
    real = decode.read_image

    def spy(path, size):
        calls.append(Path(path).name)
        return real(path, size)

    monkeypatch.setattr(decode, "read_image", spy)
    return calls


def save(path: Path, image: Image.Image, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


@pytest.fixture
def mixed(tmp_path) -> Path:
    """Classes with gray, RGB, RGBA, 16-bit, palette and non-square images, two bad files, an empty class."""
    root = tmp_path / "pets"
    save(root / "cats" / "red.png", Image.new("RGB", (20, 30), (255, 0, 0)))
    save(root / "cats" / "deep" / "gray16.png", Image.fromarray(np.full((40, 50), 32896, np.uint16)))
    save(root / "cats" / "noise.jpg", Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), np.uint8)))
    save(root / "dogs" / "clear.png", Image.new("RGBA", (12, 12), (0, 0, 0, 0)))
    palette = Image.new("P", (30, 20), 1)
    palette.putpalette([0, 0, 0, 0, 128, 0])
    save(root / "dogs" / "palette.png", palette)
    save(root / "dogs" / "gray.bmp", Image.fromarray(np.arange(625, dtype=np.uint8).reshape(25, 25)))
    (root / "dogs" / "garbage.png").write_bytes(os.urandom(300))
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="JPEG")
    (root / "dogs" / "cut.jpg").write_bytes(buffer.getvalue()[:200])
    (root / "empty").mkdir()
    save(root / "loose.png", Image.new("RGB", (8, 8)))
    return root


@pytest.fixture
def gray_first(tmp_path) -> Path:
    """Unlabelled; two gray images before a colour one, so the writer widens rows already written."""
    root = tmp_path / "plain"
    rng = np.random.default_rng(1)
    save(root / "a.png", Image.fromarray(rng.integers(0, 256, (20, 30), np.uint8)))
    save(root / "b.png", Image.new("LA", (16, 16), (70, 255)))
    save(root / "c.png", Image.fromarray(rng.integers(0, 256, (30, 20, 3), np.uint8)))
    save(root / "d.png", Image.new("L", (9, 9), 200))
    return root


def many(root: Path, count: int) -> Path:
    for i in range(count):
        save(root / f"{i:03d}.png", Image.new("RGB", (8, 8), (i, 255 - i, (7 * i) % 256)))
    return root


def without_cache_keys(info: dict) -> dict:
    return {k: v for k, v in info.items() if k not in ("cache", "content_hash")}


def assert_same(cached, memory) -> None:
    assert cached.data.dtype == torch.uint8 and cached.data.shape == memory.data.shape
    assert torch.equal(cached.data, memory.data)
    assert (cached.labels is None) == (memory.labels is None)
    if memory.labels is not None:
        assert cached.labels.dtype == torch.int64 and torch.equal(cached.labels, memory.labels)
    assert cached.class_names == memory.class_names
    assert (cached.name, cached.split, cached.kind) == (memory.name, memory.split, memory.kind)
    assert without_cache_keys(cached.info) == memory.info


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


def mapping_of(tensor: torch.Tensor) -> tuple[str, str | None]:
    """(permissions, file) of the mapping that holds the tensor's first byte, per /proc/self/maps."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in parts[0].split("-"))
        if low <= address < high:
            return parts[1], parts[5] if len(parts) == 6 else None
    raise AssertionError("no mapping holds the tensor")


# ---------------------------------------------------------------- round trip and hits


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_cache_round_trip_matches_in_memory_loader(mixed, channels):
    options = LoadOptions(image_size=16, channels=channels)
    cached = load_folder(mixed, options)
    memory = load_folder(mixed, LoadOptions(image_size=16, channels=channels, cache=False))
    assert cached.info["cache"]["status"] == "built" and "cache" not in memory.info
    assert_same(cached, memory)
    assert cached.data.shape == (6, channels or 3, 16, 16) and cached.class_names == ["cats", "dogs"]
    assert cached.info["skipped"]["count"] == 2 and cached.info["empty_classes"] == ["empty"]
    again = load_folder(mixed, options)
    assert again.info["cache"]["status"] == "mapped"
    assert_same(again, memory)


def test_gray_rows_widened_when_colour_appears_in_chunks_and_in_worker_processes(gray_first, monkeypatch):
    memory = load_folder(gray_first, LoadOptions(image_size=12, cache=False))
    assert memory.data.shape == (4, 3, 12, 12)
    monkeypatch.setattr(cache, "COPY_CHUNK", 1)  # one row per read/write: exercises the backwards copy
    assert_same(load_folder(gray_first, LoadOptions(image_size=12)), memory)
    monkeypatch.setattr(cache, "PROCESS_MIN_FILES", 1)  # the pool that decodes large folders
    monkeypatch.setattr(cache, "BATCH", 1)
    assert_same(
        load_folder(gray_first, LoadOptions(image_size=12, channels=3)),
        load_folder(gray_first, LoadOptions(image_size=12, channels=3, cache=False)),
    )
    gray = load_folder(gray_first, LoadOptions(image_size=12, channels=1))
    assert_same(gray, load_folder(gray_first, LoadOptions(image_size=12, channels=1, cache=False)))
    assert cache.verify_cache(gray.info["cache"]["path"]) is None


@linux_only
def test_second_load_maps_the_file_without_decoding(mixed, decodes, cache_home):
    first = load_folder(mixed, LoadOptions(image_size=16))
    assert len(decodes) == 8  # every image file once (two of them unreadable)
    decodes.clear()
    second = load_folder(mixed, LoadOptions(image_size=16))
    assert decodes == [] and second.info["cache"]["status"] == "mapped"
    path = second.info["cache"]["path"]
    assert Path(path).parent == cache_home and entries(cache_home) == [Path(path).name]
    assert mapping_of(second.data) == ("r--s", path)  # the file itself, read-only and shared; not a copy in RAM
    assert second.data.is_contiguous() and torch.equal(second.data, first.data)
    assert content_hash(second) == second.info["content_hash"] == first.info["content_hash"]
    assert len(content_hash(second)) == 16
    batch = second.data[torch.tensor([4, 1])]  # a gather is a copy in RAM, free to change
    batch += 1
    assert mapping_of(batch)[1] != path and torch.equal(batch - 1, first.data[[4, 1]])


@linux_only
def test_indexing_reads_only_the_rows_asked_for(tmp_path):
    """Resident pages of the mapping before/after a gather: only the indexed rows (plus fault-around)."""
    rows = np.random.default_rng(2).integers(0, 256, (400, 3, 64, 64), np.uint8)  # 12 KB each, 4.9 MB
    final = tmp_path / "synthetic.fmc"
    writer = cache.CacheWriter(final, 64, 3)
    for row in rows:
        writer.add(row)
    writer.finish(
        {
            "key": "k",
            "source": "/synthetic",
            "labelled": False,
            "class_names": None,
            "class_counts": [400],
            "skipped": {"count": 0, "examples": []},
            "ignored_top_level": 0,
            "empty_classes": [],
            "channels_option": 3,
            "created": "",
        }
    )
    writer.commit()
    opened = cache.map_cache(final, "k")

    def resident_kb() -> int:
        lines = Path("/proc/self/smaps").read_text().splitlines()
        for i, line in enumerate(lines):
            if line.endswith(str(final)):
                return next(int(x.split()[1]) for x in lines[i + 1 :] if x.startswith("Rss:"))
        raise AssertionError("mapping not found")

    assert resident_kb() <= 64  # opening checked the sampled rows with read(), not through the map
    batch = opened.data[torch.tensor([5, 321])]
    assert torch.equal(batch, torch.from_numpy(rows[[5, 321]]))
    assert resident_kb() <= 4 * 64 + 2 * 16  # two rows of 12 KB, each with at most 64 KB of kernel fault-around
    assert final.stat().st_size > 4_900_000


# ---------------------------------------------------------------- invalidation


def test_adding_removing_or_modifying_a_file_rebuilds_and_prunes(mixed, decodes, cache_home):
    options = LoadOptions(image_size=8)
    keys = [load_folder(mixed, options).info["content_hash"]]
    save(mixed / "dogs" / "new.png", Image.new("RGB", (10, 10), (1, 2, 3)))  # add
    keys.append(load_folder(mixed, options).info["content_hash"])
    (mixed / "cats" / "red.png").unlink()  # remove
    keys.append(load_folder(mixed, options).info["content_hash"])
    target = mixed / "dogs" / "gray.bmp"  # modify: other pixels, other size, a later mtime
    stat = target.stat()
    save(target, Image.new("L", (31, 31), 99))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    decodes.clear()
    latest = load_folder(mixed, options)
    keys.append(latest.info["content_hash"])
    assert len(set(keys)) == 4 and len(decodes) == 8  # a new key, and a full decode each time
    assert latest.info["cache"]["status"] == "built"
    assert entries(cache_home) == [Path(latest.info["cache"]["path"]).name]  # stale entries pruned
    assert_same(latest, load_folder(mixed, LoadOptions(image_size=8, cache=False)))
    other_size = load_folder(mixed, LoadOptions(image_size=10))  # other options: a second, separate entry
    assert len(entries(cache_home)) == 2 and other_size.data.shape[-1] == 10


# ---------------------------------------------------------------- damage


def damage_truncate_end(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def damage_truncate_pixels(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: cache.DATA_OFFSET + 100])


def flip(offset: int):
    def damage(path: Path) -> None:
        contents = bytearray(path.read_bytes())
        contents[offset] ^= 0x5A
        path.write_bytes(bytes(contents))

    return damage


@pytest.mark.parametrize(
    "damage, reason",
    [
        (damage_truncate_end, "truncated"),
        (damage_truncate_pixels, "truncated"),
        (flip(0), "magic"),
        (flip(24), "header checksum"),  # the image count
        (flip(cache.HEADER.size + 3), "header checksum"),  # the checksum itself
        (flip(1000), "padding"),
        (flip(-3), "metadata checksum"),
        (flip(cache.DATA_OFFSET + 5), "pixel sample"),  # row 0 is always sampled
    ],
    ids=["truncated-end", "truncated-pixels", "magic", "count", "checksum", "padding", "metadata", "pixels"],
)
def test_damaged_cache_file_is_detected_and_rebuilt(mixed, decodes, damage, reason):
    first = load_folder(mixed, LoadOptions(image_size=8))
    path = Path(first.info["cache"]["path"])
    damage(path)
    assert reason in cache.verify_cache(path, full=False)
    decodes.clear()
    rebuilt = load_folder(mixed, LoadOptions(image_size=8))
    assert rebuilt.info["cache"]["status"] == "built" and reason in rebuilt.info["cache"]["replaced"]
    assert len(decodes) == 8
    assert_same(rebuilt, load_folder(mixed, LoadOptions(image_size=8, cache=False)))
    assert (
        cache.verify_cache(path) is None
        and load_folder(mixed, LoadOptions(image_size=8)).info["cache"]["status"] == "mapped"
    )


def test_a_flipped_pixel_outside_the_sample_is_found_by_the_full_check(tmp_path):
    root = many(tmp_path / "many", 40)  # more rows than are sampled
    path = Path(load_folder(root, LoadOptions(image_size=8)).info["cache"]["path"])
    unsampled = next(row for row in range(40) if row not in cache.sample_rows(40))
    flip(cache.DATA_OFFSET + unsampled * 3 * 64 + 1)(path)
    assert cache.verify_cache(path, full=False) is None  # the cheap check on open does not read every pixel
    assert cache.verify_cache(path, full=True) == "pixel checksum mismatch"


# ---------------------------------------------------------------- concurrency


def build_in_child(root, cache_dir, barrier, queue, lock):
    try:
        os.environ["FM_CACHE_DIR"] = str(cache_dir)
        if not lock:
            files.fcntl = None  # as on Windows: only the atomic rename keeps the result sound
        real = decode.read_image

        def slow(path, size):  # long enough for the two builds to overlap
            import time

            time.sleep(0.02)
            return real(path, size)

        decode.read_image = slow
        barrier.wait(timeout=20)
        data = load_folder(root, LoadOptions(image_size=8))
        queue.put((data.info["cache"]["status"], hashlib.sha256(data.data.numpy().tobytes()).hexdigest()))
    except BaseException:
        queue.put(("error", traceback.format_exc()))


@pytest.mark.skipif(sys.platform == "win32", reason="forks")
@pytest.mark.parametrize("lock", [True, False], ids=["flock", "rename-only"])
def test_two_processes_building_at_once_leave_one_valid_file(mixed, cache_home, lock):
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(2), context.Queue()
    children = [
        context.Process(target=build_in_child, args=(mixed, cache_home.parent, barrier, queue, lock)) for _ in range(2)
    ]
    for child in children:
        child.start()
    results = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert [r[0] for r in results if r[0] == "error"] == [], results
    expected = load_folder(mixed, LoadOptions(image_size=8, cache=False)).data
    assert {r[1] for r in results} == {hashlib.sha256(expected.numpy().tobytes()).hexdigest()}
    statuses = sorted(r[0] for r in results)
    assert statuses == (["built", "mapped"] if lock else ["built", "built"])  # with flock it is decoded once
    (entry,) = entries(cache_home)  # one file, no temporary left behind
    assert cache.verify_cache(cache_home / entry) is None
    assert load_folder(mixed, LoadOptions(image_size=8)).info["cache"]["status"] == "mapped"


# ---------------------------------------------------------------- unwritable, full disk, errors


def test_unwritable_cache_dir_loads_into_memory_with_one_warning(mixed, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FM_CACHE_DIR", str(blocker / "cache"))  # cannot be created, even by root
    data = load_folder(mixed, LoadOptions(image_size=8))
    warning = data.info.pop("cache_warning")
    assert "\n" not in warning and "FM_CACHE_DIR" in warning and "Not a directory" in warning
    assert_same(data, load_folder(mixed, LoadOptions(image_size=8, cache=False)))  # nothing else differs
    with pytest.raises(FMError, match="cannot cache .*Not a directory.*FM_CACHE_DIR") as caught:
        cache.prepare_folder(mixed, LoadOptions(image_size=8))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("fail_at", ["rows", "header"])
def test_disk_full_while_writing_leaves_nothing_that_is_used_later(mixed, cache_home, decodes, monkeypatch, fail_at):
    real = cache.CacheWriter.write
    writes = []

    def full_disk(self, payload):
        writes.append(len(payload))
        if (fail_at == "rows" and len(writes) == 4) or (fail_at == "header" and payload[:8] == cache.MAGIC):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, payload)

    monkeypatch.setattr(cache.CacheWriter, "write", full_disk)
    data = load_folder(mixed, LoadOptions(image_size=8))
    assert "No space left on device" in data.info["cache_warning"] and "cache" not in data.info
    assert entries(cache_home) == []  # neither an entry nor a temporary file
    monkeypatch.setattr(cache.CacheWriter, "write", real)
    decodes.clear()
    again = load_folder(mixed, LoadOptions(image_size=8))
    assert again.info["cache"]["status"] == "built" and len(decodes) == 8 and "replaced" not in again.info["cache"]
    assert_same(again, load_folder(mixed, LoadOptions(image_size=8, cache=False)))


def test_too_little_free_space_is_known_before_decoding(mixed, decodes, monkeypatch):
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    data = load_folder(mixed, LoadOptions(image_size=8))
    assert "1.0 kB free, the images need at least" in data.info["cache_warning"]
    assert len(decodes) == 8  # decoded once, into memory


def test_a_crashed_builders_temporary_file_is_ignored_and_removed(mixed, cache_home):
    listing_entry = load_folder(mixed, LoadOptions(image_size=8)).info["cache"]["path"]
    Path(listing_entry).unlink()
    leftover = cache_home / f".{Path(listing_entry).name}.tmp-99999-dead"
    leftover.write_bytes(b"\0" * 5000)  # as a killed process leaves it
    data = load_folder(mixed, LoadOptions(image_size=8))
    assert data.info["cache"]["status"] == "built" and not leftover.exists()
    assert entries(cache_home) == [Path(listing_entry).name]


def test_folder_errors_with_the_cache(tmp_path, cache_home):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG not really")
    (broken / "b.jpg").write_bytes(b"nope")
    with pytest.raises(FMError, match=r"^none of the 2 image files under .*broken could be read \(e\.g\. a\.png: "):
        load_folder(broken, LoadOptions(image_size=8))
    assert entries(cache_home) == []  # no entry and no temporary file
    with pytest.raises(FMError, match="image size must be at least 8 pixels .*got 4"):
        load_folder(broken, LoadOptions(image_size=4))
    with pytest.raises(FMError, match="no folder at"):
        cache.prepare_folder(tmp_path / "missing", LoadOptions())


# ---------------------------------------------------------------- prepare, list, CLI


def test_prepare_and_list(mixed, gray_first, cache_home):
    reports = []
    built = cache.prepare_folder(mixed, LoadOptions(image_size=8), progress=lambda *report: reports.append(report))
    assert reports == [(done, 8) for done in range(1, 9)]  # every image file, including the two unreadable ones
    assert (built.count, built.shape, built.already_cached, built.skipped) == (6, (3, 8, 8), False, 2)
    assert built.size_bytes == built.path.stat().st_size > 6 * 3 * 8 * 8
    again = cache.prepare_folder(mixed, LoadOptions(image_size=8))
    assert again.already_cached and again.path == built.path
    cache.prepare_folder(gray_first, LoadOptions(image_size=8, channels=1))
    everything = cache.cached_folders()
    assert sorted(e.source for e in everything) == sorted([str(mixed.resolve()), str(gray_first.resolve())])
    (mine,) = cache.cached_folders(mixed)
    assert mine.current is True and mine.class_names == ["cats", "dogs"]
    save(mixed / "cats" / "late.png", Image.new("RGB", (9, 9)))
    assert [e.current for e in cache.cached_folders(mixed)] == [False]
    flip(30)(built.path)
    damaged = [e for e in cache.cached_folders() if e.problem]
    assert [e.path for e in damaged] == [built.path] and "checksum" in damaged[0].problem
    json.dumps([e.to_json() for e in everything])


def test_cli_prepare_and_info(mixed, tmp_path):
    result = fm("data", "prepare", str(mixed), "--image-size", "16")
    assert result.exit_code == 0, result.output
    assert re.search(r"^cached 6 images of 3x16x16, 2 classes: \d+\.\d kB at .*\.fmc$", result.stdout, re.M)
    assert "warning: skipped 2 unreadable file(s)" in result.output
    result = fm("data", "prepare", str(mixed), "--image-size", "16")
    assert result.exit_code == 0 and "already cached 6 images" in result.output

    result = fm("data", "info", str(mixed), "--json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)
    assert (entry["count"], entry["shape"], entry["current"], entry["source"]) == (
        6,
        [3, 16, 16],
        True,
        str(mixed.resolve()),
    )
    result = fm("data", "info")
    assert result.exit_code == 0 and "fm data cache" in result.output and "3x16x16" in result.output
    assert "nothing cached" in fm("data", "info", str(tmp_path)).output

    for args, message in (
        (["data", "prepare", str(tmp_path / "missing")], "no folder at"),
        (["data", "prepare", str(mixed), "--image-size", "4"], "at least 8"),
        (["data", "prepare", str(mixed), "--channels", "2"], "channels must be 1 or 3"),
        (["data", "info", str(tmp_path / "missing")], "no folder at"),
    ):
        result = fm(*args)
        assert result.exit_code == 1 and result.output.startswith("error: ") and message in result.output
        assert result.output.count("\n") == 1, result.output
