"""Captions: read them from an image folder the way the field stores them, and summarise a data set's captions.

A folder's captions (``LoadOptions.captions == "auto"``; the first convention found is used):

* ``metadata.jsonl`` or ``metadata.csv``, Hugging Face's image-folder layout (what diffusers'
  ``train_text_to_image.py`` reads): one row per image, ``file_name`` relative to the folder holding the
  metadata file, the caption in the column ``LoadOptions.caption_column`` (default ``text``): a string, or in
  JSONL a list of strings (several captions of one image; training draws one). Metadata files may sit at the
  top of the folder or in sub-folders (say ``train/metadata.jsonl``); an image described by several takes the
  rows of the nearest one, and rows naming the same image add captions. Rows naming a file that is not an
  image of the data set are counted (``info["captions_missing_files"]``); when no row names one, loading stops.
* ``NAME.txt`` beside ``NAME.png``: its text (UTF-8, stripped) is the image's one caption.

An image no row or text file describes has no caption (``()``: it trains the empty prompt). ``"classes"``
makes the class names the captions (``golden_retriever`` -> ``golden retriever``); ``"none"`` ignores captions.
Captions are read at every load, before any pixel is decoded (bad caption files stop the load with one line and
nothing written) and never from the pixel cache, so an edited caption file is never served stale.
"""

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fmcli.data.base import ArrayDataset, LoadOptions
from fmcli.data.listing import FolderListing
from fmcli.errors import FMError

METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
FILE_COLUMN = "file_name"
WORD = re.compile(r"[^\W_]+")  # letters and digits: what the vocabulary counts as a word


@dataclass
class FolderCaptions:
    """The captions found in a folder, by image file (files absent here have none)."""

    source: str  # "metadata.jsonl", "metadata.csv" or "txt"
    by_file: dict[Path, tuple[str, ...]] = field(default_factory=dict)
    missing_files: int = 0  # metadata rows naming no image of the data set

    def for_rows(self, files: list[Path]) -> list[tuple[str, ...]]:
        return [self.by_file.get(file, ()) for file in files]


# ---------------------------------------------------------------- reading a folder's captions


def read_folder_captions(listing: FolderListing, options: LoadOptions) -> FolderCaptions | None:
    """The captions of ``listing``'s images under ``options.captions == "auto"``; None when it has none.

    ``"classes"`` is checked here (the folder must have class sub-folders) but applied after loading
    (``apply_caption_mode``); ``"none"`` reads nothing.
    """
    if options.captions == "classes" and not listing.labelled:
        raise FMError(f"captions from classes need class sub-folders; {listing.root} has none")
    if options.captions != "auto":
        return None
    metadata = find_metadata(listing)
    if metadata:
        return read_metadata(listing, metadata, options.caption_column)
    return read_text_files(listing.paths)


def relative_key(file: Path, root: Path) -> str:
    """``file`` relative to ``root``, with ``/`` (strings, not pathlib: this runs for every file of a folder)."""
    text, prefix = str(file), os.path.join(str(root), "")
    return text[len(prefix) :].replace(os.sep, "/") if text.startswith(prefix) else file.relative_to(root).as_posix()


def find_metadata(listing: FolderListing) -> list[Path]:
    """The metadata files in the folder and in every sub-folder holding images, shallowest first."""
    folders = {""}
    for parent in {file.parent for file in listing.paths}:
        parts = relative_key(parent, listing.root).split("/") if parent != listing.root else []
        folders.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
    found, kinds = [], set()
    for folder in sorted(folders, key=lambda name: (name.count("/") + bool(name), name)):
        here = [listing.root / folder / name for name in METADATA_NAMES if (listing.root / folder / name).is_file()]
        if len(here) > 1:
            raise FMError(f"{here[0].parent} holds both metadata.jsonl and metadata.csv; keep one")
        found += here
        kinds.update(path.name for path in here)
    if len(kinds) > 1:
        raise FMError(f"{listing.root} mixes metadata.jsonl and metadata.csv files; use one format")
    return found


def read_metadata(listing: FolderListing, files: list[Path], column: str) -> FolderCaptions:
    """Every metadata file's rows matched to the listing's images (nearest metadata file wins)."""
    images = {relative_key(file, listing.root): file for file in listing.paths}
    captions: dict[Path, list[str]] = {}
    owner: dict[Path, Path] = {}  # which metadata file an image's captions come from
    missing, rows_total, first_missing = 0, 0, None
    for metadata in files:  # shallowest first: a deeper file replaces what a shallower one said
        folder = relative_key(metadata.parent, listing.root) if metadata.parent != listing.root else ""
        reader = read_jsonl if metadata.suffix == ".jsonl" else read_csv
        for name, texts in reader(metadata, column):
            rows_total += 1
            key = os.path.normpath(f"{folder}/{name}" if folder else name).replace(os.sep, "/")
            image = images.get(key)
            if image is None:
                missing += 1
                first_missing = first_missing or name
                continue
            if owner.get(image) != metadata:
                owner[image], captions[image] = metadata, []
            captions[image] += texts
    if not captions:
        name = files[0].name
        if not rows_total:
            raise FMError(f"{files[0]} lists no image (one row per image: file_name and {column})")
        raise FMError(
            f"none of the {rows_total} files {name} names is an image under {listing.root} (e.g. {first_missing}); "
            f"file_name is relative to the folder holding {name}"
        )
    return FolderCaptions(files[0].name, {image: tuple(texts) for image, texts in captions.items()}, missing)


def read_text(path: Path) -> str:
    """A caption or metadata file as UTF-8 (a byte-order mark is dropped); one line naming it when it is not."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise FMError(f"cannot read {path}: {error.strerror or error}") from None
    if data.startswith(b"\xef\xbb\xbf"):  # a byte-order mark, as Windows editors write
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise FMError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}); save captions as UTF-8"
        ) from None


def caption_values(value, where: str) -> list[str]:
    """A metadata cell -> its captions: a string, or a list of strings; empty ones are refused."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise FMError(f"{where}: empty caption list")
    captions = []
    for item in values:
        if not isinstance(item, str):
            raise FMError(f"{where}: a caption is text (or, in JSONL, a list of texts), not {json.dumps(item)[:40]}")
        if not item.strip():
            raise FMError(f"{where}: empty caption")
        captions.append(item.strip())
    return captions


def read_jsonl(path: Path, column: str) -> list[tuple[str, list[str]]]:
    """(file_name, captions) per row of a JSON Lines file (blank lines skipped)."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise FMError(f"{where}: not valid JSON ({error.msg}); metadata.jsonl holds one object per line") from None
        if not isinstance(row, dict):
            raise FMError(f'{where}: each line is one JSON object, like {{"file_name": "a.png", "{column}": "..."}}')
        rows.append((file_name(row, where), caption_values(cell(row, column, where), where)))
    return rows


def read_csv(path: Path, column: str) -> list[tuple[str, list[str]]]:
    """(file_name, [caption]) per row of a CSV file with a header row (blank lines skipped)."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""), strict=True)
    rows, header = [], None
    try:
        for fields in reader:
            where = f"{path}:{reader.line_num}"
            if not fields or fields == [""]:
                continue
            if header is None:
                header = [name.strip() for name in fields]
                for needed in (FILE_COLUMN, column):
                    cell(dict.fromkeys(header), needed, where)
                continue
            if len(fields) != len(header):
                raise FMError(f"{where}: {len(fields)} fields where the header has {len(header)}")
            row = dict(zip(header, fields, strict=True))
            rows.append((file_name(row, where), caption_values(row[column], where)))
    except csv.Error as error:
        raise FMError(f"{path}:{reader.line_num}: not valid CSV ({error})") from None
    return rows


def cell(row: dict, column: str, where: str):
    if column not in row:
        columns = ", ".join(map(str, row)) or "none"
        hint = "" if column == FILE_COLUMN else " (choose the caption column with --caption-column)"
        raise FMError(f"{where}: no column {column!r}; the columns are: {columns}{hint}")
    return row[column]


def file_name(row: dict, where: str) -> str:
    name = cell(row, FILE_COLUMN, where)
    if not isinstance(name, str) or not name.strip():
        raise FMError(f"{where}: {FILE_COLUMN} must name an image file, relative to the metadata file's folder")
    return name.strip()


def read_text_files(images: list[Path]) -> FolderCaptions | None:
    """``NAME.txt`` beside ``NAME.png``: one caption per image that has one; None when no image has one."""
    texts: dict[Path, set[str]] = {}
    for folder in {image.parent for image in images}:
        with os.scandir(folder) as entries:
            texts[folder] = {entry.name for entry in entries if entry.name.endswith(".txt")}
    found = {}
    for image in images:
        name = os.path.splitext(image.name)[0] + ".txt"
        if name in texts[image.parent]:
            path = image.parent / name
            text = read_text(path).strip()
            if not text:
                raise FMError(f"{path}:1: empty caption (delete the file for an image without one)")
            found[image] = (text,)
    return FolderCaptions("txt", found) if found else None


# ---------------------------------------------------------------- any data set


def humanise(class_name: str) -> str:
    """A class folder's name as a caption: ``golden_retriever`` / ``golden-retriever`` -> ``golden retriever``."""
    return " ".join(re.sub(r"[_-]+", " ", class_name).split()) or class_name


def set_captions(data: ArrayDataset, captions: list[tuple[str, ...]], source: str) -> ArrayDataset:
    """Attach per-item captions and record their coverage in ``info["captions"]``."""
    data.captions = captions
    data.info["captions"] = {"source": source, "captioned": sum(1 for item in captions if item), "total": len(data)}
    return data


def apply_caption_mode(data: ArrayDataset, options: LoadOptions) -> ArrayDataset:
    """``"none"`` drops captions, ``"classes"`` makes the class names the captions; ``"auto"`` keeps what loaded."""
    if options.captions == "none":
        data.captions = None
        data.info.pop("captions", None)
    elif options.captions == "classes":
        if data.labels is None or not data.class_names:
            raise FMError(f"captions from classes need a labelled data set; {data.name} has no classes")
        names = [humanise(name) for name in data.class_names]
        set_captions(data, [(names[label],) for label in data.labels.tolist()], "classes")
    return data


def caption_summary(data: ArrayDataset) -> dict | None:
    """Coverage, captions per item, vocabulary (distinct lower-cased words) and the longest caption; None without."""
    if data.captions is None:
        return None
    words: set[str] = set()
    longest, longest_words = "", -1
    counts = [len(item) for item in data.captions]
    for item in data.captions:
        for caption in item:
            found = WORD.findall(caption.lower())
            words.update(found)
            if len(found) > longest_words:
                longest, longest_words = caption, len(found)
    source = data.info.get("captions", {}).get("source")
    return {
        "source": source,
        "captioned": sum(1 for count in counts if count),
        "total": len(counts),
        "per_item": {
            "min": min(counts, default=0),
            "mean": sum(counts) / max(1, len(counts)),
            "max": max(counts, default=0),
        },
        "vocabulary": len(words),
        "longest": {"words": max(longest_words, 0), "text": longest},
        "missing_files": data.info.get("captions_missing_files", 0),
    }


def summarise(data: ArrayDataset) -> dict:
    """What ``fm data describe`` shows: size, item shape, classes, captions, attributes and held-out pairs."""
    skipped = data.info.get("skipped") or {}
    return {
        "name": data.name,
        "split": data.split,
        "kind": data.kind,
        "items": len(data),
        "shape": list(data.shape),
        "num_classes": data.num_classes,
        "class_names": list(data.class_names) if data.class_names else None,
        "captions": caption_summary(data),
        "attributes": {name: list(names) for name, names in (data.attribute_names or {}).items()} or None,
        "held_out": data.info.get("held_out"),
        "skipped_files": skipped.get("count", 0),
    }
