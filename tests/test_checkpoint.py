"""Checkpoints: round trips, self-description, and clear errors for bad files."""

import json

import pytest
import torch
from safetensors.torch import save_file

from fmcli.errors import FMError
from fmcli.io.checkpoint import FORMAT_VERSION, load_checkpoint, read_checkpoint
from fmcli.sampling.generate import generate
from fmcli.sampling.options import SamplingOptions


def test_round_trip_gives_identical_outputs(tiny_checkpoint):
    tensors, meta = read_checkpoint(tiny_checkpoint)
    assert meta.format_version == FORMAT_VERSION
    assert meta.data["name"] == "mnist-mini" and meta.data["shape"] == [1, 28, 28]
    assert meta.num_classes == 10 and meta.class_names[6] == "6"
    assert meta.step == 3 and meta.train_config["steps"] == 3
    loaded = load_checkpoint(tiny_checkpoint)
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, ema[name])
    # the same weights in a freshly built model give the same velocity
    again = load_checkpoint(tiny_checkpoint)
    x, t, y = torch.randn(4, 1, 28, 28), torch.rand(4), torch.tensor([0, 3, 6, 10])
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t, y), again.model(x, t, y))


def test_raw_and_ema_weights_differ_after_training(tiny_checkpoint):
    raw = load_checkpoint(tiny_checkpoint, weights="raw").model.state_dict()
    ema = load_checkpoint(tiny_checkpoint, weights="ema").model.state_dict()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)


def test_sampling_is_deterministic(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint)
    classes = torch.tensor([1, 6, 6])
    first = generate(loaded, SamplingOptions(solver="heun", steps=4, seed=7), num=3, condition=classes)
    second = generate(loaded, SamplingOptions(solver="heun", steps=4, seed=7), num=3, condition=classes)
    other = generate(loaded, SamplingOptions(solver="heun", steps=4, seed=8), num=3, condition=classes)
    assert torch.equal(first.samples, second.samples)
    assert not torch.equal(first.samples, other.samples)
    assert first.nfe == 8


def test_missing_truncated_foreign_and_future_files(tmp_path, tiny_checkpoint):
    with pytest.raises(FMError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    with pytest.raises(FMError, match="not a readable safetensors"):
        read_checkpoint(truncated)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(FMError, match="not a readable safetensors"):
        read_checkpoint(text)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(FMError, match="not an fm checkpoint"):
        read_checkpoint(foreign)
    tensors, meta = read_checkpoint(tiny_checkpoint)
    future = tmp_path / "future.safetensors"
    raw = {"format": "fmcli-checkpoint", "format_version": json.dumps(FORMAT_VERSION + 1)}
    save_file({"ema.w": torch.zeros(2)}, future, metadata=raw)
    with pytest.raises(FMError, match="format version"):
        read_checkpoint(future)


def test_a_run_folder_reads_its_last_checkpoint(tiny_checkpoint):
    _, meta = read_checkpoint(tiny_checkpoint.parent)
    assert meta.step == 3
