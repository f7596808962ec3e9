"""Autoencoders as a plugin kind: the built-in one trained, saved, loaded, normalised, resumed and evaluated on tiny
solid-colour pictures; a diffusers AutoencoderKL from a local folder, offline; bad input in one line."""

import json
import math
import os
import shutil
import signal
import socket
import sys

import pytest
import torch
from helpers import assert_one_line_error, fm
from PIL import Image

from fmcli import hookimpl, registry
from fmcli.autoencoders.base import FILE, held_out_split, read_file, save_file
from fmcli.autoencoders.load import open_autoencoder
from fmcli.data.base import LoadOptions, to_model_space
from fmcli.data.resolve import load_data
from fmcli.errors import FMError
from fmcli.eval.autoencoder import AutoencoderEvalOptions, evaluate_autoencoder, psnr
from fmcli.plugins import pm
from fmcli.specs import ExtractorSpec
from fmcli.training.autoencoder import STATE, train_autoencoder
from fmcli.training.events import Callbacks, TrainingInterrupted

TINY = ["--image-size", 8, "--factor", 2, "--latent-channels", 3, "--width", 8, "--batch-size", 8]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing here may reach the network: any connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


PALETTE = [(220, 30, 30), (30, 30, 220), (30, 200, 60), (240, 240, 240)]


def solid_folder(root, count=40, size=8, mode="RGB"):
    """``count`` pictures of one colour each, four colours in turn (a flat folder: no classes)."""
    root.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (size, size), PALETTE[i % len(PALETTE)]).convert(mode).save(root / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return solid_folder(tmp_path_factory.mktemp("ae") / "colours")


@pytest.fixture(scope="module")
def trained(colours, tmp_path_factory):
    """A run of `fm autoencoder train` on the colours: 120 steps, a few seconds."""
    out = tmp_path_factory.mktemp("ae-run") / "run"
    result = fm("autoencoder", "train", colours, *TINY, "--steps", 120, "--lr", 1e-2, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["step"] == 120
    return out


def images(folder, size=8):
    return load_data(str(folder), LoadOptions(image_size=size)).data


def test_a_saved_autoencoder_loads_back_bit_for_bit(trained, tmp_path):
    loaded = open_autoencoder(trained)
    assert (loaded.name, loaded.factor, loaded.latent_channels, loaded.channels) == ("builtin", 2, 3, 3)
    batch = to_model_space(images(run_data(trained)))
    with torch.no_grad():
        first = loaded.reconstruct(batch)
        tensors, description = read_file(trained / FILE)
        save_file(tmp_path / "copy.safetensors", tensors, description)
        again = open_autoencoder(tmp_path / "copy.safetensors")
        assert torch.equal(again.reconstruct(batch), first)
        assert torch.equal(open_autoencoder(trained / FILE).encode(batch), loaded.encode(batch))
    assert again.digest == loaded.digest == description["digest"]
    assert loaded.encode(batch).shape == (len(batch), 3, 4, 4)


def run_data(run):
    return read_file(run / FILE)[1]["trained"]["options"]["data"]


def test_the_stored_statistics_make_training_latents_zero_mean_unit_std(trained):
    autoencoder = open_autoencoder(trained)
    data = images(run_data(trained))
    kept = held_out_split(len(data))[0]  # the items it trained on and measured
    with torch.no_grad():
        latents = autoencoder.encode(to_model_space(data[kept]))
    mean, std = latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(mean, torch.zeros(3), atol=1e-4), mean
    assert torch.allclose(std, torch.ones(3), atol=1e-3), std


def test_training_reconstructs_held_out_colours_an_untrained_one_cannot(trained):
    options = AutoencoderEvalOptions(fid=False, device="cpu")
    report = evaluate_autoencoder(str(trained), options)
    assert report["num_images"] == 4 and report["latent_shape"] == [3, 4, 4]
    assert report["psnr"]["mean"] > 24, report["psnr"]  # 27.3 dB when written
    untrained = trained.parent / "untrained"
    untrained.mkdir()
    tensors, description = read_file(trained / FILE)
    torch.manual_seed(0)
    fresh = registry.get_autoencoder("builtin").build(**description["config"])
    fresh.trained = description["trained"]
    save_file(untrained / FILE, fresh.state_dict(), fresh.export())
    assert evaluate_autoencoder(str(untrained), options)["psnr"]["mean"] < 15


def test_psnr_known_answers():
    real = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    off_by_ten = real + 10
    assert torch.allclose(psnr(real, off_by_ten), torch.full((2,), 10 * math.log10(255**2 / 100), dtype=torch.float64))
    assert psnr(real, real).tolist() == [100.0, 100.0]


class StopAt(Callbacks):
    """Sends this process SIGINT after ``step``: the run checkpoints and stops, as on Ctrl-C."""

    def __init__(self, step):
        self.step = step

    def on_step(self, step):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_resume_after_an_interruption_equals_an_uninterrupted_run(colours, tmp_path):
    options = {"data": str(colours), "image_size": 8, "factor": 2, "latent_channels": 2, "width": 4,
               "batch_size": 4, "steps": 8, "device": "cpu", "checkpoint_every": 3}  # fmt: skip
    whole = train_autoencoder(options, out=str(tmp_path / "whole"))
    with pytest.raises(TrainingInterrupted) as stopped:
        train_autoencoder(options, out=str(tmp_path / "parts"), callbacks=StopAt(5))
    assert stopped.value.step == 5
    resumed = train_autoencoder({}, resume=str(tmp_path / "parts"))
    assert whole.step == resumed.step == 8
    a, b = read_file(whole.checkpoint), read_file(resumed.checkpoint)
    assert a[1]["digest"] == b[1]["digest"]
    assert all(torch.equal(a[0][name], b[0][name]) for name in a[0])
    assert (tmp_path / "parts" / STATE).is_file()


def test_resuming_as_another_autoencoder_is_refused(trained):
    assert_one_line_error(fm("autoencoder", "train", "--resume", trained, "--factor", 4), "cannot resume", "factor")


# ---- FID through a feature-extractor plugin ---------------------------------------------------------------------


class MeanColour:
    """Features = the mean colour of each picture (3-d): FID is then a distance between colour distributions."""

    name, dim, identity, num_classes, info = "mean-colour", 3, "mean-colour", 0, {}

    def embed(self, batch):
        return batch.mean(dim=(2, 3)), None


@pytest.fixture
def mean_colour():
    class Plugin:
        @hookimpl
        def fm_register_feature_extractors(self, register):
            register(ExtractorSpec(name="mean-colour", description="tests", load=lambda context: MeanColour(), dim=3))

    registry.feature_extractors()
    plugin = Plugin()
    pm.register(plugin, name="mean-colour-plugin")
    registry.reset()
    yield
    pm.unregister(plugin)
    registry.reset()


def test_eval_reports_psnr_and_the_fid_of_reconstructions_naming_the_extractor(trained, mean_colour):
    result = fm("autoencoder", "eval", trained, "--extractor", "mean-colour", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["fid"]["extractor"]["name"] == "mean-colour" and report["fid"]["num_images"] == 4
    assert 0 <= report["fid"]["value"] < 0.05, report["fid"]  # colours come back nearly exactly
    assert report["autoencoder"]["digest"] == open_autoencoder(trained).digest
    text = fm("autoencoder", "eval", trained, "--extractor", "mean-colour").output
    assert "PSNR" in text and "mean-colour features" in text


# ---- bad input: one line, exit 1, nothing written ----------------------------------------------------------------


def test_an_image_size_the_factor_does_not_divide_is_one_line_and_writes_nothing(colours, tmp_path):
    out = tmp_path / "run"
    result = fm("autoencoder", "train", colours, "--image-size", 10, "--factor", 4, "--out", out)
    assert_one_line_error(result, "--image-size 10 is not a multiple of the downsampling factor 4", code=1)
    assert not out.exists()


def test_images_of_another_channel_count_or_size_are_one_line(trained, tmp_path):
    gray = solid_folder(tmp_path / "gray", count=12, mode="L")
    assert_one_line_error(fm("autoencoder", "eval", trained, "--data", gray, "--no-fid"), "3-channel", code=1)
    result = fm("autoencoder", "eval", trained, "--image-size", 16, "--no-fid")
    assert_one_line_error(result, "trained on 8x8 images", "16x16", code=1)


def test_a_damaged_autoencoder_file_is_one_line(trained, tmp_path):
    damaged = tmp_path / "damaged.safetensors"
    payload = bytearray((trained / FILE).read_bytes())
    payload[-5] ^= 0xFF  # one weight's bits
    damaged.write_bytes(bytes(payload))
    assert_one_line_error(fm("autoencoder", "eval", damaged, "--no-fid"), "damaged", "digest", code=1)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((trained / FILE).read_bytes()[:100])
    assert_one_line_error(fm("autoencoder", "eval", truncated, "--no-fid"), "not a readable autoencoder", code=1)
    assert_one_line_error(fm("autoencoder", "eval", tmp_path / "nothing", "--no-fid"), "no autoencoder at", code=1)


# ---- diffusers ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A tiny random AutoencoderKL (factor 2, 4 latent channels, scaling factor 0.5) saved with save_pretrained."""
    diffusers = pytest.importorskip("diffusers", reason="the diffusers autoencoder's tests need diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=16, scaling_factor=0.5,
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(directory)
    return directory


def test_a_diffusers_autoencoder_loads_offline_and_normalises_by_its_scaling_factor(vae_dir, colours):
    import diffusers

    autoencoder = open_autoencoder(f"diffusers:{vae_dir}")
    assert (autoencoder.name, autoencoder.factor, autoencoder.latent_channels) == ("diffusers", 2, 4)
    assert open_autoencoder(vae_dir).digest == autoencoder.digest  # a directory with config.json: diffusers
    reference = diffusers.AutoencoderKL.from_pretrained(vae_dir).eval()
    batch = to_model_space(images(colours))[:4]
    with torch.no_grad():
        latents = autoencoder.encode(batch)
        assert torch.allclose(latents, reference.encode(batch).latent_dist.mean * 0.5, atol=1e-6)
        assert torch.allclose(autoencoder.decode(latents), reference.decode(latents / 0.5).sample, atol=1e-6)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    result = fm(
        "autoencoder", "eval", f"diffusers:{vae_dir}", "--data", colours, "--image-size", 8, "--no-fid", "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["autoencoder"]["kind"] == "diffusers" and report["latent_shape"] == [4, 4, 4]


def test_a_diffusers_folder_without_weights_or_without_the_extra_is_one_line(vae_dir, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(fm("autoencoder", "eval", f"diffusers:{empty}", "--data", "x"), "no AutoencoderKL", code=1)
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(vae_dir / "config.json", config_only)
    assert_one_line_error(fm("autoencoder", "eval", config_only, "--data", "x"), "holds no AutoencoderKL weights")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(FMError, match=r"pip install 'fmcli\[diffusers\]'"):
        open_autoencoder(f"diffusers:{vae_dir}")


# ---- the plugin kind ---------------------------------------------------------------------------------------------


def test_fm_plugins_lists_both_autoencoders():
    rows = {row["name"]: row for row in json.loads(fm("plugins", "--json").output)}
    assert rows["fmcli.builtins.autoencoders"]["autoencoders"] == ["builtin", "diffusers"]
    rows = [line.split()[:3] for line in fm("plugins").output.splitlines()]
    assert ["autoencoder", "builtin", "fmcli"] in rows and ["autoencoder", "diffusers", "fmcli"] in rows
