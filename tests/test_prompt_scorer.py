"""fm eval's prompt following for any captioned data: the contrastive image-text scorer trained offline (known answers
on solid colours, its cache), the CLIP score with a local CLIP (the formula, computed directly), and both in fm
eval's report."""

import json
import socket
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, fm

from fmcli.errors import FMError
from fmcli.eval import scorer as scorer_module
from fmcli.eval.scorer import prompt_keys, rank_one, train_scorer, trained_scorer

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220)}


def solid(num: int, seed: int) -> tuple[torch.Tensor, list[tuple[str, ...]], torch.Tensor]:
    """``num`` 8x8 images of one colour each (jittered), captioned by the colour in two phrasings, and the colours."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randperm(num, generator=generator) % len(COLOURS)
    rgb = torch.tensor(list(COLOURS.values()))[codes].view(num, 3, 1, 1)
    images = (rgb + torch.randint(-15, 16, (num, 3, 8, 8), generator=generator)).clamp(0, 255).to(torch.uint8)
    names = list(COLOURS)
    return images, [(names[c], f"a {names[c]} square") for c in codes.tolist()], codes


@pytest.fixture(scope="module")
def colour_scorer():
    images, captions, _ = solid(60, seed=0)
    scorer, record = train_scorer(images, captions, epochs=1, min_steps=40)
    assert record["items"] == 60 and record["steps"] == 40 and record["batch"] == 60
    return scorer


def test_the_scorer_ranks_real_images_own_captions_first_and_a_mismatched_set_at_chance(colour_scorer):
    images, captions, codes = solid(30, seed=1)  # items the scorer never saw
    prompts = [caption[0] for caption in captions]
    right, chance, candidates = rank_one(colour_scorer, images, prompts, prompt_keys(prompts, None))
    assert candidates == 3 and torch.allclose(chance, torch.full((30,), 1 / 3))
    assert right.all()  # the caption determines the image: the own caption always ranks first
    shuffled = torch.randperm(30, generator=torch.Generator().manual_seed(2))
    coincide = (codes[shuffled] == codes).float().mean()  # images that happen to get a prompt of their own colour
    right, _, _ = rank_one(colour_scorer, images[shuffled], prompts, prompt_keys(prompts, None))
    assert right.float().mean() == coincide and coincide < 0.5  # right exactly where the colours coincide


def test_paraphrases_count_as_the_own_prompt_where_the_data_has_attributes(colour_scorer):
    images, captions, codes = solid(30, seed=3)
    prompts = [caption[i % 2] for i, caption in enumerate(captions)]  # "red" and "a red square" both asked for
    right, chance, candidates = rank_one(colour_scorer, images, prompts, prompt_keys(prompts, {"colour": codes}))
    assert candidates == 6 and torch.allclose(chance, torch.full((30,), 2 / 6)) and right.all()
    _, chance, _ = rank_one(colour_scorer, images, prompts, prompt_keys(prompts, None))
    assert torch.allclose(chance, torch.full((30,), 1 / 6))  # by words, a paraphrase is another prompt
    assert prompt_keys(["A red square.", "a red  square"], None)[0] == prompt_keys(["a red square"], None)[0]


def test_the_scorer_is_trained_once_per_content_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(scorer_module, "MIN_STEPS", 10)
    monkeypatch.setattr(scorer_module, "EPOCHS", 1)
    images, captions, _ = solid(12, seed=4)
    captions[5] = ()  # an item without a caption is left out
    first, record = trained_scorer("colours", images, captions, tmp_path)
    assert not record["cached"] and record["items"] == 11 and record["steps"] == 10
    again, cached = trained_scorer("colours", images, captions, tmp_path)
    assert cached["cached"] and cached["path"] == record["path"] and cached["steps"] == 10
    assert torch.equal(first.embed_images(images), again.embed_images(images))
    assert torch.equal(first.embed_prompts(["red", "a blue square"]), again.embed_prompts(["red", "a blue square"]))
    assert not trained_scorer("colours", images, [("blue",), *captions[1:]], tmp_path)[1]["cached"]  # new captions
    assert len(list((tmp_path / "classifiers").glob("colours-scorer-*.safetensors"))) == 2
    Path(record["path"]).write_bytes(b"not a scorer")
    with pytest.raises(FMError, match="unreadable.*delete it to retrain"):
        trained_scorer("colours", images, captions, tmp_path)


# ---- the CLIP score --------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("FM_CLIP_PATH", raising=False)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers", reason="the CLIP score's tests need transformers")
    from test_text_encoders import write_tiny_clip

    return write_tiny_clip(transformers, tmp_path_factory.mktemp("clip") / "tiny-clip", full=True)  # 8 px images


@pytest.mark.parametrize("processor", [None, {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}])
def test_the_clip_score_is_100_times_the_positive_cosine_of_image_and_prompt(clip_dir, processor, tmp_path):
    import shutil

    import transformers

    from fmcli.eval.clip_score import MEAN, STD, ClipModel, clip_scores

    directory = clip_dir
    if processor:
        directory = tmp_path / "with-processor"
        shutil.copytree(clip_dir, directory)
        (directory / "preprocessor_config.json").write_text(json.dumps(processor | {"crop_size": 8, "size": 8}))
    images = torch.randint(0, 256, (5, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    prompts = ["a red cat", "dog", "a red cat", "red dog 42", "cat"]
    got = clip_scores(ClipModel(directory), images, prompts, batch_size=2)

    model = transformers.CLIPModel.from_pretrained(str(clip_dir)).eval()
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(clip_dir))
    mean = torch.tensor((processor or {}).get("image_mean", MEAN)).view(1, 3, 1, 1)
    std = torch.tensor((processor or {}).get("image_std", STD)).view(1, 3, 1, 1)
    with torch.no_grad():
        vision = model.vision_model(pixel_values=(images / 255 - mean) / std).pooler_output
        image = model.visual_projection(vision)
        batch = tokenizer(prompts, padding=True, return_tensors="pt")
        text = model.text_projection(model.text_model(**batch).pooler_output)
    cosine = torch.nn.functional.cosine_similarity(image, text, dim=-1)
    assert torch.allclose(got, 100 * cosine.clamp(min=0), atol=1e-4)
    assert (got >= 0).all() and (got <= 100).all()


def test_clip_directories_that_will_not_do_are_one_line(clip_dir, tmp_path, monkeypatch):
    import transformers
    from test_text_encoders import write_tiny_clip

    from fmcli.eval.clip_score import clip_directory, clip_source

    (tmp_path / "empty").mkdir()
    for directory, fragment in (
        (tmp_path / "nowhere", "not a directory"),
        (tmp_path / "empty", "holds no CLIP weights"),
        (write_tiny_clip(transformers, tmp_path / "text-only"), "holds a CLIP text tower only"),
    ):
        with pytest.raises(FMError) as caught:
            clip_directory(directory)
        assert fragment in str(caught.value) and "--clip-path" in str(caught.value) and "\n" not in str(caught.value)
    assert clip_source(None) == (None, "no CLIP score: no local CLIP (--clip-path DIR or FM_CLIP_PATH)")
    monkeypatch.setenv("FM_CLIP_PATH", str(tmp_path / "text-only"))  # a text tower for --text-encoder clip: a note
    assert clip_source(None)[0] is None and "text tower only" in clip_source(None)[1]
    monkeypatch.setenv("FM_CLIP_PATH", str(clip_dir))
    assert clip_source(None) == (clip_dir.resolve(), None)


def test_fm_eval_refuses_a_clip_path_without_weights_or_for_a_model_without_prompts(
    text_checkpoint, toy_checkpoint, clip_dir, tmp_path
):
    (tmp_path / "empty").mkdir()
    result = fm("eval", text_checkpoint, "--clip-path", tmp_path / "empty", "--num", "8")
    assert_one_line_error(result, "holds no CLIP weights", "save_pretrained", "--clip-path", code=1)
    result = fm("eval", "--real", "--data", "shapes", "--clip-path", clip_dir)
    assert_one_line_error(result, "--clip-path", "not with --real", code=1)
    result = fm("eval", toy_checkpoint, "--clip-path", clip_dir, "--num", "8", "--metrics", "kid")
    assert_one_line_error(result, "this model takes no prompts", code=1)


# ---- fm eval's prompt section -------------------------------------------------------------------------------------


def test_a_captioned_folder_gets_the_scorer_on_items_kept_from_it_and_the_clip_score(text_checkpoint, clip_dir):
    from fmcli.eval.prompts import prompt_report
    from fmcli.eval.run import EvalOptions, checkpoint_data
    from fmcli.io.checkpoint import load_checkpoint
    from fmcli.sampling.options import SamplingOptions

    options = EvalOptions(num_samples=8, metrics=("kid",), sampling=SamplingOptions(steps=2), clip_path=clip_dir)
    loaded = load_checkpoint(text_checkpoint, device="cpu")
    report = prompt_report(loaded, checkpoint_data(loaded.meta, options), options)
    scorer, clip = report["scorer"], report["clip"]
    assert report["num"] == 8 and report["split"] == "train (kept from the scorer)" and "seen" not in report
    assert scorer["training"]["items"] == 8 and scorer["num"] == 8  # 16 squares: 8 kept to evaluate on
    assert scorer["candidates"] == 2 and scorer["chance"] == 0.5  # "a red square", "a blue square"
    assert scorer["real_rank1"] == 1.0 and scorer["equivalent"] == "the same words"
    assert 0 <= clip["score"] <= 100 and 0 <= clip["real_score"] <= 100 and clip["num"] == 8


def test_fm_eval_of_a_text_model_reports_the_scorer_and_the_clip_score(tmp_path, monkeypatch, clip_dir):
    from conftest import TINY_UNET, train_tiny
    from rich.console import Console
    from rich.table import Table

    import fmcli.data.shapes as shapes_module
    import fmcli.eval.classifier as classifier_module
    import fmcli.eval.prompts as prompts_module
    from fmcli.cli.eval import _prompt_rows

    original = classifier_module.train_classifier

    def quick(images, labels, num_classes, **kwargs):  # plumbing, not accuracy
        return original(images[:128], labels[:128], num_classes, **{**kwargs, "epochs": 1})

    monkeypatch.setattr(classifier_module, "train_classifier", quick)
    monkeypatch.setattr(prompts_module, "train_classifier", quick)
    monkeypatch.setattr(scorer_module, "MIN_STEPS", 5)
    monkeypatch.setattr(scorer_module, "EPOCHS", 1)
    monkeypatch.setattr(shapes_module, "DEFAULT_COUNTS", {"train": 300, "test": 200})
    run = train_tiny(tmp_path / "run", data="shapes", model=TINY_UNET, steps=1, batch_size=4)
    result = fm("eval", run, "--num", "30", "--metrics", "kid", "--kid-subsets", "2", "--steps", "1",
                "--extractor", "classifier", "--clip-path", clip_dir, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    prompts = report["prompts"]
    scorer, clip = prompts["scorer"], prompts["clip"]
    assert prompts["seen"]["num"] == 25 and prompts["held_out"]["num"] == 5  # the attribute scores stay
    assert scorer["num"] == clip["num"] == 30 and scorer["held_out"]["num"] == clip["held_out"]["num"] == 5
    assert scorer["equivalent"] == "the same background, colour, shape" and scorer["training"]["steps"] == 5
    assert 0 < scorer["chance"] < 1 and scorer["candidates"] <= 30
    assert report["options"]["clip_path"] == str(clip_dir)
    table = Table()
    _prompt_rows(table, prompts)
    console = Console(record=True, width=400)
    console.print(table)
    text = console.export_text()
    assert "prompt rank-1" in text and "CLIP score" in text and "held-out pairs" in text and "real images" in text
