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
    assert (condition_kind(text), null_value(text)) == ("text", PAD)
    assert (condition_kind({"num_classes": 10}), null_value({"num_classes": 10})) == ("class", 10)
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


def test_guidance_between_prompt_and_empty_prompt_is_the_class_formula(bag):
    from fmcli.sampling.guidance import guided_velocity

    model = text_unet()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor(0.6)
    ids = model.tokenize(["red circle", "blue"])
    with torch.no_grad():
        guided = guided_velocity(model, 3.0, PAD)(x, t, ids)
        v_cond, v_null = model(x, t.expand(2), ids), model(x, t.expand(2))
    assert torch.allclose(guided, v_null + 3.0 * (v_cond - v_null), atol=1e-5)


def captioned_folder(root):
    """16 RGB 8x8 squares, half red and half blue, captioned in metadata.jsonl (the Hugging Face convention)."""
    import json

    from PIL import Image

    root.mkdir()
    lines = []
    for i in range(16):
        colour = "red" if i % 2 == 0 else "blue"
        Image.new("RGB", (8, 8), (220, 30, 30) if colour == "red" else (30, 30, 220)).save(root / f"{i:02d}.png")
        lines.append(json.dumps({"file_name": f"{i:02d}.png", "text": [f"a {colour} square", f"{colour} square"]}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    from conftest import TINY_UNET, train_tiny

    root = tmp_path_factory.mktemp("text")
    data = captioned_folder(root / "squares")
    model = {**TINY_UNET, "channel_mults": [1, 2], "attention_resolutions": []}
    return train_tiny(root / "run", data=str(data), image_size=8, model=model, hflip=False, cache=False)


def test_captions_train_a_text_model_that_samples_from_prompts(text_run, tmp_path):
    import json

    import numpy as np
    from helpers import fm

    from fmcli.io.checkpoint import read_header

    _, meta = read_header(text_run)
    assert meta.condition == "text" and meta.num_classes == 0 and meta.label_dropout == 0.1  # caption dropout
    assert {"a red square", "a blue square"} <= set(meta.data["prompts"])
    assert "a text model: captions from metadata.jsonl (16 of 16 images" in meta.train_config["decisions"]["condition"]
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
    assert not out.exists()


def test_the_api_samples_prompts_through_the_same_path(text_run):
    import fmcli

    model = fmcli.load(text_run, device="cpu")
    samples = model.sample(prompts=["a red square", "a blue square"], steps=2, seed=3)
    assert samples.prompts == ["a red square", "a blue square"] and samples.labels is None
    again = model.sample(2, prompts="a red square", steps=2, seed=3)
    assert np.array_equal(samples.images[0], again.images[0])  # same noise, same prompt: the same image
