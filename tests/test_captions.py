"""Captions of image folders (metadata.jsonl, metadata.csv, NAME.txt, class names), their errors, the cache,
and ``fm data describe``. Each image is one flat colour, so a row's pixels say which file it came from."""

import json
from pathlib import Path

import pytest
from helpers import assert_one_line_error, fm
from PIL import Image

from fmcli.data.base import LoadOptions
from fmcli.data.folder import load_folder
from fmcli.data.resolve import load_data
from fmcli.errors import FMError

COLOURS = {"a": (250, 0, 0), "b": (0, 250, 0), "c": (0, 0, 250)}


def png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def images(root: Path, folder: str = "") -> Path:
    for name, colour in COLOURS.items():
        png(root / folder / f"{name}.png", colour)
    return root


def jsonl(path: Path, *rows: dict) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def by_name(data) -> dict[str, tuple[str, ...]]:
    """Each row's captions under the name of the file its pixels came from."""
    names = {colour: name for name, colour in COLOURS.items()}
    return {
        names[tuple(row[:, 4, 4].tolist())]: captions for row, captions in zip(data.data, data.captions, strict=True)
    }


def load(root: Path, cache: bool = True, **options):
    return load_folder(root, LoadOptions(image_size=8, cache=cache, **options))


@pytest.mark.parametrize("cache", [True, False])
def test_metadata_jsonl_strings_and_lists(tmp_path, cache):
    root = images(tmp_path / "set")
    jsonl(
        root / "metadata.jsonl",
        {"file_name": "b.png", "text": "  a green square  "},
        {"file_name": "./a.png", "text": ["a red one", "red, flat"]},
    )
    data = load(root, cache)
    assert by_name(data) == {"a": ("a red one", "red, flat"), "b": ("a green square",), "c": ()}
    assert data.info["captions"] == {"source": "metadata.jsonl", "captioned": 2, "total": 3}
    assert "captions_missing_files" not in data.info


def test_metadata_csv_with_a_caption_column(tmp_path):
    root = images(tmp_path / "set")
    (root / "metadata.csv").write_text(
        'file_name,caption,text\nc.png,"blue, very blue",x\na.png,red,y\n\n', encoding="utf-8"
    )
    data = load(root, caption_column="caption")
    assert by_name(data) == {"a": ("red",), "b": (), "c": ("blue, very blue",)}
    assert data.info["captions"]["source"] == "metadata.csv"
    assert by_name(load(root))["c"] == ("x",)  # the default column, text
    with pytest.raises(FMError, match=r"metadata.csv:1: no column 'prompt'; the columns are: file_name, caption, text"):
        load(root, caption_column="prompt")


def test_text_files_beside_images(tmp_path):
    root = images(tmp_path / "set")
    (root / "a.txt").write_text("  un café rouge\n\n", encoding="utf-8")
    (root / "c.txt").write_text("blue", encoding="utf-8")
    (root / "notes.txt").write_text("no image is called notes", encoding="utf-8")
    data = load(root)
    assert by_name(data) == {"a": ("un café rouge",), "b": (), "c": ("blue",)}
    assert data.info["captions"] == {"source": "txt", "captioned": 2, "total": 3}


def test_metadata_in_split_folders_is_relative_to_its_folder(tmp_path):
    root = tmp_path / "set"
    png(root / "train" / "a.png", COLOURS["a"])
    png(root / "train" / "deep" / "b.png", COLOURS["b"])
    png(root / "test" / "c.png", COLOURS["c"])
    jsonl(
        root / "train" / "metadata.jsonl",
        {"file_name": "a.png", "text": "red"},
        {"file_name": "deep/b.png", "text": "green"},
    )
    jsonl(root / "test" / "metadata.jsonl", {"file_name": "c.png", "text": "blue"})
    jsonl(root / "metadata.jsonl", {"file_name": "train/a.png", "text": "overridden by train/metadata.jsonl"})
    data = load(root)
    assert by_name(data) == {"a": ("red",), "b": ("green",), "c": ("blue",)}


def test_missing_files_are_counted_and_all_missing_is_refused(tmp_path):
    root = images(tmp_path / "set")
    rows = [{"file_name": n, "text": n} for n in ("a.png", "ghost.png", "../a.png", "b.jpg")]
    jsonl(root / "metadata.jsonl", *rows)
    data = load(root)
    assert by_name(data)["a"] == ("a.png",) and data.info["captions_missing_files"] == 3
    assert data.info["captions"]["captioned"] == 1
    jsonl(root / "metadata.jsonl", *rows[1:])
    with pytest.raises(FMError, match=r"none of the 3 files metadata.jsonl names is an image under .* \(e.g. ghost"):
        load(root)


def test_skipped_files_keep_the_captions_of_the_other_rows_aligned(tmp_path):
    root = images(tmp_path / "set")
    (root / "b2.png").write_bytes(b"not a png at all")  # sorted between b.png and c.png: its row is missing
    jsonl(root / "metadata.jsonl", *({"file_name": f"{n}.png", "text": n} for n in ("a", "b", "b2", "c")))
    for cache in (True, False, True):  # built, in memory, mapped
        data = load(root, cache)
        assert by_name(data) == {"a": ("a",), "b": ("b",), "c": ("c",)} and data.info["skipped"]["count"] == 1


def test_a_cache_entry_without_the_skipped_files_is_decoded_again(tmp_path, monkeypatch):
    """Entries written before fm listed every skipped file cannot match rows to captions: decode in memory."""
    from fmcli.data import cache

    root = images(tmp_path / "set")
    (root / "b2.png").write_bytes(b"not a png at all")
    jsonl(root / "metadata.jsonl", *({"file_name": f"{n}.png", "text": n} for n in ("a", "b", "b2", "c")))
    load_cached = cache.load_cached

    def old_entry(*args, **kwargs):
        data = load_cached(*args, **kwargs)
        del data.info["skipped"]["files"]
        return data

    monkeypatch.setattr(cache, "load_cached", old_entry)
    data = load(root)
    assert by_name(data) == {"a": ("a",), "b": ("b",), "c": ("c",)} and "cache" not in data.info


OK = b'{"file_name": "a.png", "text": "ok"}\n'


@pytest.mark.parametrize(
    "name, contents, message",
    [
        ("a.txt", b"caf\xe9", r"a.txt:1: not UTF-8 text \(byte 0xe9\)"),
        ("a.txt", b" \n ", r"a.txt:1: empty caption"),
        ("metadata.jsonl", OK + b'{"file_name": "b.png", "text": "\xff"}\n', r"metadata.jsonl:2: not UTF-8"),
        ("metadata.jsonl", OK + b'{"file_name": "b.png", "text": " "}\n', r"metadata.jsonl:2: empty caption"),
        ("metadata.jsonl", b'{"file_name": "a.png", "text": []}\n', r"metadata.jsonl:1: empty caption list"),
        ("metadata.jsonl", b'{"file_name": "a.png", "text": 7}\n', r"metadata.jsonl:1: a caption is text"),
        ("metadata.jsonl", OK + b'{"file_name": "b.png",\n', r"metadata.jsonl:2: not valid JSON"),
        ("metadata.jsonl", b'["a.png", "ok"]\n', r"metadata.jsonl:1: each line is one JSON object"),
        ("metadata.jsonl", b'{"name": "a.png", "text": "ok"}\n', r"metadata.jsonl:1: no column 'file_name'"),
        ("metadata.jsonl", b'{"file_name": "a.png", "prompt": "ok"}\n', r":1: no column 'text'; the columns are: fil"),
        ("metadata.jsonl", b"", r"metadata.jsonl lists no image"),
        ("metadata.csv", b'file_name,text\na.png,ok\nb.png,"unclosed\n', r"metadata.csv:3: not valid CSV"),
        ("metadata.csv", b"file_name,text\na.png,ok,extra\n", r"metadata.csv:2: 3 fields where the header has 2"),
        ("metadata.csv", b"file_name,text\na.png,\n", r"metadata.csv:2: empty caption"),
    ],
)  # fmt: skip
def test_bad_caption_files_are_one_line_and_nothing_is_cached(tmp_path, monkeypatch, name, contents, message):
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("FM_CACHE_DIR", str(cache_dir))
    root = images(tmp_path / "set")
    (root / name).write_bytes(contents)
    with pytest.raises(FMError, match=message) as caught:
        load(root)
    assert "\n" not in str(caught.value) and str(root / name) in str(caught.value)
    assert not cache_dir.exists()  # refused before any pixel was decoded


def test_two_metadata_formats_are_refused(tmp_path):
    root = images(tmp_path / "set")
    jsonl(root / "metadata.jsonl", {"file_name": "a.png", "text": "red"})
    (root / "metadata.csv").write_text("file_name,text\na.png,red\n")
    with pytest.raises(FMError, match="both metadata.jsonl and metadata.csv"):
        load(root)


def test_caption_modes_none_and_classes(tmp_path):
    root = tmp_path / "pets"
    png(root / "golden_retriever" / "a.png", COLOURS["a"])
    png(root / "tabby-cat" / "b.png", COLOURS["b"])
    png(root / "tabby-cat" / "c.png", COLOURS["c"])
    (root / "tabby-cat" / "b.txt").write_text("a cat")
    assert by_name(load(root)) == {"a": (), "b": ("a cat",), "c": ()}
    data = load(root, captions="classes")
    assert by_name(data) == {"a": ("golden retriever",), "b": ("tabby cat",), "c": ("tabby cat",)}
    assert data.info["captions"] == {"source": "classes", "captioned": 3, "total": 3}
    none = load(root, captions="none")
    assert none.captions is None and "captions" not in none.info
    with pytest.raises(FMError, match="captions from classes need class sub-folders"):
        load(images(tmp_path / "flat"), captions="classes")
    moons = load_data("moons", LoadOptions(num_samples=8, captions="classes"))
    names = [name.replace("_", " ").replace("-", " ") for name in moons.class_names]
    assert moons.captions == [(names[label],) for label in moons.labels.tolist()]
    with pytest.raises(FMError, match="checkerboard has no classes"):
        load_data("checkerboard", LoadOptions(num_samples=8, captions="classes"))


def test_load_options_are_checked():
    with pytest.raises(FMError, match="captions must be one of auto, none, classes, not 'all'"):
        LoadOptions(captions="all")
    with pytest.raises(FMError, match="the caption column needs a name"):
        LoadOptions(caption_column=" ")


def test_an_edited_caption_file_is_never_served_from_the_cache(tmp_path):
    root = images(tmp_path / "set")
    jsonl(root / "metadata.jsonl", {"file_name": "a.png", "text": "old"})
    first = load(root)
    assert first.info["cache"]["status"] == "built" and by_name(first)["a"] == ("old",)
    jsonl(root / "metadata.jsonl", {"file_name": "a.png", "text": "new"}, {"file_name": "c.png", "text": "blue"})
    second = load(root)
    assert second.info["cache"]["status"] == "mapped"  # the pixels come from the cache, the captions do not
    assert by_name(second) == {"a": ("new",), "b": (), "c": ("blue",)}
    (root / "metadata.jsonl").unlink()
    (root / "b.txt").write_text("green")
    assert by_name(load(root)) == {"a": (), "b": ("green",), "c": ()}


def test_fm_data_describe_text_and_json(tmp_path):
    root = images(tmp_path / "set")
    long_caption = "a very long caption " * 10
    jsonl(
        root / "metadata.jsonl",
        {"file_name": "a.png", "text": ["Red RED red!", long_caption.strip()]},
        {"file_name": "b.png", "text": "green_square 2"},
        {"file_name": "gone.png", "text": "nothing"},
    )
    result = fm("data", "describe", root)
    assert result.exit_code == 0, result.output
    assert f"{root} (train): 3 images of 3x32x32" in result.output  # loaded as fm train would: 32 px
    assert "captions: 2 of 3 items captioned (from metadata.jsonl); 0-2 per item, mean 1.00" in result.output
    assert "vocabulary: 8 distinct words" in result.output  # red a very long caption green square 2 (_ splits)
    assert 'longest caption: 40 words: "a very long caption a very long' in result.output and '..."' in result.output
    assert "metadata rows naming no image here: 1" in result.output
    summary = json.loads(fm("data", "describe", root, "--json").stdout)
    assert summary["items"] == 3 and summary["shape"] == [3, 32, 32] and summary["held_out"] is None
    assert summary["captions"]["longest"] == {"words": 40, "text": long_caption.strip()}
    assert summary["captions"]["per_item"] == {"min": 0, "mean": 1.0, "max": 2}
    off = json.loads(fm("data", "describe", root, "--json", "--captions", "none").stdout)
    assert off["captions"] is None


def test_fm_data_describe_errors_are_one_line(tmp_path):
    root = images(tmp_path / "set")
    jsonl(root / "metadata.jsonl", {"file_name": "a.png", "caption": "red"})
    assert_one_line_error(fm("data", "describe", root), "no column 'text'", "--caption-column")
    assert "captioned" in fm("data", "describe", root, "--caption-column", "caption").output
    assert_one_line_error(fm("data", "describe", root, "--captions", "some"), "captions must be one of")
    assert_one_line_error(fm("data", "describe", tmp_path / "missing"), "no folder at")
    assert_one_line_error(fm("data", "describe", "moons", "--split", "val"), "has no split 'val'")
