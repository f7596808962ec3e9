"""Text models: one conditioning path for class indices and prompt token ids, through the U-Net, guidance and
training; prompts on the command line and in the Python API."""

import numpy as np
import pytest
import torch
from torch import nn

from fmcli import hookimpl, registry
from fmcli.models import build_model
from fmcli.models.condition import PAD, condition_kind, drop_rows, null_rows, null_value
from fmcli.plugins import load_plugins, pm
from fmcli.specs import TextEncoderSpec


class BagOfWords(nn.Module):
    """A plugin's text encoder, written here: word ids -> embeddings, a register token always attendable."""

    name, trainable, context, width = "bag", True, 4, 8

    def __init__(self, vocab: list[str]):
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(len(vocab) + 2, self.width)
        self.register = nn.Parameter(torch.randn(1, 1, self.width))

    def tokenize(self, prompts):
        ids = torch.zeros((len(prompts), self.context), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = [self.vocab.index(w) + 2 if w in self.vocab else 1 for w in prompt.split()][: self.context]
            ids[row, : len(words)] = torch.tensor(words, dtype=torch.long)
        return ids

    def forward(self, ids):
        tokens = torch.cat([self.register.expand(len(ids), 1, -1), self.embed(ids)], dim=1)
        mask = torch.cat([torch.ones(len(ids), 1, dtype=torch.bool), ids != PAD], dim=1)
        return tokens, tokens[:, 0], mask

    def export(self):
        return {"name": "bag", "vocab": self.vocab, "context": self.context}

    def unknown_words(self, prompts):
        unknown = [w for p in prompts for w in p.split() if w not in self.vocab]
        return len(unknown), unknown[:10]

    def truncated(self, prompts):
        return sum(len(p.split()) > self.context for p in prompts)


class BagPlugin:
    @hookimpl
    def fm_register_text_encoders(self, register):
        register(
            TextEncoderSpec(
                name="bag",
                description="test words",
                build=lambda captions, **_: BagOfWords(sorted({w for c in captions for w in c.split()})),
                restore=lambda exported: BagOfWords(list(exported["vocab"])),
            )
        )


@pytest.fixture
def bag():
    load_plugins()
    plugin = BagPlugin()
    pm.register(plugin, name="test-bag")
    registry.reset()
    yield
    pm.unregister(plugin)
    registry.reset()


def text_unet(cross_attention=(4,)):
    config = {"name": "unet", "in_channels": 1, "image_size": 8, "base_channels": 8, "channel_mults": [1, 2],
              "attention_resolutions": [], "text": {"name": "bag", "vocab": ["red", "blue", "circle"], "context": 4},
              "cross_attention": list(cross_attention)}  # fmt: skip
    torch.manual_seed(0)
    return build_model(config).eval()


def test_null_rows_and_dropout_are_one_rule_for_classes_and_prompts():
    labels = torch.tensor([3, 10, 1])
    assert null_rows(labels, 10).tolist() == [False, True, False]
    ids = torch.tensor([[2, 3, 0], [0, 0, 0], [4, 0, 0]])
    assert null_rows(ids, PAD).tolist() == [False, True, False]
    drop = torch.tensor([True, False, True])
    assert drop_rows(labels, drop, 10).tolist() == [10, 10, 10]
    assert drop_rows(ids, drop, PAD).tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 0]]
    text = {"text": {"name": "bag"}, "num_classes": 0}
    assert (condition_kind(text), null_value(condition_kind(text), 0)) == ("text", PAD)
    assert (condition_kind({"num_classes": 10}), null_value("class", 10)) == ("class", 10)
    assert condition_kind({"num_classes": 0}) == "none"


def test_a_text_unet_reads_its_prompt_and_padding_does_not_leak(bag):
    model = text_unet()
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 0.5)
    with torch.no_grad():  # zero-initialised branches (the output, cross-attention) start silent: wake them up
        for parameter in model.parameters():
            if not parameter.abs().sum():
                nn.init.normal_(parameter, std=0.2)
    ids = model.tokenize(["red circle", "blue circle", ""])
    with torch.no_grad():
        v = model(x, t, ids)
        assert not torch.allclose(v[0], model(x[:1], t[:1], model.tokenize(["blue circle"]))[0])  # words matter
        assert torch.allclose(v[1:2], model(x[1:2], t[1:2], model.tokenize(["blue circle"])), atol=1e-6)
        assert torch.allclose(v[2:], model(x[2:], t[2:]), atol=1e-6)  # y=None is the empty prompt (all PAD)
        padded = ids.clone()
        model.encoder.embed.weight[PAD] += 5.0  # what PAD embeds to is masked out of cross-attention ...
        assert torch.allclose(model(x, t, padded)[:2], v[:2], atol=1e-5)  # ... and changes nothing
    assert model.config["text"]["vocab"] == ["red", "blue", "circle"] and model.config["cross_attention"] == [4]
    restored = build_model(model.config)
    restored.load_state_dict(model.state_dict())  # a trainable encoder's weights are the model's
    with torch.no_grad():
        assert torch.equal(restored.eval()(x, t, ids), model(x, t, ids))


def test_a_text_unet_refuses_labels_and_a_class_unet_refuses_token_ids(bag):
    from fmcli.errors import FMError

    model = text_unet(cross_attention=())
    with pytest.raises(FMError, match="prompt token ids"):
        model(torch.randn(2, 1, 8, 8), 0.5, torch.tensor([1, 2]))
    classes = build_model({"name": "unet", "in_channels": 1, "image_size": 8, "base_channels": 8,
                           "channel_mults": [1, 2], "attention_resolutions": [], "num_classes": 3})  # fmt: skip
    with pytest.raises(FMError, match="class labels"):
        classes(torch.randn(2, 1, 8, 8), 0.5, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(FMError, match="not both"):
        build_model({**classes.config, "text": {"name": "bag", "vocab": ["a"]}})


def test_cross_attention_is_none_on_a_cpu_by_default_and_the_lowest_resolution_elsewhere():
    from fmcli.data.base import ArrayDataset
    from fmcli.training.conditions import cross_attention
    from fmcli.training.config import TrainConfig

    data = ArrayDataset("d", "train", "image", torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert cross_attention(TrainConfig(), data, "cpu") == []  # measured: README "Text on a CPU"
    assert cross_attention(TrainConfig(), data, "cuda") == [4]  # the 32 px preset's lowest resolution
    assert cross_attention(TrainConfig(cross_attention=["8", "4"]), data, "cpu") == [8, 4]
    assert cross_attention(TrainConfig(cross_attention=["none"]), data, "cuda") == []


def test_guidance_between_prompt_and_empty_prompt_is_the_class_formula(bag):
    from fmcli.sampling.guidance import guided_velocity

    model = text_unet()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor(0.6)
    ids = model.tokenize(["red circle", "blue"])
    with torch.no_grad():
        guided = guided_velocity(model, 3.0, PAD)(x, t, ids)
        v_cond, v_null = model(x, t.expand(2), ids), model(x, t.expand(2))
    assert torch.allclose(guided, v_null + 3.0 * (v_cond - v_null), atol=1e-5)
    negative = model.tokenize(["blue", "red"])  # a negative prompt: the reference in place of the empty prompt
    with torch.no_grad():
        steered = guided_velocity(model, 3.0, PAD)(x, t, ids, y_ref=negative)
        v_neg = model(x, t.expand(2), negative)
    assert torch.allclose(steered, v_neg + 3.0 * (v_cond - v_neg), atol=1e-5)


@pytest.fixture
def text_run(text_checkpoint):
    return text_checkpoint


def test_captions_train_a_text_model_that_samples_from_prompts(text_run, tmp_path):
    import json

    import numpy as np
    from helpers import fm

    from fmcli.io.checkpoint import read_header

    _, meta = read_header(text_run)
    assert meta.condition == "text" and meta.num_classes == 0 and meta.label_dropout == 0.1  # caption dropout
    assert {"a red square", "a blue square"} <= set(meta.data["prompts"])
    assert "a text model: captions from metadata.jsonl (16 of 16 images" in meta.train_config["decisions"]["condition"]
    assert meta.model_config["cross_attention"] == [4]  # as asked (--cross-attention 4)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\n\na blue square\n")
    out = tmp_path / "s.npz"
    result = fm("sample", text_run, "--prompts", prompts, "--num", "4", "--steps", "2", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["cfg"] == 2.0 and report["passes"] == 2 * report["nfe"]  # guided by the empty prompt
    saved = np.load(out)
    assert saved["prompts"].tolist() == ["a red square"] * 2 + ["a blue square"] * 2 and saved["images"].shape[0] == 4
    unknown = fm("sample", text_run, "--prompt", "a green square", "--num", "1", "--steps", "2", "--out",
                 tmp_path / "g.png")  # fmt: skip
    assert unknown.exit_code == 0 and "1 word(s) never seen in training (e.g. green)" in unknown.output
    negative = fm("sample", text_run, "--prompt", "a red square", "--negative-prompt", "blue", "--num", "2",
                  "--steps", "2", "--out", tmp_path / "n.npz", "--json")  # fmt: skip
    assert negative.exit_code == 0 and json.loads(negative.stdout)["negative_prompt"] == "blue"
    differs = np.load(tmp_path / "n.npz")["images"]
    assert not np.array_equal(differs, np.load(out)["images"][:2])  # steered away from "blue", not from ""


def test_fm_animate_draws_a_prompt_steered_from_a_negative_one(text_run, tmp_path):
    import json

    from helpers import fm

    result = fm("animate", text_run, "--prompt", "a red square", "--negative-prompt", "blue", "--num", "2",
                "--frames", "3", "--steps", "2", "--out", tmp_path / "a.gif", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["prompts"] == ["a red square"] and report["passes"] == 2 * report["nfe"]


def test_prompts_and_classes_go_to_the_models_that_take_them(text_run, tiny_checkpoint, tmp_path):
    from helpers import assert_one_line_error, fm

    out = tmp_path / "x.png"
    assert_one_line_error(fm("sample", tiny_checkpoint, "--prompt", "a six", "--out", out), "takes no prompts",
                          "class labels")  # fmt: skip
    assert_one_line_error(fm("sample", text_run, "--class", "1", "--out", out), "text model", "--prompt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert_one_line_error(fm("sample", text_run, "--prompts", empty, "--out", out), "holds no prompt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    assert_one_line_error(fm("sample", text_run, "--prompts", tmp_path / "latin1.txt", "--out", out), "not UTF-8")
    assert_one_line_error(fm("sample", text_run, "--negative-prompt", "blue", "--out", out), "needs --prompt")
    assert not out.exists()


def test_the_api_samples_prompts_through_the_same_path(text_run):
    import fmcli

    model = fmcli.load(text_run, device="cpu")
    samples = model.sample(prompts=["a red square", "a blue square"], steps=2, seed=3)
    assert samples.prompts == ["a red square", "a blue square"] and samples.labels is None
    again = model.sample(2, prompts="a red square", steps=2, seed=3)
    assert np.array_equal(samples.images[0], again.images[0])  # same noise, same prompt: the same image


def test_prompt_following_reads_shape_and_colour_back_and_keeps_held_out_pairs_apart(bag, tmp_path, monkeypatch):
    """Scored on real test images standing in for a perfect model, then on the same images shuffled across prompts
    (every shape and colour present, but not where asked): the score tells following from drawing."""
    import fmcli.eval.prompts as prompts_module
    from fmcli.data.base import LoadOptions, to_model_space, to_uint8
    from fmcli.data.shapes import load_shapes
    from fmcli.io.checkpoint import CheckpointMeta, LoadedModel
    from fmcli.sampling.generate import SampleResult
    from fmcli.sampling.options import SamplingOptions

    train = load_shapes(LoadOptions(split="train", num_samples=100))
    test = load_shapes(LoadOptions(split="test", num_samples=300))
    words = sorted({w for c in test.captions for w in c[0].split()})
    config = {"name": "unet", "in_channels": 3, "image_size": 32, "base_channels": 8, "channel_mults": [1, 2],
              "attention_resolutions": []}  # fmt: skip
    model = build_model(config | {"text": {"name": "bag", "vocab": words}})
    meta = CheckpointMeta(1, model.config, {"shape": [3, 32, 32], "kind": "image"}, 0, 0.1)
    loaded = LoadedModel(model=model, meta=meta)
    chosen, expected = prompts_module.evaluation_prompts(test, per_pair=2)
    assert len(chosen) == 2 * 30 and len(set(chosen)) > 30  # every (colour, shape) pair of the test split, twice

    def oracle(train, test, attribute, cache, device, progress=None):  # reads a real test image's attribute exactly
        keys = {
            bytes(image.numpy()): int(value) for image, value in zip(test.data, test.attributes[attribute], strict=True)
        }
        names = test.attribute_names[attribute]
        read = lambda x: torch.nn.functional.one_hot(  # noqa: E731
            torch.tensor([keys[bytes(to_uint8(image).numpy())] for image in x]), len(names)
        ).float()
        return (lambda x: (None, read(x))), 1.0

    monkeypatch.setattr(prompts_module, "attribute_classifier", oracle)
    by_caption = {c[0]: i for i, c in enumerate(test.captions)}
    real = to_model_space(test.data[[by_caption[p] for p in chosen]])
    for images, following in ((real, True), (real.roll(7, dims=0), False)):
        fake = SampleResult(images, None, 2, 0.0, 2.0, SamplingOptions(), passes=4)
        monkeypatch.setattr(prompts_module, "generate", lambda *args, fake=fake, **kwargs: fake)
        report = prompts_module.prompt_following(loaded, train, test, SamplingOptions(), per_pair=2, cache=tmp_path)
        assert report["held_out"]["num"] == 2 * 5 and report["seen"]["num"] == 2 * 25  # 5 pairs held out of train
        assert report["held_out_pairs"] == sorted(" ".join(p) for p in train.info["held_out"])
        if following:  # the images asked for: every attribute right, held-out pairs too
            assert report["seen"]["both"] == report["held_out"]["both"] == 1.0
        else:  # every shape and colour drawn, not where asked
            assert report["seen"]["both"] <= 0.2 and report["held_out"]["both"] <= 0.2


def test_attribute_classifiers_are_trained_once_and_cached(tmp_path):
    from fmcli.data.base import LoadOptions
    from fmcli.data.shapes import load_shapes
    from fmcli.eval.prompts import attribute_classifier

    train = load_shapes(LoadOptions(split="train", num_samples=200))
    test = load_shapes(LoadOptions(split="test", num_samples=100))
    network, accuracy = attribute_classifier(train, test, "colour", tmp_path, torch.device("cpu"))
    assert 0 <= accuracy <= 1 and len(list((tmp_path / "classifiers").glob("shapes-colour-*"))) == 1
    again, same = attribute_classifier(train, test, "colour", tmp_path, torch.device("cpu"))
    assert same == accuracy and torch.equal(again.head.weight, network.head.weight)


def test_fm_eval_of_a_text_model_scores_its_prompts_seen_and_held_out(tmp_path, monkeypatch):
    import json

    from conftest import TINY_UNET, train_tiny
    from helpers import fm
    from rich.console import Console
    from rich.table import Table

    import fmcli.data.shapes as shapes_module
    import fmcli.eval.classifier as classifier_module
    import fmcli.eval.prompts as prompts_module
    from fmcli.cli.eval import _prompt_rows

    monkeypatch.setenv("FM_CACHE_DIR", str(tmp_path / "cache"))
    original = classifier_module.train_classifier

    def quick(images, labels, num_classes, **kwargs):  # plumbing, not accuracy: a few hundred images, one epoch
        return original(images[:256], labels[:256], num_classes, **{**kwargs, "epochs": 1})

    monkeypatch.setattr(classifier_module, "train_classifier", quick)
    monkeypatch.setattr(prompts_module, "train_classifier", quick)
    monkeypatch.setattr(shapes_module, "DEFAULT_COUNTS", {"train": 1000, "test": 400})  # a small built-in set
    import fmcli.eval.scorer as scorer_module  # the image-text scorer: plumbing here (its own tests measure it)

    monkeypatch.setattr(scorer_module, "MIN_STEPS", 5)
    monkeypatch.setattr(scorer_module, "EPOCHS", 1)
    run = train_tiny(tmp_path / "run", data="shapes", model=TINY_UNET, steps=2, batch_size=8)
    result = fm("eval", run, "--data", "shapes", "--num", "30", "--metrics", "kid", "--kid-subsets", "5", "--steps",
                "2", "--cfg", "2", "--extractor", "classifier", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    prompts = json.loads(result.stdout)["prompts"]
    assert prompts["seen"]["num"] == 25 and prompts["held_out"]["num"] == 5  # 30 prompts: one per (colour, shape)
    assert prompts["cfg"] == 2.0 and prompts["passes"] == 2 * prompts["nfe"]  # guided by the empty prompt
    assert set(prompts["classifier_test_accuracy"]) == {"shape", "colour", "background"}
    table = Table()
    _prompt_rows(table, prompts)
    console = Console(record=True, width=300)
    console.print(table)
    assert "prompts: pairs held out of training" in console.export_text()
