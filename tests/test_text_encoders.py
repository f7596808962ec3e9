"""Text encoders: the built-in word tokenizer and transformer, the offline CLIP tower, and the plugin hook."""

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
from helpers import fm

from fmcli import hookimpl, registry
from fmcli.errors import FMError
from fmcli.plugins import pm
from fmcli.specs import TextEncoderSpec
from fmcli.text import PAD
from fmcli.text.tokenizer import UNK, WordTokenizer, words

CAPTIONS = ["a red car", "a blue car", "A red-car!", "two small dogs on the grass", "a cat"]


def builtin(captions=CAPTIONS, **options):
    return registry.get_text_encoder("builtin").build(captions, **options)


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    """torch.testing.assert_close's check, without its 2-second first import."""
    assert actual.shape == expected.shape and torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual, expected)


def one_line_error(call, *fragments):
    with pytest.raises(FMError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message
    return message


# ---- the built-in tokenizer -----------------------------------------------------------------------------------------


def test_the_vocabulary_is_ranked_by_frequency_then_alphabet_and_the_same_every_time():
    tokenizer = WordTokenizer.learn(CAPTIONS)
    assert tokenizer.vocabulary[:4] == ["a", "car", "red", "blue"]  # a: 4, car: 3, red: 2, then 1 each, a-z
    assert tokenizer.vocabulary == WordTokenizer.learn(list(reversed(CAPTIONS))).vocabulary
    assert words("A red-car, 2x_big! Été") == ["a", "red", "car", "2x", "big", "été"]
    assert tokenizer.context == 8  # the longest caption has 6 words: at least 8
    assert WordTokenizer.learn(["w " * 100]).context == 77 and WordTokenizer.learn(CAPTIONS, context=3).context == 3
    capped = WordTokenizer.learn(CAPTIONS, max_words=2)
    assert capped.vocabulary == ["a", "car"] and capped.encode("a red car") == [2, UNK, 3]


def test_tokenize_round_trips_known_words_and_pads_the_empty_prompt():
    encoder = builtin()
    prompts = ["two dogs on a red car", "", "!!!", "the cat"]
    ids = encoder.tokenize(prompts)
    assert ids.shape == (4, encoder.context) and ids.dtype == torch.int64 and ids.device.type == "cpu"
    back = [[encoder.tokenizer.vocabulary[i - 2] for i in row if i != PAD] for row in ids.tolist()]
    assert back == [words(p) for p in prompts]
    assert (ids[1:3] == PAD).all() and torch.equal(encoder.empty(2), ids[1:3])
    assert torch.equal(encoder.tokenize(prompts), ids)


def test_unknown_words_and_truncated_prompts_are_counted_not_fatal():
    encoder = builtin()
    count, examples = encoder.unknown_words(["a green car and a green bike", "a red car"])
    assert (count, examples) == (4, ["green", "and", "bike"])
    assert encoder.tokenize(["a green car"])[0, :3].tolist() == [2, UNK, 3]
    many = encoder.unknown_words([f"word{i}" for i in range(30)])
    assert many[0] == 30 and len(many[1]) == 10
    long = "a red car " * 5  # 15 words, context 8
    assert encoder.truncated([long, "a cat", long]) == 2
    assert encoder.tokenize([long])[0].tolist() == encoder.tokenizer.encode(long)[:8]


# ---- the built-in encoder -------------------------------------------------------------------------------------------


def test_builtin_forward_shapes_and_a_register_key_in_every_row():
    torch.manual_seed(0)
    encoder = builtin()
    assert encoder.trainable and encoder.name == "builtin" and encoder.width == 128
    tokens, pooled, mask = encoder(encoder.tokenize(["a red car", "", "two small dogs on the grass"]))
    assert tokens.shape == (3, 9, 128) and pooled.shape == (3, 128) and mask.shape == (3, 9)
    assert mask.dtype == torch.bool and mask[:, 0].all() and mask.sum(1).tolist() == [4, 1, 7]
    assert torch.isfinite(tokens).all() and torch.isfinite(pooled).all()
    assert (tokens[~mask] == 0).all() and torch.equal(pooled, tokens[:, 0])
    tokens.sum().backward()  # trained with the velocity network: gradients reach the word embeddings
    assert encoder.embed.weight.grad is not None and encoder.embed.weight.grad[2].abs().sum() > 0


def test_padding_does_not_leak_into_a_prompt():
    torch.manual_seed(0)
    encoder = builtin(context=16).eval()
    ids = encoder.tokenize(["a red car", "two small dogs on the grass"])
    with torch.no_grad():
        tokens, pooled, mask = encoder(ids)
        alone, alone_pooled, _ = encoder(ids[:1, :3])  # the same prompt, no padding at all, without the other row
    assert_close(tokens[:1, :4], alone, rtol=1e-5, atol=1e-6)
    assert_close(pooled[:1], alone_pooled, rtol=1e-5, atol=1e-6)
    assert (tokens[0, 4:] == 0).all()


def test_builtin_is_deterministic_and_export_restore_reproduces_it_exactly():
    small = dict(width=32, layers=1, heads=2, max_words=50)
    torch.manual_seed(3)
    encoder = builtin(**small)
    torch.manual_seed(3)
    twin = builtin(**small).state_dict()
    assert all(torch.equal(value, twin[key]) for key, value in encoder.state_dict().items())
    exported = json.loads(json.dumps(encoder.export()))
    assert exported["vocabulary"] == encoder.tokenizer.vocabulary and exported["context"] == encoder.context
    restored = registry.get_text_encoder("builtin").restore(exported)
    restored.load_state_dict(encoder.state_dict())
    ids = encoder.tokenize(["a blue car on the grass", "", "a dog"])
    for mine, theirs in zip(encoder.eval()(ids), restored.eval()(ids), strict=True):
        assert torch.equal(mine, theirs)
    assert torch.equal(restored.tokenize(["a dog"]), encoder.tokenize(["a dog"]))


def test_builtin_options_are_checked_in_one_line():
    one_line_error(lambda: builtin(widht=64), "unknown option 'widht'")
    one_line_error(lambda: builtin(width=30, heads=4), "not a multiple of heads")
    one_line_error(lambda: builtin(layers=-1), "layers must be an integer")
    one_line_error(lambda: registry.get_text_encoder("builtin").restore({"name": "builtin"}), "missing")
    assert builtin(path=None, context=None).context == 8  # options left unset take their defaults


# ---- CLIP from a local directory ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers", reason="the clip text encoder's tests need transformers")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing here may reach the network: any connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("FM_CLIP_PATH", raising=False)


def write_tiny_clip(transformers, directory, full=False):
    """A random 2-layer CLIP text tower (width 32) and a byte-pair tokenizer over a-z, 0-9 and three merged words;
    ``full``: a whole CLIPModel (a 1-layer vision tower, projections to 32), as openai/clip-vit-base-patch32 is."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[char], vocab[char + "</w>"] = len(vocab), len(vocab) + 1
    merges = ["c a", "ca t</w>", "d o", "do g</w>", "r e", "re d</w>"]
    for merge in merges:
        vocab[merge.replace(" ", "")] = len(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    if full:
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=8,
                      patch_size=4)  # fmt: skip
        config = transformers.CLIPConfig(text_config=config.to_dict(), vision_config=vision, projection_dim=32)
        transformers.CLIPModel(config).save_pretrained(directory)
    else:
        transformers.CLIPTextModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def clip_dir(transformers, tmp_path_factory):
    return write_tiny_clip(transformers, tmp_path_factory.mktemp("clip") / "tiny-clip")


def clip(**options):
    return registry.get_text_encoder("clip").build([], **options)


PROMPTS = ["a red cat", "", "dog dog 42", "a red cat"]


def direct(transformers, directory, prompts, context):
    """The same prompts through transformers itself: its tokenizer and model, padded to ``context``."""
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(directory))
    model = transformers.CLIPTextModel.from_pretrained(str(directory)).eval()
    batch = tokenizer(prompts, padding="max_length", max_length=context, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return batch, out


def test_clip_embeddings_equal_transformers_on_the_same_ids(transformers, clip_dir):
    encoder = clip(path=clip_dir)
    assert not encoder.trainable and encoder.context == 16 and encoder.width == 32
    assert list(encoder.parameters()) == [] and encoder.state_dict() == {}  # frozen, never in the model's state dict
    ids = encoder.tokenize(PROMPTS)
    assert (ids[1] == PAD).all() and (ids[[0, 2]] != PAD).any(1).all()
    tokens, pooled, mask = encoder(ids)
    batch, out = direct(transformers, clip_dir, [p or "" for p in PROMPTS], encoder.context)
    assert torch.equal(mask, batch["attention_mask"].bool()) and mask[1].sum() == 2  # "" -> CLIP's [start, end]
    prompts = ids != PAD
    assert torch.equal(prompts[[0, 2, 3]], mask[[0, 2, 3]])
    assert torch.equal(ids[prompts] - 1, batch["input_ids"][prompts])  # ids are CLIP's plus one; 0 is padding
    assert_close(tokens[mask], out.last_hidden_state[mask], rtol=1e-5, atol=1e-6)
    assert_close(pooled, out.pooler_output, rtol=1e-5, atol=1e-6)
    assert (tokens[~mask] == 0).all()


def test_clip_encodes_each_distinct_row_once(clip_dir):
    encoder = clip(path=clip_dir)
    ids = encoder.tokenize(PROMPTS)
    first = encoder(ids)
    assert encoder.encoded == 3 and len(encoder.cache) == 3  # "a red cat" twice in the batch: once
    again = encoder(ids.flip(0))
    assert encoder.encoded == 3  # all from the cache
    for mine, theirs in zip(first, again, strict=True):
        assert torch.equal(mine, theirs.flip(0))
    small = clip(path=clip_dir, cache_mb=0)  # nothing kept: every call encodes
    small(ids), small(ids)
    assert small.encoded == 6 and len(small.cache) == 0


def test_clip_counts_unknown_words_and_truncation(clip_dir):
    encoder = clip(path=clip_dir, context=6)
    assert encoder.unknown_words(["a red cat", "été 42 café"]) == (2, ["été", "café"])
    assert encoder.truncated(["a red cat", "cat dog cat dog cat dog"]) == 1  # 6 words + start and end > 6
    assert encoder.tokenize(["cat dog cat dog cat dog"]).shape == (1, 6)


def test_a_whole_clip_model_gives_its_text_tower_and_projected_text_features(transformers, tmp_path):
    directory = write_tiny_clip(transformers, tmp_path / "clip-model", full=True)
    encoder = clip(path=directory)
    assert encoder.projection and encoder.width == 32
    tokens, pooled, mask = encoder(encoder.tokenize(["a red cat"]))
    model = transformers.CLIPModel.from_pretrained(str(directory)).eval()
    batch = transformers.CLIPTokenizer.from_pretrained(str(directory))(["a red cat"], return_tensors="pt")
    with torch.no_grad():
        hidden = model.text_model(**batch).last_hidden_state
        features = model.get_text_features(**batch)
    assert_close(tokens[mask], hidden[0])
    assert_close(pooled, getattr(features, "pooler_output", features))  # transformers 5 returns an output object


def test_clip_export_restore_checks_the_weights(clip_dir, tmp_path, monkeypatch):
    copy = shutil.copytree(clip_dir, tmp_path / "copy")
    encoder = clip(path=copy)
    exported = json.loads(json.dumps(encoder.export()))
    assert exported == {"name": "clip", "path": str(copy.resolve()), "digest": encoder.digest, "context": 16,
                        "width": 32}  # fmt: skip
    spec = registry.get_text_encoder("clip")
    ids = encoder.tokenize(PROMPTS)
    for mine, theirs in zip(encoder(ids), spec.restore(exported)(ids), strict=True):
        assert torch.equal(mine, theirs)
    moved = Path(shutil.move(copy, tmp_path / "moved"))
    one_line_error(lambda: spec.restore(exported), "gone from", "FM_CLIP_PATH")
    monkeypatch.setenv("FM_CLIP_PATH", str(moved))  # the same weights elsewhere: found by their digest
    assert spec.restore(exported).directory == moved.resolve()
    with open(moved / "model.safetensors", "ab") as handle:
        handle.write(b"\0")
    one_line_error(lambda: spec.restore(exported), "changed since this model was trained")


def test_clip_path_problems_are_one_line_errors(clip_dir, tmp_path, monkeypatch):
    one_line_error(clip, "needs a local directory", "FM_CLIP_PATH")
    one_line_error(lambda: clip(path=tmp_path / "nowhere"), "no CLIP text encoder at", "save_pretrained")
    empty = shutil.copytree(clip_dir, tmp_path / "no-weights", ignore=shutil.ignore_patterns("*.safetensors"))
    one_line_error(lambda: clip(path=empty), "holds no CLIP weights", "--text-encoder-path")
    (empty / "model.safetensors").write_bytes(b"not a safetensors file")
    one_line_error(lambda: clip(path=empty), "could not load the CLIP text encoder")
    monkeypatch.setenv("FM_CLIP_PATH", str(clip_dir))
    assert clip().directory == clip_dir.resolve()


def test_clip_without_transformers_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    one_line_error(lambda: clip(path=tmp_path), "the clip text encoder needs transformers: pip install 'fmcli[clip]'")


# ---- the plugin kind ------------------------------------------------------------------------------------------------


def test_fm_plugins_lists_both_text_encoders():
    rows = {row["name"]: row for row in json.loads(fm("plugins", "--json").output)}
    assert rows["fmcli.builtins.text_encoders"]["text_encoders"] == ["builtin", "clip"]
    table = fm("plugins").output
    assert [line.split()[2] for line in table.splitlines() if line.split()[:2] == ["text", "encoder"]] == [
        "builtin", "clip"]  # fmt: skip


@pytest.fixture
def inline_plugin():
    class Plugin:
        @hookimpl
        def fm_register_text_encoders(self, register):
            register(TextEncoderSpec(name="bag-of-words", description="counts words (tests)", build=builtin,
                                     restore=lambda exported: None))  # fmt: skip

    registry.text_encoders()
    plugin = Plugin()
    pm.register(plugin, name="bag-plugin")
    registry.reset()
    yield
    pm.unregister(plugin)
    registry.reset()


def test_a_text_encoder_plugin_is_registered_and_listed(inline_plugin):
    assert list(registry.text_encoders()) == ["bag-of-words", "builtin", "clip"]
    assert registry.get_text_encoder("bag-of-words").build(CAPTIONS).name == "builtin"
    rows = {row["name"]: row for row in json.loads(fm("plugins", "--json").output)}
    assert rows["bag-plugin"]["text_encoders"] == ["bag-of-words"]
    one_line_error(lambda: registry.get_text_encoder("clap"), "unknown text encoder 'clap'", "Did you mean 'clip'?")


def test_fm_train_with_a_local_clip_then_samples_a_prompt_offline(clip_dir, tmp_path):
    """The whole path with CLIP: training records the folder and its digest (not its weights), sampling loads it
    again from there, and nothing reaches for the network (``no_network``)."""
    import json

    from conftest import TINY_UNET, captioned_folder, train_tiny
    from helpers import fm

    from fmcli.io.checkpoint import read_header

    data = captioned_folder(tmp_path / "squares")
    model = {**TINY_UNET, "channel_mults": [1, 2], "attention_resolutions": []}
    run = train_tiny(tmp_path / "run", data=str(data), image_size=8, model=model, hflip=False, cache=False,
                     text_encoder="clip", text_encoder_path=str(clip_dir))  # fmt: skip
    shapes, meta = read_header(run)
    assert meta.model_config["text"]["name"] == "clip" and meta.model_config["text"]["path"] == str(clip_dir.resolve())
    assert not any("clip" in name.lower() for name in shapes)  # frozen weights stay in their folder
    result = fm("sample", run, "--prompt", "a red square", "--num", "2", "--steps", "2", "--out",
                tmp_path / "s.png", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["prompts"] == ["a red square"]
