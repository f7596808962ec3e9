"""Flow matching in an autoencoder's latent space, on tiny pictures: training on latents encoded once and cached,
checkpoints that name their autoencoder by digest, transparent decoding (fm sample, fm animate, the Python API),
the auto choice of space with the autoencoder trained first (and reused), exact resume, and bad input in one line."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_UNET, train_tiny
from helpers import assert_identical, assert_one_line_error, fm
from PIL import Image

import fmcli
from fmcli.autoencoders.base import FILE
from fmcli.autoencoders.load import open_autoencoder
from fmcli.data.base import LoadOptions, to_model_space
from fmcli.data.latents import encode_dataset
from fmcli.data.resolve import load_data
from fmcli.io.checkpoint import load_checkpoint, read_header
from fmcli.models.presets import default_model_config
from fmcli.sampling.generate import decode_latents, generate
from fmcli.sampling.options import SamplingOptions
from fmcli.training import latent
from fmcli.training.distill import distill_overrides
from fmcli.training.loop import train

SIZE = 16
AE = ["--image-size", SIZE, "--factor", 4, "--latent-channels", 3, "--width", 8, "--batch-size", 8, "--lr", 1e-2]


def class_folder(root):
    """Two classes of 16 px pictures: a red square on black, a blue disc on white (12 each)."""
    for name, draw in (("red", _square), ("blue", _disc)):
        (root / name).mkdir(parents=True)
        for i in range(12):
            draw(i).save(root / name / f"{i:02d}.png")
    return root


def _square(i):
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    pixels[3 + i % 4 : 10 + i % 4, 4:12] = (220, 30, 30)
    return Image.fromarray(pixels)


def _disc(i):
    y, x = np.mgrid[:SIZE, :SIZE]
    inside = (y - 8) ** 2 + (x - 6 - i % 4) ** 2 < 16
    pixels = np.full((SIZE, SIZE, 3), 250, np.uint8)
    pixels[inside] = (30, 30, 220)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return class_folder(tmp_path_factory.mktemp("latent") / "pictures")


@pytest.fixture(scope="module")
def autoencoder_run(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("latent-ae") / "ae"
    result = fm("autoencoder", "train", folder, *AE, "--steps", 40, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    return out


def latent_options(folder, autoencoder, **overrides):
    return dict(data=str(folder), image_size=SIZE, autoencoder=str(autoencoder), model=TINY_UNET, batch_size=8,
                cache=False) | overrides  # fmt: skip


@pytest.fixture(scope="module")
def latent_run(folder, autoencoder_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("latent-run") / "run"
    train_tiny(out, **latent_options(folder, autoencoder_run, steps=4))
    return out


def test_a_latent_checkpoint_names_its_autoencoder_and_its_samples_come_decoded(latent_run, autoencoder_run):
    shapes, meta = read_header(latent_run / "last.safetensors")
    autoencoder = open_autoencoder(autoencoder_run)
    assert meta.data["kind"] == "latent" and meta.shape == (3, 4, 4) and meta.image_shape == (3, SIZE, SIZE)
    assert meta.autoencoder["digest"] == autoencoder.digest and meta.autoencoder["kind"] == "builtin"
    assert meta.model_config["in_channels"] == 3  # the velocity network sees latents
    loaded = load_checkpoint(latent_run)
    options = SamplingOptions(solver="heun", steps=4, seed=3)
    pictures = generate(loaded, options, num=5, condition=torch.tensor([0, 1, 0, 1, 1]))
    latents = generate(loaded, options, num=5, condition=torch.tensor([0, 1, 0, 1, 1]), decode=False)
    assert latents.samples.shape == (5, 3, 4, 4) and pictures.samples.shape == (5, 3, SIZE, SIZE)
    assert torch.equal(pictures.samples, decode_latents(loaded.autoencoder, latents.samples))
    samples = fmcli.load(latent_run).sample(5, classes=[0, 1, 0, 1, 1], solver="heun", steps=4, seed=3)
    assert samples.images.shape == (5, SIZE, SIZE, 3)
    assert np.array_equal(samples.images, pictures.samples.clamp(-1, 1).add(1).mul(127.5).round().byte()
                          .permute(0, 2, 3, 1).numpy())  # fmt: skip


def test_fm_sample_and_fm_animate_write_pictures_of_a_latent_model(latent_run, tmp_path):
    result = fm("sample", latent_run, "--class", "red", "--num", 4, "--steps", 3, "--out", tmp_path / "red.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "red.png").size[0] >= 2 * SIZE
    result = fm("sample", latent_run, "--num", 3, "--steps", 3, "--out", tmp_path / "each")
    assert result.exit_code == 0, result.output
    assert {Image.open(p).size for p in (tmp_path / "each").rglob("*.png")} == {(SIZE, SIZE)}
    result = fm("animate", latent_run, "--class", "blue", "--num", 2, "--frames", 4, "--steps", 4, "--show", "both",
                "--out", tmp_path / "blue.gif")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "blue.gif").n_frames >= 4


def test_latents_are_encoded_once_cached_and_mirrored_by_encoding_the_mirror(folder, autoencoder_run):
    autoencoder = open_autoencoder(autoencoder_run)
    data = load_data(str(folder), LoadOptions(image_size=SIZE))
    first = encode_dataset(data, autoencoder, mirrored=True)
    again = encode_dataset(data, autoencoder, mirrored=True)
    assert not first.info["cache_hit"] and again.info["cache_hit"]
    assert first.kind == "latent" and first.data.dtype == torch.float16 and first.shape == (3, 4, 4)
    with torch.no_grad():
        direct = autoencoder.encode(to_model_space(data.data))
        mirror = autoencoder.encode(to_model_space(data.data).flip(-1))
    assert torch.equal(again.data, direct.half()) and torch.equal(again.mirrored, mirror.half())
    assert not torch.equal(again.mirrored, again.data.flip(-1))  # a flipped latent is not the mirror's latent
    assert torch.equal(first.labels, data.labels)


def test_a_latent_run_resumes_bit_for_bit(folder, autoencoder_run, tmp_path):
    options = latent_options(folder, autoencoder_run, hflip=True, cache=True, lr_schedule="constant", warmup_steps=1)
    whole = train_tiny(tmp_path / "whole", **options, steps=6)
    train_tiny(tmp_path / "half", **options, steps=3)
    resumed = train({"steps": 6}, resume=str(tmp_path / "half")).checkpoint
    assert_identical(whole, resumed)


def test_auto_trains_the_autoencoder_first_then_reuses_it_and_the_run_folder_can_move(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(latent.LATENT_FROM, "cpu", SIZE)  # the 128 px rule, at 16 px
    monkeypatch.setattr(latent, "AUTOENCODER_STEPS", 30)
    monkeypatch.setattr(latent, "autoencoder_preset", lambda size: {"factor": 4, "latent_channels": 3, "width": 8})
    first = train_tiny(tmp_path / "first", data=str(folder), image_size=SIZE, model=TINY_UNET, batch_size=8)
    config = json.loads((tmp_path / "first" / "config.json").read_text())
    assert config["autoencoder"] == f"autoencoder/{FILE}" and config["decisions"]["autoencoder"].startswith("latent")
    assert "trained for 3,000" not in config["decisions"]["autoencoder"] and "(30 steps)" in config["decisions"][
        "autoencoder"]  # fmt: skip
    assert read_header(first)[1].autoencoder["path"] == f"autoencoder/{FILE}"
    assert config["time_sampling"] == "logit-normal" and "latent space" in config["decisions"]["time_sampling"]
    shutil.move(tmp_path / "first", tmp_path / "moved")
    assert fmcli.load(tmp_path / "moved").sample(2, seed=1, steps=2).images.shape == (2, SIZE, SIZE, 3)
    train_tiny(tmp_path / "second", data=str(folder), image_size=SIZE, model=TINY_UNET, batch_size=8)
    decision = json.loads((tmp_path / "second" / "config.json").read_text())["decisions"]["autoencoder"]
    assert "reused" in decision
    assert (tmp_path / "second" / "autoencoder" / FILE).read_bytes() == (
        tmp_path / "moved" / "autoencoder" / FILE).read_bytes()  # fmt: skip
    small = train_tiny(tmp_path / "small", data=str(folder), image_size=8, model=TINY_UNET, batch_size=8)
    assert read_header(small)[1].autoencoder is None  # below the size: pixels
    small_config = json.loads((tmp_path / "small" / "config.json").read_text())
    assert small_config["decisions"]["autoencoder"].startswith("none") and small_config["time_sampling"] == "uniform"
    assert "time_sampling" not in small_config["decisions"]


def test_latent_space_takes_logit_normal_times_unless_told_otherwise(folder, autoencoder_run, tmp_path):
    """Measured on the 128 px latent run (defaults.LATENT_DEFAULTS); the user's choice, a TOML file's and the
    objective's own default win; a run that turns out to be in pixels after all (point data) keeps uniform times."""
    from fmcli.training.config import resolve
    from fmcli.training.defaults import LATENT_DEFAULTS

    given = {"data": str(folder), "autoencoder": str(autoencoder_run)}
    config = resolve(given)
    assert config.time_sampling == "logit-normal" and config.decisions["time_sampling"] == LATENT_DEFAULTS[1]
    mine = resolve(given | {"time_sampling": "uniform"})
    assert mine.time_sampling == "uniform" and "time_sampling" not in mine.decisions
    (tmp_path / "run.toml").write_text('time_sampling = "uniform"\n')
    assert resolve(given, tmp_path / "run.toml").time_sampling == "uniform"
    meanflow = resolve(given | {"objective": "meanflow"})
    assert (meanflow.time_sampling, meanflow.time_mean) == ("logit-normal", -0.4)
    assert "MeanFlow" in meanflow.decisions["time_sampling"]
    assert resolve({"data": str(folder), "image_size": 64}).time_sampling == "uniform"  # auto, below 128 px: pixels
    auto = resolve({"data": "moons", "image_size": 128})  # auto at 128 px decides before it sees point data...
    assert auto.time_sampling == "logit-normal"
    points = latent.plan_space(auto, tmp_path / "run", "cpu", lambda: load_data("moons", LoadOptions()), None, 0.0)
    assert points.autoencoder == "none" and points.time_sampling == "uniform"  # ...and undoes it when it does
    assert "time_sampling" not in points.decisions


def test_a_run_stopped_while_its_autoencoder_trained_continues_it(folder, tmp_path, monkeypatch):
    from fmcli.training.autoencoder import train_autoencoder

    monkeypatch.setitem(latent.LATENT_FROM, "cpu", SIZE)
    monkeypatch.setattr(latent, "AUTOENCODER_STEPS", 30)
    monkeypatch.setattr(latent, "autoencoder_preset", lambda size: {"factor": 4, "latent_channels": 3, "width": 8})
    monkeypatch.setenv("FM_CACHE_DIR", str(tmp_path / "cache"))  # no autoencoder of an earlier test to reuse
    run = tmp_path / "run"
    options = {"data": str(folder), "image_size": SIZE, "factor": 4, "latent_channels": 3, "width": 8, "steps": 12}
    train_autoencoder(options, out=str(run / "autoencoder"))  # as if the run had stopped at step 12 of its 30
    train_tiny(run, data=str(folder), image_size=SIZE, model=TINY_UNET, batch_size=8)
    decision = json.loads((run / "config.json").read_text())["decisions"]["autoencoder"]
    assert "(30 steps)" in decision and read_header(run / "last.safetensors")[1].autoencoder is not None


def test_a_missing_or_changed_autoencoder_is_one_line(folder, autoencoder_run, tmp_path):
    copy = tmp_path / "ae"
    shutil.copytree(autoencoder_run, copy)
    run = tmp_path / "run"
    train_tiny(run, **latent_options(folder, copy, steps=2))
    (copy / FILE).unlink()
    assert_one_line_error(fm("sample", run, "--num", 1, "--out", tmp_path / "x.png"), "which is missing")
    result = fm("autoencoder", "train", folder, *AE, "--steps", 2, "--seed", 5, "--out", tmp_path / "other")
    assert result.exit_code == 0, result.output
    shutil.copy(tmp_path / "other" / FILE, copy / FILE)
    assert_one_line_error(fm("sample", run, "--num", 1, "--out", tmp_path / "x.png"), "now holds another one")
    assert not (tmp_path / "x.png").exists()


def test_bad_input_for_latent_training_is_one_line_and_writes_nothing(folder, autoencoder_run, tmp_path):
    cases = [
        (["moons"], "encodes images"),
        ([folder, "--image-size", 20], "trained on 16x16"),
        ([folder, "--image-size", SIZE, "--channels", 1], "3-channel"),
        ([folder, "--image-size", SIZE, "--autoencoder", tmp_path / "nothing"], "no autoencoder at"),
    ]
    for index, (args, fragment) in enumerate(cases):
        out = tmp_path / f"run{index}"
        extra = [] if "--autoencoder" in map(str, args) else ["--autoencoder", autoencoder_run]
        result = fm("train", *args, *extra, "--steps", 1, "--out", out)
        assert_one_line_error(result, fragment)
        assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_a_student_distils_in_its_teachers_latent_space(latent_run, autoencoder_run):
    overrides = distill_overrides(latent_run / "last.safetensors", {})
    assert overrides["autoencoder"] == str((autoencoder_run / FILE).resolve())
    assert overrides["objective"] == "meanflow"


def test_a_latent_model_tunes_its_grid_on_latents_and_distils_into_a_latent_student(latent_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(latent_run, copy)  # fm tune writes beside the checkpoint; the module's run stays as it was
    fast = ("--pool", "8", "--iterations", "2", "--reference-steps", "4", "--device", "cpu")
    result = fm("tune", copy, "--steps", "2", *fast, "--json")
    assert result.exit_code == 0, result.output
    grid = json.loads(result.output[result.output.index("{") :])["grids"][0]
    assert grid["calibration"]["error_tuned"] <= grid["calibration"]["error_uniform"] + 1e-12
    assert json.loads(result.output[result.output.index("{") :])["error"] == "RMSE of the latents"
    tuned = fmcli.load(copy).sample(2, classes=0, solver="euler", steps=2, seed=0)
    assert tuned.time_grid == "tuned" and tuned.images.shape == (2, SIZE, SIZE, 3)
    student = train(distill_overrides(copy / "last.safetensors", {"out": str(tmp_path / "student"), "steps": 2})
                    | {"batch_size": 8, "pool": 8, "warmup_steps": 1, "sample_every": 0})  # fmt: skip
    meta = read_header(student.checkpoint)[1]
    assert meta.autoencoder["digest"] == read_header(copy)[1].autoencoder["digest"] and meta.shape == (3, 4, 4)
    one_step = fmcli.load(student.checkpoint).sample(3, classes=1, steps=1, seed=0)
    assert one_step.images.shape == (3, SIZE, SIZE, 3) and one_step.nfe == 1


def test_fm_eval_refuses_the_likelihood_of_a_latent_model(latent_run):
    assert_one_line_error(fm("eval", latent_run, "--nll", "--num", 8), "latent model's likelihood")


def test_latent_presets_are_the_image_presets_of_the_latent_grid():
    image = default_model_config("image", (3, 32, 32), 5, "cpu")
    assert default_model_config("latent", (4, 32, 32), 5, "cpu") == image | {"in_channels": 4}
    assert latent.autoencoder_preset(128)["factor"] == 4 and latent.autoencoder_preset(512)["factor"] == 8
    assert latent.autoencoder_preset(256)["factor"] == 8
