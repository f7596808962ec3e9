"""Decode a folder of images once into a file, then map that file on every later load.

A folder of 200,000 images at 128 px is 9.8 GB of uint8 pixels: decoding it on every run costs
minutes, and holding it costs the RAM of every process that trains on it. The first load writes
the decoded, resized and cropped pixels to ``$FM_CACHE_DIR/folders/<folder id>-<key>.fmc``; later
loads map it with ``numpy.memmap``, so ``ArrayDataset.data`` is a torch uint8 [N, C, S, S] tensor
whose pages are read from the file when (and only when) they are touched.

File format (one file, so there is no pair of files to keep in step):

    bytes 0..4095      header: ``HEADER`` (magic, format, count, channels, size, offsets, the
                       SHA-256 of the metadata), then the SHA-256 of those header bytes, then zeros
    bytes 4096..       the pixels, uint8 [N, C, S, S] C-order (row i at 4096 + i * C*S*S); the
                       offset is page aligned so a row never straddles more pages than needed
    after the pixels   metadata, UTF-8 JSON: the key, the folder, class names and per-class
                       counts (labels are contiguous per class, so counts are the labels),
                       the skipped-file report, ignored and empty classes, the SHA-256 of all
                       pixels and of a sample of rows

Key: SHA-256 of every image file's relative path, size and mtime_ns (stat only, pixels are not
read), the class folders, the top-level images that are ignored, and what shapes the pixels
(image size, forced channels, ``DECODER_VERSION``, the Pillow version, this format's version).
Any added, removed or modified file therefore gives a new file name; when a new entry is written
the other entries of the same folder and options are deleted.

Atomicity: rows are streamed to a temporary file in the cache folder (never one giant bytes
object); header and metadata are written last, then fsync, rename, fsync of the folder (as
``fmcli.io.checkpoint.atomic_write_bytes``). A crash or a full disk leaves at most a temporary file,
which is removed (by the writer on error, or by the next builder of that folder).

Corruption: every open checks the magic, the header checksum, the zero padding, that the file size
is exactly what the header says, the metadata checksum and key, and the SHA-256 of 32 sampled rows
(first, last, evenly spaced). That reads a few hundred KB at most, so it stays cheap at any N, and
catches truncation, a damaged header or metadata, and gross damage to the pixels; a single flipped
pixel byte outside the sample is only found by ``verify_cache(path, full=True)``, which hashes every
pixel against the checksum written with them. A damaged file is rebuilt, never used.

Concurrency: the builder holds an exclusive ``flock`` on ``<folder id>.lock``, so concurrent loads
of one folder (say 8 ranks under torchrun) decode it once; the others wait, then map the result.
Without ``flock`` (Windows, some network file systems) every process writes its own temporary file
and the renames are atomic, so the last one wins and each is complete: the result is still one
valid file. Readers open the file read-only and map it read-only and shared (``mode="r"``): every
process mapping it shares the same page-cache pages, nothing can change the file through the map, and
the map is not charged to the process's committed memory, so a cache larger than RAM maps fine (a
private copy-on-write map is charged in full and can be refused). The price: the tensor must not be
written in place (that faults); indexing with a tensor returns a copy, which may be.

A cache folder that cannot be written (read-only home, missing permissions, a full disk, too little
free space for the pixels) is not an error for loading: ``load_cached`` raises ``CacheUnavailable``
and ``load_folder`` decodes into memory as before with one ``info["cache_warning"]``. The cache is
an optimisation, and a read-only home on a cluster node should not stop a run that fits in RAM.
``prepare_folder``, which is asked for the cache explicitly, turns the same problem into an FMError.

Row access: indexing ``data[index_tensor]`` gathers only the rows asked for, so a rank that
indexes its own rows reads only those pages. Do not pickle the mapped tensor to other processes
(torch would copy every pixel into shared memory); pass ``info["cache"]["path"]`` and call
``map_cache`` there, or load the folder again in each process (a cache hit costs a ``stat`` per file).
"""

import hashlib
import json
import multiprocessing
import os
import secrets
import shutil
import struct
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch

from fmcli import __version__
from fmcli.data import decode
from fmcli.data.base import ArrayDataset, LoadOptions
from fmcli.data.listing import MAX_LISTED_SKIPS, FolderListing, check_folder, list_folder, none_readable
from fmcli.errors import FMError
from fmcli.io.files import default_cache_dir, exclusive_lock, fsync_dir

FORMAT_VERSION = 1
MAGIC = b"FMFOLDER"
# magic, format, reserved, count, channels, size, data offset, metadata offset, metadata length, metadata SHA-256
HEADER = struct.Struct("<8sIIQIIQQQ32s")
DATA_OFFSET = 4096
SAMPLED_ROWS = 32
SUFFIX = ".fmc"
PROCESS_MIN_FILES = 128  # below this a pool costs more than it saves; decode in this process
BATCH = 32  # files per worker task
MAX_WORKERS = 8
COPY_CHUNK = 8 << 20  # bytes per read/write when widening gray rows to RGB
REQUIRED_META = frozenset(
    {
        "key",
        "source",
        "count",
        "channels",
        "image_size",
        "labelled",
        "class_names",
        "class_counts",
        "skipped",
        "ignored_top_level",
        "empty_classes",
        "channels_option",
        "created",
        "data_sha256",
        "sample_rows",
        "sample_sha256",
    }
)

Progress = Callable[[int, int], None]


class CacheUnavailable(Exception):
    """The cache folder cannot be used (not writable, full, too small); the message says why."""


class CacheDamaged(Exception):
    """A cache file failed a check; the message says which. It is rebuilt, never used."""


@dataclass
class CacheInfo:
    """One cache file: what ``prepare_folder`` built and ``cached_folders`` lists."""

    path: Path
    source: str = ""  # the folder, absolute
    size_bytes: int = 0  # of the cache file
    count: int = 0  # images stored
    shape: tuple[int, ...] = ()  # (C, S, S) per image
    class_names: list[str] | None = None
    skipped: int = 0  # unreadable files left out
    skipped_examples: list[str] | None = None  # up to 5 "name: reason"
    key: str = ""
    created: str = ""  # UTC, ISO 8601
    already_cached: bool = False  # prepare_folder: nothing had to be decoded
    current: bool | None = None  # cached_folders(path): still matches the folder's files
    problem: str | None = None  # why the file cannot be used (then it is rebuilt on next load)

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "source": self.source,
            "size_bytes": self.size_bytes,
            "count": self.count,
            "shape": list(self.shape),
            "class_names": self.class_names,
            "skipped": self.skipped,
            "skipped_examples": self.skipped_examples,
            "key": self.key,
            "created": self.created,
            "already_cached": self.already_cached,
            "current": self.current,
            "problem": self.problem,
        }


@dataclass
class Opened:
    """A checked cache file with its pixels mapped."""

    path: Path
    data: torch.Tensor
    meta: dict
    size_bytes: int


# ---------------------------------------------------------------- names and keys


def cache_dir() -> Path:
    """``$FM_CACHE_DIR/folders`` (default ``~/.cache/fmcli/folders``)."""
    return default_cache_dir() / "folders"


def folder_id(root: Path, size: int, channels: int | None) -> str:
    """Names every entry of one folder + options, so a new entry can delete the stale ones."""
    text = f"{root.expanduser().resolve()}\0{size}\0{channels}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_key(listing: FolderListing, size: int, channels: int | None) -> str:
    """SHA-256 (hex) of the folder's files (relative path, size, mtime_ns) and the options shaping the pixels."""
    digest = hashlib.sha256()
    shaping = {
        "format": FORMAT_VERSION,
        "decoder": decode.DECODER_VERSION,
        "pillow": PIL.__version__,
        "size": size,
        "channels": channels,
        "labelled": listing.labelled,
        "classes": [name for name, _ in listing.groups],
    }
    digest.update(json.dumps(shaping, sort_keys=True).encode() + b"\n")
    prefix = os.path.join(str(listing.root), "")
    for kind, files in (("image", listing.paths), ("ignored", listing.ignored)):
        for file in files:
            text = str(file)  # strings, not pathlib: this runs for every file on every load
            try:
                stat = os.stat(text)
                size_and_time = f"{stat.st_size}\0{stat.st_mtime_ns}"
            except OSError:  # vanished since listed: the decoder will report it as skipped
                size_and_time = "missing"
            relative = text[len(prefix) :] if text.startswith(prefix) else str(file.relative_to(listing.root))
            digest.update(f"{kind}\0{relative.replace(os.sep, '/')}\0{size_and_time}\n".encode())
    return digest.hexdigest()


def entry_path(listing: FolderListing, size: int, channels: int | None) -> tuple[Path, str, str]:
    """(cache file, folder id, key) for a listing and options."""
    fid = folder_id(listing.root, size, channels)
    key = cache_key(listing, size, channels)
    return cache_dir() / f"{fid}-{key[:32]}{SUFFIX}", fid, key


# ---------------------------------------------------------------- reading


def sample_rows(count: int) -> list[int]:
    """The rows whose checksum is verified on every open: first, last and evenly spaced between."""
    return sorted({round(i * (count - 1) / (SAMPLED_ROWS - 1)) for i in range(SAMPLED_ROWS)}) if count else []


def read_header(handle) -> tuple[dict, dict]:
    """(header fields, metadata) of an open cache file after the cheap checks; CacheDamaged otherwise."""
    head = handle.read(DATA_OFFSET)
    if len(head) < DATA_OFFSET:
        raise CacheDamaged("shorter than its header")
    magic, version, _, count, channels, size, data_offset, meta_offset, meta_length, meta_sha = HEADER.unpack_from(head)
    if magic != MAGIC:
        raise CacheDamaged("not an fm folder cache (wrong magic bytes)")
    if hashlib.sha256(head[: HEADER.size]).digest() != head[HEADER.size : HEADER.size + 32]:
        raise CacheDamaged("header checksum mismatch")
    if head[HEADER.size + 32 :].count(0) != DATA_OFFSET - HEADER.size - 32:
        raise CacheDamaged("header padding is not zero")
    if version != FORMAT_VERSION:
        raise CacheDamaged(f"format version {version}, this fm reads {FORMAT_VERSION}")
    row_bytes = channels * size * size
    if data_offset != DATA_OFFSET or meta_offset != data_offset + count * row_bytes or channels not in (1, 3):
        raise CacheDamaged("inconsistent header")
    file_size = os.fstat(handle.fileno()).st_size
    if file_size != meta_offset + meta_length:
        raise CacheDamaged(f"{file_size} bytes where the header says {meta_offset + meta_length} (truncated?)")
    handle.seek(meta_offset)
    meta_bytes = handle.read(meta_length)
    if hashlib.sha256(meta_bytes).digest() != meta_sha:
        raise CacheDamaged("metadata checksum mismatch")
    try:
        meta = json.loads(meta_bytes)
    except ValueError:
        raise CacheDamaged("metadata is not JSON") from None
    if not isinstance(meta, dict) or not REQUIRED_META <= meta.keys():
        raise CacheDamaged("metadata lacks fields this fm needs")
    if (meta["count"], meta["channels"], meta["image_size"]) != (count, channels, size):
        raise CacheDamaged("metadata disagrees with the header")
    header = {"count": count, "channels": channels, "size": size, "row_bytes": row_bytes, "file_size": file_size}
    return header, meta


def check_sample(handle, header: dict, meta: dict) -> None:
    digest = hashlib.sha256()
    try:
        rows, expected = [int(row) for row in meta["sample_rows"]], meta["sample_sha256"]
    except (KeyError, TypeError, ValueError):  # sound checksum, foreign content: not written by this code
        raise CacheDamaged("metadata lacks the pixel sample") from None
    for row in rows:
        if not 0 <= row < header["count"]:
            raise CacheDamaged("metadata lists a sample row outside the pixels")
        handle.seek(DATA_OFFSET + row * header["row_bytes"])
        digest.update(handle.read(header["row_bytes"]))
    if digest.hexdigest() != expected:
        raise CacheDamaged("pixel sample checksum mismatch")


def map_cache(path: str | Path, key: str | None = None) -> Opened:
    """Check ``path`` (cheaply, see the module docstring) and map its pixels read-only.

    The checks and the map use one open file, so a concurrent rename cannot slip another file in
    between. FileNotFoundError when absent, CacheDamaged when a check fails.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        header, meta = read_header(handle)
        if key is not None and meta.get("key") != key:
            raise CacheDamaged("key in the metadata does not match the file name")
        check_sample(handle, header, meta)
        shape = (header["count"], header["channels"], header["size"], header["size"])
        pixels = np.memmap(handle, dtype=np.uint8, mode="r", offset=DATA_OFFSET, shape=shape)
    return Opened(path=path, data=tensor_of_map(pixels), meta=meta, size_bytes=header["file_size"])


def tensor_of_map(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing a read-only memory map's pages. torch warns that it cannot mark such a tensor read-only;
    the map itself is read-only and nothing in fm writes a data set's tensor, so the warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def verify_cache(path: str | Path, full: bool = True) -> str | None:
    """None when ``path`` is a sound cache file, else the reason; ``full`` also hashes every pixel."""
    try:
        with open(path, "rb") as handle:
            header, meta = read_header(handle)
            check_sample(handle, header, meta)
            if full:
                digest = hashlib.sha256()
                handle.seek(DATA_OFFSET)
                remaining = header["count"] * header["row_bytes"]
                while remaining:
                    chunk = handle.read(min(COPY_CHUNK, remaining))
                    if not chunk:
                        return "ends inside the pixels"
                    digest.update(chunk)
                    remaining -= len(chunk)
                if digest.hexdigest() != meta["data_sha256"]:
                    return "pixel checksum mismatch"
    except CacheDamaged as error:
        return str(error)
    except OSError as error:
        return f"cannot read it ({error.strerror or error})"
    return None


# ---------------------------------------------------------------- decoding


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def decode_rows(
    paths: list[Path],
    size: int,
    mode: str | None = None,
    *,
    how: str = "auto",
    workers: int | None = None,
    progress: Progress | None = None,
) -> Iterator[np.ndarray | str]:
    """``decode.decode_row`` for every path, in order, with at most a few batches in flight.

    ``how``: "processes", "threads", "serial", or "auto" = processes for ``PROCESS_MIN_FILES``
    files or more when there is more than one CPU, else serial. Processes measured faster than
    threads for JPEG decoding (bench/folder_scale.py): Pillow releases the GIL while decoding,
    but the conversion, gray test, resize and crop around it hold it long enough that two threads
    ran slower than one. Linux forks (instant, no re-import; workers touch only Pillow and numpy),
    other systems spawn.
    """
    workers = workers or min(MAX_WORKERS, available_cpus())
    if how == "auto":
        daemon = multiprocessing.current_process().daemon  # e.g. a DataLoader worker: may not start processes
        how = "processes" if workers > 1 and len(paths) >= PROCESS_MIN_FILES and not daemon else "serial"
    total = len(paths)
    if how == "serial":
        for done, path in enumerate(paths, 1):
            row = decode.decode_row(path, size, mode)
            if progress:  # before the yield: the consumer stops asking after the last row
                progress(done, total)
            yield row
        return
    executor: Executor
    if how == "processes":
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        executor = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    elif how == "threads":
        executor = ThreadPoolExecutor(max_workers=workers)
    else:
        raise ValueError(f"how must be auto, processes, threads or serial, not {how!r}")
    batches = iter([paths[start : start + BATCH] for start in range(0, total, BATCH)])
    pending: deque = deque()
    done = 0
    try:
        for batch in batches:
            pending.append(executor.submit(decode.decode_batch, batch, size, mode))
            if len(pending) >= 4 * workers:  # bounded: a slow early batch cannot pile up decoded rows
                break
        while pending:
            results = pending.popleft().result()
            batch = next(batches, None)
            if batch is not None:
                pending.append(executor.submit(decode.decode_batch, batch, size, mode))
            for result in results:
                done += 1
                if progress:
                    progress(done, total)
                yield result
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- writing


class CacheWriter:
    """Streams rows into a temporary file beside ``final``; ``finish`` + ``commit`` make it the entry.

    ``channels`` None decides from the rows: one channel while every row is gray; the first colour
    row widens the rows written so far in place (gray ``g`` -> ``g g g``, exactly Pillow's L -> RGB).
    """

    def __init__(self, final: Path, size: int, channels: int | None):
        self.final = final
        self.tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        self.size, self.plane = size, size * size
        self.channels = channels or 1
        self.count = 0
        self.hasher = hashlib.sha256()
        self.handle = open(self.tmp, "xb+", buffering=1 << 20)  # x: never clobber another writer's file
        try:
            self.write(bytes(DATA_OFFSET))  # the header goes here last: an unfinished file has no magic
        except BaseException:
            self.discard()
            raise

    def write(self, payload: bytes) -> None:
        """Every byte of the file goes through here (tests make it fail like a full disk)."""
        self.handle.write(payload)

    def add(self, row: np.ndarray) -> None:
        if row.shape[0] != self.channels:
            if self.channels == 1:
                self.widen()
            else:
                row = np.repeat(row, 3, axis=0)
        payload = row.tobytes()
        self.hasher.update(payload)
        self.write(payload)
        self.count += 1

    def widen(self) -> None:
        """Rows 0..count-1 from 1 to 3 channels, in place, last chunk first (row i moves to 3i: never
        over rows not yet read), then re-hash them in order."""
        handle, plane = self.handle, self.plane
        handle.flush()
        per_chunk = max(1, COPY_CHUNK // (3 * plane))
        end = self.count
        while end > 0:
            start = max(0, end - per_chunk)
            handle.seek(DATA_OFFSET + start * plane)
            gray = np.frombuffer(handle.read((end - start) * plane), np.uint8).reshape(end - start, 1, plane)
            handle.seek(DATA_OFFSET + start * 3 * plane)
            self.write(np.repeat(gray, 3, axis=1).tobytes())
            end = start
        handle.flush()
        self.channels = 3
        self.hasher = hashlib.sha256()
        handle.seek(DATA_OFFSET)
        remaining = self.count * 3 * plane
        while remaining:
            chunk = handle.read(min(COPY_CHUNK, remaining))
            self.hasher.update(chunk)
            remaining -= len(chunk)
        handle.seek(DATA_OFFSET + self.count * 3 * plane)

    def finish(self, meta: dict) -> None:
        """Sample checksum, metadata, header; flush and fsync. The file is complete but not yet in place."""
        handle, row_bytes = self.handle, self.channels * self.plane
        handle.flush()
        rows = sample_rows(self.count)
        sample = hashlib.sha256()
        for row in rows:
            handle.seek(DATA_OFFSET + row * row_bytes)
            sample.update(handle.read(row_bytes))
        meta = {
            **meta,
            "count": self.count,
            "channels": self.channels,
            "image_size": self.size,
            "data_sha256": self.hasher.hexdigest(),
            "sample_rows": rows,
            "sample_sha256": sample.hexdigest(),
        }
        meta_bytes = json.dumps(meta, sort_keys=True).encode()
        meta_offset = DATA_OFFSET + self.count * row_bytes
        handle.seek(meta_offset)
        self.write(meta_bytes)
        handle.truncate()
        header = HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            0,
            self.count,
            self.channels,
            self.size,
            DATA_OFFSET,
            meta_offset,
            len(meta_bytes),
            hashlib.sha256(meta_bytes).digest(),
        )
        handle.seek(0)
        self.write(header + hashlib.sha256(header).digest())
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()

    def commit(self) -> None:
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)

    def discard(self) -> None:
        try:
            self.handle.close()  # may raise again (the buffered rest hits the same full disk)
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)


def build(
    listing: FolderListing,
    size: int,
    channels: int | None,
    final: Path,
    key: str,
    path_text: str,
    progress: Progress | None = None,
) -> None:
    """Decode every image of ``listing`` into ``final`` (atomically); FMError when none is readable."""
    root, paths = listing.root, listing.paths
    mode = {None: None, 1: "L", 3: "RGB"}[channels]
    writer = CacheWriter(final, size, channels)
    try:
        class_names, class_counts, empty_classes, skipped, reasons = [], [], [], [], []
        with closing(decode_rows(paths, size, mode, progress=progress)) as rows:  # closing stops the workers
            for class_name, files in listing.groups:
                readable = 0
                for file in files:
                    row = next(rows)
                    if isinstance(row, str):
                        skipped.append(file.relative_to(root))
                        reasons.append(f"{file.relative_to(root)}: {row}")
                    else:
                        writer.add(row)
                        readable += 1
                if readable:
                    class_names.append(class_name)
                    class_counts.append(readable)
                elif class_name:
                    empty_classes.append(class_name)
        if writer.count == 0:
            raise none_readable(path_text, len(paths), reasons[0])
        writer.finish(
            {
                "key": key,
                "source": str(root.resolve()),
                "labelled": listing.labelled,
                "channels_option": channels,
                "class_names": class_names if listing.labelled else None,
                "class_counts": class_counts,
                # every skipped file, so captions (read at load time) find their rows: row i is the i-th file kept
                "skipped": {
                    "count": len(skipped),
                    "examples": reasons[:MAX_LISTED_SKIPS],
                    "files": [file.as_posix() for file in skipped],
                },
                "ignored_top_level": len(listing.ignored),
                "empty_classes": empty_classes,
                "files": len(paths),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "decoder": decode.DECODER_VERSION,
                "pillow": PIL.__version__,
                "fmcli": __version__,
            }
        )
        writer.commit()
    except BaseException:
        writer.discard()
        raise


def build_lock(folder: Path, fid: str):
    """Exclusive lock for building one folder's entry; yields whether it is a real lock."""
    return exclusive_lock(folder / f"{fid}.lock")


def prune(folder: Path, fid: str, keep: Path, locked: bool) -> None:
    """Delete the other entries of this folder + options; with the lock also dead builders' temporary files.

    A process that still maps a deleted entry keeps reading it (POSIX unlinks the name, not the data).
    """
    stale = [p for p in folder.glob(f"{fid}-*{SUFFIX}") if p != keep]
    if locked:  # nobody else may be writing this folder's entry: any temporary file left is from a crash
        stale += folder.glob(f".{fid}-*{SUFFIX}.tmp-*")
    for path in stale:
        try:
            path.unlink()
        except OSError:  # e.g. mapped on Windows; it is only disk space
            pass


def ensure(
    listing: FolderListing, size: int, channels: int | None, path_text: str, progress: Progress | None = None
) -> tuple[Opened, str, str | None]:
    """(the mapped entry, "mapped" or "built", why an existing entry was replaced or None).

    CacheUnavailable when the cache folder cannot hold it; FMError when no image is readable.
    """
    final, fid, key = entry_path(listing, size, channels)
    replaced = None
    try:
        return map_cache(final, key), "mapped", None
    except (FileNotFoundError, NotADirectoryError):  # not built yet, or no cache folder at all
        pass
    except CacheDamaged as error:
        replaced = str(error)
    except OSError as error:  # unreadable: try to replace it; writing fails too if the folder is read-only
        replaced = f"cannot read it ({error.strerror or error})"
    folder = final.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with build_lock(folder, fid) as locked:
            try:  # another process may have built it while this one waited for the lock
                return map_cache(final, key), "mapped", replaced
            except FileNotFoundError:
                pass
            except CacheDamaged as error:
                replaced = str(error)
                final.unlink()  # its space may be what the new one needs; nobody maps a damaged file
            needed = DATA_OFFSET + len(listing.paths) * (channels or 1) * size * size  # the least it can take
            free = shutil.disk_usage(folder).free
            if free < needed:
                raise CacheUnavailable(
                    f"{folder} has {format_bytes(free)} free, the images need at least {format_bytes(needed)}"
                )
            build(listing, size, channels, final, key, path_text, progress)
            prune(folder, fid, final, locked)
            opened = map_cache(final, key)
    except (OSError, CacheDamaged) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise CacheUnavailable(f"cannot write {folder}: {reason}") from error
    return opened, "built", replaced


# ---------------------------------------------------------------- what the loaders and the CLI call


def load_cached(
    path: str | Path, listing: FolderListing, size: int, options: LoadOptions, progress: Progress | None = None
) -> ArrayDataset:
    """The folder's data set with ``data`` mapped from its cache entry (built first when needed).

    Raises CacheUnavailable (``load_folder`` then decodes into memory) or FMError.
    """
    opened, status, replaced = ensure(listing, size, options.channels, str(path), progress)
    meta = opened.meta
    info: dict = {"source": str(listing.root), "image_size": size}
    if meta["skipped"]["count"]:
        info["skipped"] = meta["skipped"]
    labels = None
    if meta["labelled"]:
        info["ignored_top_level"] = meta["ignored_top_level"]
        info["empty_classes"] = meta["empty_classes"]
        counts = torch.tensor(meta["class_counts"], dtype=torch.int64)
        labels = torch.repeat_interleave(torch.arange(len(counts)), counts)  # rows are stored class by class
    info["content_hash"] = meta["key"][:16]  # stands for the pixels: hashing them would read the whole file
    info["cache"] = {"path": str(opened.path), "status": status}
    if replaced:
        info["cache"]["replaced"] = replaced
    return ArrayDataset(
        name=str(path),
        split=options.split,
        kind="image",
        data=opened.data,
        labels=labels,
        class_names=meta["class_names"],
        info=info,
    )


def describe_entry(meta: dict, path: Path, size_bytes: int) -> CacheInfo:
    return CacheInfo(
        path=path,
        source=meta["source"],
        size_bytes=size_bytes,
        count=meta["count"],
        shape=(meta["channels"], meta["image_size"], meta["image_size"]),
        class_names=meta["class_names"],
        skipped=meta["skipped"]["count"],
        skipped_examples=meta["skipped"]["examples"],
        key=meta["key"],
        created=meta["created"],
    )


def format_bytes(count: int) -> str:
    """1234567 -> "1.2 MB" (powers of 1000, as ``df -H`` and file managers count)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def prepare_folder(path: str | Path, options: LoadOptions, progress: Progress | None = None) -> CacheInfo:
    """Build the cache of ``path`` for ``options`` ahead of time (or find it); FMError when it cannot be written."""
    root, size = check_folder(path, options)
    listing = list_folder(root, path)
    try:
        opened, status, _ = ensure(listing, size, options.channels, str(path), progress)
    except CacheUnavailable as error:
        raise FMError(f"cannot cache {path}: {error}; set FM_CACHE_DIR to a writable folder with room") from None
    info = describe_entry(opened.meta, opened.path, opened.size_bytes)
    info.already_cached = status == "mapped"
    info.current = True
    return info


def cached_folders(path: str | Path | None = None) -> list[CacheInfo]:
    """The cache entries of every folder, or of ``path`` only (then each says whether it is current).

    Damaged entries are listed (with ``problem``) only when no folder is given: their folder is unknown.
    """
    root = None
    if path is not None:
        root, _ = check_folder(path, LoadOptions())
    folder = cache_dir()
    if not folder.is_dir():
        return []
    listing: FolderListing | None | bool = None
    found = []
    for file in sorted(folder.glob(f"*{SUFFIX}")):
        try:
            with open(file, "rb") as handle:
                header, meta = read_header(handle)
                check_sample(handle, header, meta)
        except (CacheDamaged, OSError) as error:
            if root is None:
                problem = str(error) if isinstance(error, CacheDamaged) else f"cannot read it ({error})"
                found.append(CacheInfo(path=file, size_bytes=_size(file), problem=problem))
            continue
        if root is not None and meta["source"] != str(root.resolve()):
            continue
        entry = describe_entry(meta, file, header["file_size"])
        if root is not None:
            if listing is None:
                try:
                    listing = list_folder(root, path)
                except FMError:  # no image left: nothing cached is current
                    listing = False
            entry.current = (
                bool(listing) and cache_key(listing, meta["image_size"], meta["channels_option"]) == meta["key"]
            )
        found.append(entry)
    return found


def _size(file: Path) -> int:
    try:
        return file.stat().st_size
    except OSError:
        return 0
