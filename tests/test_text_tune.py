"""fm tune on text models: the time grid calibrated on the checkpoint's training captions, and the guidance
search prompted with the test captions, ranked by prompt following on ``shapes``, stored, then used by
fm sample --prompt."""

import json
import shutil

import pytest
import torch
from conftest import TINY_UNET, train_tiny
from helpers import fm

import fmcli.data.shapes as shapes_module
import fmcli.eval.classifier as classifier_module
import fmcli.eval.prompts as prompts_module
import fmcli.eval.search_accuracy as search_accuracy
from fmcli.data.base import to_model_space, to_uint8
from fmcli.eval.run import EvalContext, EvalOptions, checkpoint_data
from fmcli.io.checkpoint import load_checkpoint
from fmcli.sampling.generate import SampleResult
from fmcli.sampling.options import SamplingOptions
from fmcli.sampling.stored_guidance import read_stored
from fmcli.sampling.tuning import calibration_pool

SMALL_SHAPES = {"train": 600, "test": 300}  # a small built-in set: quick to draw, classify and score


@pytest.fixture(scope="module")
def shapes_text(tmp_path_factory):
    """A tiny text model of 8x8 shapes (caption dropout 0.1, so it has an unconditional velocity)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shapes_module, "DEFAULT_COUNTS", SMALL_SHAPES)
        model = {**TINY_UNET, "channel_mults": [1, 2], "attention_resolutions": []}
        return train_tiny(tmp_path_factory.mktemp("text") / "shapes", data="shapes", image_size=8, model=model,
                          steps=2, batch_size=8, hflip=False, guide_at=0.0)  # fmt: skip


@pytest.fixture
def quick(monkeypatch, tmp_path):
    """Classifiers trained on a few hundred images for one epoch (plumbing, not accuracy), cached apart."""
    monkeypatch.setenv("FM_CACHE_DIR", str(tmp_path / "fm-cache"))
    monkeypatch.setattr(shapes_module, "DEFAULT_COUNTS", SMALL_SHAPES)
    original = classifier_module.train_classifier

    def fast(images, labels, num_classes, **kwargs):
        return original(images[:256], labels[:256], num_classes, **{**kwargs, "epochs": 1})

    monkeypatch.setattr(classifier_module, "train_classifier", fast)
    monkeypatch.setattr(prompts_module, "train_classifier", fast)


def run_json(*args) -> dict:
    result = fm(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def context(checkpoint, tmp_path) -> EvalContext:
    """What the search's accuracy is chosen from: the model and its own data (no extractor needed)."""
    options = EvalOptions(num_samples=10, metrics=("fid",), device="cpu", cache_dir=tmp_path)
    loaded = load_checkpoint(checkpoint, device=torch.device("cpu"))
    return EvalContext(options, torch.device("cpu"), loaded, checkpoint_data(loaded.meta, options), None, None, None)


def test_fm_tune_guidance_ranks_a_text_model_by_prompt_following_and_sample_prompt_uses_it(
    shapes_text, quick, tmp_path
):
    checkpoint = tmp_path / "model.safetensors"
    shutil.copy(shapes_text, checkpoint)
    report = run_json("tune", checkpoint, "--guidance", "--solver", "euler", "--steps", "2", "--num", "130",
                      "--cfgs", "2", "--intervals", "full", "--guides", "none", "--min-recall", "0.5",
                      "--device", "cpu")  # fmt: skip
    assert report["accuracy"] == search_accuracy.PROMPT_FOLLOWING and "accuracy >=" in report["rule"]
    baseline, (guided,) = report["baseline"], report["rows"]
    # prompted with the test captions: unguided one pass a step; guided by the empty prompt, two
    assert (baseline["cfg"], baseline["passes"], guided["cfg"], guided["passes"]) == (1.0, 2, 2.0, 4)
    assert all(0 <= row["accuracy"] <= 1 and row["num_samples"] == 130 for row in (baseline, guided))
    stored = read_stored(checkpoint)
    assert stored is not None and stored.conditional and stored.setting.describe() == report["chosen"]
    used = run_json("sample", checkpoint, "--prompt", "a red circle", "--num", "2", "--steps", "2", "--out",
                    tmp_path / "s.png")  # fmt: skip
    assert used["guidance"]["source"] == "tuned" and used["cfg"] == stored.setting.scale
    unprompted = run_json("sample", checkpoint, "--num", "2", "--steps", "2", "--out", tmp_path / "u.png")
    assert unprompted["guidance"]["source"] != "tuned"  # stored for prompted sampling only


def test_prompt_following_reads_each_sample_against_its_own_prompt(shapes_text, monkeypatch, tmp_path):
    """Real test images stand in for samples, read by an exact oracle: every phrasing of the right prompt scores 1,
    the same images under shuffled prompts score low, prompts no item names are left out."""
    monkeypatch.setattr(shapes_module, "DEFAULT_COUNTS", SMALL_SHAPES)

    def oracle(train, test, attribute, cache, device, progress=None):  # reads a real test image's attribute exactly
        keys = {bytes(image.numpy()): int(v) for image, v in zip(test.data, test.attributes[attribute], strict=True)}

        def network(x):
            codes = torch.tensor([keys[bytes(to_uint8(image).numpy())] for image in x])
            return None, torch.nn.functional.one_hot(codes, len(test.attribute_names[attribute])).float()

        return network, 1.0

    monkeypatch.setattr(search_accuracy, "attribute_classifier", oracle)
    ctx = context(shapes_text, tmp_path)
    scorer, measures = search_accuracy.accuracy_scorer(ctx)
    assert measures == search_accuracy.PROMPT_FOLLOWING
    test = ctx.data.load("test")
    images = to_model_space(test.data[:60])
    tokenize = ctx.loaded.model.tokenize

    def score(samples, prompts):
        return scorer(SampleResult(samples, tokenize(prompts), 2, 0.0, 1.0, SamplingOptions()), None)

    assert score(images, [c[0] for c in test.captions[:60]]) == 1.0
    assert score(images, [c[-1] for c in test.captions[:60]]) == 1.0  # another phrasing, the same attributes
    assert score(images.roll(7, dims=0), [c[0] for c in test.captions[:60]]) <= 0.2
    named = [c[0] if i % 2 else "a drawing" for i, c in enumerate(test.captions[:60])]
    assert score(images, named) == 1.0  # the 30 prompts that name an item are scored, the rest left out
    assert score(images, ["a drawing"] * 60) is None


def test_a_text_model_on_a_captioned_folder_has_no_accuracy_column(text_checkpoint, tmp_path):
    """The squares folder names colours but carries no attributes to read them back by: nothing to rank by but
    FID and recall (the search then picks the lowest FID that keeps the recall)."""
    assert search_accuracy.accuracy_scorer(context(text_checkpoint, tmp_path)) == (None, None)


def test_fm_tune_grid_of_a_text_model_calibrates_on_its_captions_and_sample_prompt_uses_it(text_checkpoint, tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    shutil.copy(text_checkpoint, checkpoint)
    loaded = load_checkpoint(checkpoint)
    prompts = loaded.meta.data["prompts"]
    assert sorted(prompts) == ["a blue square", "a red square"]
    x1, y = calibration_pool(loaded, 5, True, 0)  # rounded up to an equal share of each kept caption
    assert x1.shape[0] == 6 and torch.equal(y, loaded.model.tokenize(prompts)[torch.tensor([0, 0, 0, 1, 1, 1])])
    report = run_json("tune", checkpoint, "--steps", "3", "--pool", "4", "--iterations", "1", "--reference-steps",
                      "4", "--device", "cpu")  # fmt: skip
    assert (report["conditional"], report["condition"], report["cfg"], report["pool"]) == (True, "text", 2.0, 4)
    (grid,) = report["grids"]
    used = run_json("sample", checkpoint, "--prompt", "a red square", "--num", "2", "--solver", "euler", "--steps",
                    "3", "--out", tmp_path / "s.png")  # fmt: skip
    assert used["time_grid"] == "tuned" and used["cfg"] == grid["cfg"]
    unprompted = run_json("sample", checkpoint, "--num", "2", "--solver", "euler", "--steps", "3", "--out",
                          tmp_path / "u.png")  # fmt: skip
    assert unprompted["time_grid"] == "uniform"  # calibrated for prompted sampling only
