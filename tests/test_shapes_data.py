"""The built-in ``shapes`` data set: deterministic, balanced, held-out pairs, captions that say what the pixels show,
``fm data describe shapes``, and bench/procedural.py drawing its folders with the same code."""

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fm

from fmcli import registry
from fmcli.data.base import LoadOptions
from fmcli.data.resolve import load_data
from fmcli.data.shapes import BACKGROUNDS, COLOURS, HELD_OUT, SHAPES, load_shapes
from fmcli.errors import FMError

REPO = Path(__file__).resolve().parents[1]


def shapes(split: str = "train", num: int | None = 300, **options):
    return load_data("shapes", LoadOptions(split=split, num_samples=num, **options))


def pairs(data) -> set[tuple[str, str]]:
    colours, shape_codes = data.attributes["colour"].tolist(), data.attributes["shape"].tolist()
    return {(list(COLOURS)[c], SHAPES[s]) for c, s in zip(colours, shape_codes, strict=True)}


def test_deterministic_by_seed_and_split():
    first, again = shapes(seed=3), shapes(seed=3)
    assert torch.equal(first.data, again.data) and first.captions == again.captions
    assert torch.equal(first.labels, again.labels)
    assert not torch.equal(first.data, shapes(seed=4).data)
    assert not torch.equal(first.data, shapes("test", seed=3).data)
    assert first.data.shape == (300, 3, 32, 32) and first.data.dtype == torch.uint8
    assert first.class_names == list(SHAPES) and torch.equal(first.labels, first.attributes["shape"])


def test_held_out_pairs_are_absent_from_train_and_present_in_test():
    train, test = shapes(num=None), shapes("test", num=None)  # the default sizes
    assert (len(train), len(test)) == (8000, 2000)
    held = {tuple(pair) for pair in train.info["held_out"]}
    assert held == set(HELD_OUT) and train.info["held_out"] == test.info["held_out"]
    assert not held & pairs(train)
    assert held <= pairs(test) and len(pairs(test)) == len(COLOURS) * len(SHAPES)
    assert {shape for _, shape in pairs(train)} == set(SHAPES)  # every shape and colour is still trained on
    assert {colour for colour, _ in pairs(train)} == set(COLOURS)
    counts = Counter(train.labels.tolist())  # one pair per shape is held out: the shapes stay balanced
    assert all(abs(count - 1600) <= 10 for count in counts.values()), counts


def test_captions_name_the_shape_colour_and_background_in_several_phrasings():
    data = shapes()
    names = data.attribute_names
    assert names == {"shape": list(SHAPES), "colour": list(COLOURS), "background": list(BACKGROUNDS)}
    phrasings = set()
    for i, captions in enumerate(data.captions):
        assert 2 <= len(captions) <= 4 and len(set(captions)) == len(captions)
        shape = names["shape"][data.labels[i]]
        colour = names["colour"][data.attributes["colour"][i]]
        background = names["background"][data.attributes["background"][i]]
        for caption in captions:
            words = caption.replace(",", "").split()
            assert shape in words and colour in words and background in words, caption
            phrasings.add(caption.replace(shape, "S").replace(colour, "C").replace(background, "B"))
    assert len(phrasings) >= 6
    assert any(caption.startswith("an orange") for captions in data.captions for caption in captions)
    assert data.info["captions"] == {"source": "built-in", "captioned": 300, "total": 300}


def nearest(rgb: np.ndarray, palette: dict) -> tuple[str, float]:
    distances = {name: float(np.abs(rgb - np.array(value)).max()) for name, value in palette.items()}
    name = min(distances, key=distances.get)
    return name, distances[name]


def test_the_pixels_show_what_the_captions_say():
    data = shapes(num=120)
    for i, image in enumerate(data.data.permute(0, 2, 3, 1).numpy().astype(int)):
        colour = data.attribute_names["colour"][data.attributes["colour"][i]]
        background = data.attribute_names["background"][data.attributes["background"][i]]
        corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert (corners == corners[0]).all()  # the shape stays inside the frame
        assert nearest(corners[0], BACKGROUNDS) == (background, pytest.approx(0, abs=8))
        pixels = image.reshape(-1, 3)
        foreground = pixels[np.abs(pixels - corners[0]).max(1) > 40]
        values, counts = np.unique(foreground, axis=0, return_counts=True)
        found, distance = nearest(values[counts.argmax()], COLOURS)  # the most common non-background colour
        assert found == colour and distance <= 15, (i, colour, values[counts.argmax()])
        # a ring has the background at its centre; the other shapes are filled there
        ys, xs = np.nonzero(np.abs(image - corners[0]).max(2) > 40)
        centre = image[round(ys.mean()), round(xs.mean())]
        ring = SHAPES[data.labels[i]] == "ring"
        assert (np.abs(centre - corners[0]).max() <= 40) == ring, (i, SHAPES[data.labels[i]])


def test_size_channels_and_bad_options():
    assert shapes(num=4, image_size=16).data.shape == (4, 3, 16, 16)
    assert shapes(num=4, channels=1).data.shape == (4, 1, 32, 32)
    assert shapes(num=20, captions="classes").captions == [(SHAPES[k],) for k in shapes(num=20).labels.tolist()]
    assert shapes(num=4, captions="none").captions is None
    with pytest.raises(FMError, match="has no split 'val'"):
        shapes("val")
    with pytest.raises(FMError, match="num_samples must be positive"):
        shapes(num=0)
    with pytest.raises(FMError, match="leave a colour or a shape out"):
        load_shapes(LoadOptions(num_samples=4), held_out=tuple(("red", s) for s in SHAPES))
    none_held = load_shapes(LoadOptions(num_samples=900), held_out=())
    assert len(pairs(none_held)) == 30 and none_held.info["held_out"] == []


def test_registered_lazily_with_flips():
    spec = registry.datasets()["shapes"]
    assert spec.splits == ("train", "test") and spec.kind == "image" and spec.flip_invariant


def test_fm_data_describe_shapes():
    result = fm("data", "describe", "shapes", "--split", "test")
    assert result.exit_code == 0, result.output
    assert "shapes (test): 2000 images of 3x32x32" in result.output
    assert "classes: 5 (circle, square, triangle, cross, ring)" in result.output
    assert "captions: 2000 of 2000 items captioned (from built-in); 2-4 per item" in result.output
    assert "held out of train: purple circle, orange square, red triangle, green cross, blue ring" in result.output
    summary = json.loads(fm("data", "describe", "shapes", "--split", "test", "--json").stdout)
    assert summary["held_out"] == [list(pair) for pair in HELD_OUT]
    assert summary["attributes"]["colour"] == list(COLOURS)
    words = {w for captions in shapes("test", None).captions for c in captions for w in c.replace(",", "").split()}
    assert summary["captions"]["vocabulary"] == len(words)


def test_bench_procedural_draws_its_folder_with_the_shared_code(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("procedural", REPO / "bench" / "procedural.py")
    procedural = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(procedural)
    monkeypatch.setattr(sys, "argv", ["procedural.py", str(tmp_path / "out"), "--train", "10", "--test", "5"])
    assert procedural.main() == 0
    train = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert len(train) == 15 and "train/circle/00000.png" in train and "test/ring/00004.png" in train
    first = (tmp_path / "out" / "train" / "circle" / "00000.png").read_bytes()
    procedural.write_folder(tmp_path / "again", 10, 32, 0)
    assert (tmp_path / "again" / "circle" / "00000.png").read_bytes() == first  # seeded
