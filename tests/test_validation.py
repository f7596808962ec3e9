"""Options validated once, where they are declared, and checkpoints checked before anything is allocated.

Each case is what a new user (or an attacker) tried: every one must end in one clear line and a
non-zero exit, before any model, noise or data is built.
"""

import dataclasses
import json
import resource

import numpy as np
import pytest
from helpers import assert_one_line_error, fm

from fmcli.cli._common import SAMPLING_OPTIONS
from fmcli.errors import FMError
from fmcli.io.checkpoint import read_checkpoint, save_checkpoint
from fmcli.sampling.options import SamplingOptions


def forged(tiny_checkpoint, tmp_path, *, model=None, data=None):
    """The tiny checkpoint with its real tensors and edited metadata."""
    tensors, meta = read_checkpoint(tiny_checkpoint)
    meta.model_config = {**meta.model_config, **(model or {})}
    meta.data = {**meta.data, **(data or {})}
    path = tmp_path / "forged.safetensors"
    save_checkpoint(path, tensors, meta)
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize(
    "edit, fragments",
    [
        ({"model": {"base_channels": 200_000}}, ["has shape", "needs", "metadata was edited"]),
        ({"model": {"channel_mults": [1, 2, 2]}}, ["do not match the model config"]),
        ({"data": {"shape": [1, 100_000, 100_000]}}, ["more than fm accepts"]),
        ({"data": {"shape": [1, 32, 32]}}, ["does not fit together", "[batch, 1, 28, 28]"]),
        ({"data": {"shape": "huge"}}, ["invalid data shape"]),
        ({"model": {"name": "no-such-model"}}, ["unknown model"]),
        ({"model": {"base_chanels": 8}}, ["unexpected keyword", "base_chanels"]),
    ],
)
def test_a_checkpoint_that_lies_about_its_model_is_refused_before_allocating(
    tiny_checkpoint, tmp_path, edit, fragments
):
    path = forged(tiny_checkpoint, tmp_path, **edit)
    before = peak_rss_mb()
    assert_one_line_error(fm("sample", path, "--num", "4", "--steps", "1", "--out", tmp_path / "x.png"), *fragments)
    # The 200,000-channel U-Net would need ~600 GB and the 100,000^2 image 40 GB: nothing near that was touched.
    assert peak_rss_mb() - before < 500
    assert not (tmp_path / "x.png").exists()


def test_sample_and_info_still_read_an_honest_checkpoint(tiny_checkpoint, tmp_path):
    """The checks above refuse lies, not honest files: the same commands on the unedited checkpoint work."""
    result = fm("sample", tiny_checkpoint, "--num", "2", "--steps", "1", "--out", tmp_path / "x.npz")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "x.npz")["images"].shape == (2, 28, 28, 1)
    info = json.loads(fm("info", tiny_checkpoint, "--json").output)
    assert info["step"] == 3 and info["data"]["shape"] == [1, 28, 28] and info["model_config"]["name"] == "unet"


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--rtol", "0", "--atol", "0"], ["--rtol", "between 0 and 1"]),
        (["--solver", "dopri5", "--atol", "-1"], ["--atol"]),
        (["--steps", "0"], ["--steps must be at least 1"]),
        (["--time-grid", "log"], ["--time-grid", "uniform, quadratic, cosine"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--cfg", "nan"], ["--cfg"]),
    ],
)
def test_sampling_options_are_refused_where_declared_by_every_command(tiny_checkpoint, tmp_path, args, fragments):
    for command, out in (("sample", "x.png"), ("animate", "x.gif")):
        assert_one_line_error(fm(command, tiny_checkpoint, *args, "--out", tmp_path / out), *fragments)
        assert not (tmp_path / out).exists()
    if "--steps" not in args:  # fm eval's --steps is a list (for sweeps), checked on its own
        assert_one_line_error(fm("eval", tiny_checkpoint, *args, "--num", "200"), *fragments)


@pytest.mark.parametrize("size", ["-3", "0", "7", "5000"])
def test_image_size_out_of_range_is_one_line_and_writes_nothing(tmp_path, monkeypatch, size):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pictures").mkdir()
    assert_one_line_error(fm("train", "./pictures", "--image-size", size), "--image-size must be between 8 and 1024")
    assert not (tmp_path / "runs").exists()


def test_eval_refuses_too_few_samples_before_any_work(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("FM_CACHE_DIR", str(tmp_path / "cache"))
    assert_one_line_error(fm("eval", tiny_checkpoint, "--num", "1"), "--num must be at least 2")
    assert_one_line_error(
        fm("eval", tiny_checkpoint, "--num", "50", "--extractor", "classifier"), "needs at least 129 samples"
    )
    assert not (tmp_path / "cache").exists()  # no classifier was trained, no reference features computed


def test_the_cli_declares_the_defaults_of_sampling_options():
    """The one table of sampling options and the dataclass agree on every field and default."""
    fields = {field.name: field.default for field in dataclasses.fields(SamplingOptions)}
    assert fields.keys() == SAMPLING_OPTIONS.keys()
    assert {name: default for name, (_, default) in SAMPLING_OPTIONS.items()} == fields


def test_sampling_options_validate_for_library_users_too():
    with pytest.raises(FMError, match="unknown solver 'huen'"):
        SamplingOptions(solver="huen")
    with pytest.raises(FMError, match="--rtol"):
        SamplingOptions(rtol=0.0)


def test_a_header_that_claims_exabytes_is_one_line_everywhere(tmp_path):
    """A safetensors file whose 8-byte length field claims 2^62 bytes: every command reads the header through
    the same bounded reader and says the same line, instead of a MemoryError from reading what it claims."""
    path = tmp_path / "lies.safetensors"
    path.write_bytes((2**62).to_bytes(8, "little") + b'{"__metadata__": {}}' + b"\0" * 64)
    message = "is not a readable safetensors checkpoint"
    for args in (
        ["sample", path, "--num", "2", "--out", tmp_path / "x.png"],
        ["train", "--resume", path, "--steps", "5"],
        ["info", path],
        ["distill", path, "--out", tmp_path / "student"],
    ):
        line = assert_one_line_error(fm(*args), message, "header length")
        assert "MemoryError" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lies.safetensors"]  # nothing written
