"""The `fm` command end to end on tiny checkpoints: outputs, JSON, and one-line errors."""

import json

import numpy as np
import pytest
from conftest import train_tiny
from helpers import assert_one_line_error, fm
from PIL import Image


@pytest.fixture(scope="module")
def unconditional_checkpoint(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs") / "uncond", conditional=False)


@pytest.fixture(scope="module")
def no_dropout_checkpoint(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs") / "nodrop", label_dropout=0.0)


def test_sample_png_grid_npz_and_folder(tiny_checkpoint, tmp_path):
    result = fm(
        "sample", tiny_checkpoint, "--class", "6", "--num", "6", "--steps", "2", "--out", tmp_path / "six.png", "--json"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["nfe"] == 4 and summary["num"] == 6
    assert Image.open(tmp_path / "six.png").mode == "L"

    assert (
        fm(
            "sample", tiny_checkpoint, "--class", "all", "--num", "20", "--steps", "2", "--out", tmp_path / "all.npz"
        ).exit_code
        == 0
    )
    arrays = np.load(tmp_path / "all.npz")
    assert arrays["images"].shape == (20, 28, 28, 1) and arrays["images"].dtype == np.uint8
    assert list(np.bincount(arrays["labels"])) == [2] * 10

    assert (
        fm(
            "sample", tiny_checkpoint, "--num", "3", "--steps", "1", "--solver", "euler", "--out", tmp_path / "pngs"
        ).exit_code
        == 0
    )
    assert len(list((tmp_path / "pngs").glob("*.png"))) == 3


def test_sample_is_reproducible_through_the_cli(tiny_checkpoint, tmp_path):
    for name in ("a", "b"):
        assert (
            fm(
                "sample",
                tiny_checkpoint,
                "--class",
                "3",
                "--num",
                "4",
                "--steps",
                "3",
                "--seed",
                "5",
                "--out",
                tmp_path / f"{name}.npz",
            ).exit_code
            == 0
        )
    assert np.array_equal(np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"])


@pytest.fixture(scope="module")
def named_classes_checkpoint(tmp_path_factory):
    """A tiny model of a folder whose class names are numbers in another order than their indices:
    sorted, the folders 10, 2 and 7 are classes 0, 1 and 2."""
    root = tmp_path_factory.mktemp("named") / "pictures"
    rng = np.random.default_rng(0)
    for name in ("7", "10", "2"):
        (root / name).mkdir(parents=True)
        for k in range(4):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{k}.png")
    return train_tiny(tmp_path_factory.mktemp("runs") / "named", data=str(root), image_size=8)


@pytest.mark.parametrize("spec, label", [("2", 1), ("10", 0), ("7", 2), ("all", None)])
def test_sample_a_class_by_name_with_guidance(named_classes_checkpoint, tmp_path, spec, label):
    """--class NAME means the class of that name, even when the name is also a valid index: "2" is the folder
    named 2 (class 1), not class 2. The labels in the .npz say which class each sample was drawn for."""
    out = tmp_path / "g.npz"
    result = fm("sample", named_classes_checkpoint, "--class", spec, "--cfg", "2", "--num", "6", "--steps", "1",
                "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    assert saved["images"].shape == (6, 8, 8, 3) and saved["images"].dtype == np.uint8
    expected = [label] * 6 if label is not None else [0, 0, 1, 1, 2, 2]
    assert saved["labels"].tolist() == expected


def test_sample_toy_scatter(toy_checkpoint, tmp_path):
    result = fm("sample", toy_checkpoint, "--num", "200", "--steps", "2", "--out", tmp_path / "toy.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "toy.png").size == (512, 512)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--class", "10"], ["out of range", "0..9"]),
        (["--class", "seven"], ["unknown class", "'seven'"]),
        (["--solver", "huen"], ["unknown solver", "Did you mean 'heun'", "euler"]),
        (["--num", "0"], ["--num"]),
    ],
)
def test_sample_bad_options(tiny_checkpoint, tmp_path, args, fragments):
    result = fm("sample", tiny_checkpoint, *args, "--out", tmp_path / "x.png")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "x.png").exists()


def test_sample_class_on_unconditional_model(unconditional_checkpoint, tmp_path):
    assert_one_line_error(
        fm("sample", unconditional_checkpoint, "--class", "3", "--out", tmp_path / "x.png"), "unconditional"
    )


def test_cfg_needs_label_dropout(no_dropout_checkpoint, tmp_path):
    assert_one_line_error(
        fm("sample", no_dropout_checkpoint, "--class", "3", "--cfg", "3", "--out", tmp_path / "x.png"), "label dropout"
    )


def test_sample_bad_checkpoints(tmp_path, tiny_checkpoint, monkeypatch):
    assert_one_line_error(fm("sample", tmp_path / "missing.safetensors"), "does not exist")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(tiny_checkpoint.read_bytes()[:500])
    assert_one_line_error(fm("sample", broken, "--out", tmp_path / "x.png"), "not a readable safetensors")

    def never(*args, **kwargs):
        raise AssertionError("sampled before saying the output folder is missing")

    monkeypatch.setattr("fmcli.sampling.generate.generate", never)  # said before sampling, not after it
    for out in ("x.png", "x.npz"):
        assert_one_line_error(fm("sample", tiny_checkpoint, "--out", tmp_path / "nowhere" / out), "does not exist")


def test_info_table_and_json(tiny_checkpoint):
    result = fm("info", tiny_checkpoint, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["step"] == 3 and info["data"]["name"] == "mnist-mini" and info["model_config"]["name"] == "unet"
    assert info["train_config"]["batch_size"] == 16
    table = fm("info", tiny_checkpoint)
    assert table.exit_code == 0 and "mnist-mini" in table.output


def test_plugins_lists_builtins_with_what_they_register():
    result = fm("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert "heun" in rows["fmcli.builtins.solvers"]["solvers"]
    assert "mnist-mini" in rows["fmcli.builtins.datasets"]["datasets"]
    assert {"unet", "mlp"} <= set(rows["fmcli.builtins.models"]["models"])


def test_help_has_examples():
    for command in ("train", "sample", "info"):
        result = fm(command, "--help")
        assert result.exit_code == 0 and ("Example" in result.output), command


def test_every_registered_solver_samples_through_the_cli(tiny_checkpoint, tmp_path):
    from fmcli import registry
    from fmcli.sampling.solvers.base import needs_interval

    for name, solver in registry.solvers().items():
        if needs_interval(solver):  # meanflow: refused for a model without the interval input, in one line
            result = fm("sample", tiny_checkpoint, "--num", "2", "--solver", name, "--out", tmp_path / "x.npz")
            assert result.exit_code != 0 and "no interval input" in result.output, (name, result.output)
            continue
        result = fm(
            "sample",
            tiny_checkpoint,
            "--class",
            "2",
            "--num",
            "2",
            "--solver",
            name,
            "--steps",
            "2",
            "--rtol",
            "1e-3",
            "--atol",
            "1e-3",
            "--out",
            tmp_path / f"{name}.npz",
            "--json",
        )
        assert result.exit_code == 0, (name, result.output)
        summary = json.loads(result.output)
        if not solver.adaptive:
            assert summary["nfe"] == 2 * solver.evals_per_step, name
        assert np.load(tmp_path / f"{name}.npz")["images"].shape == (2, 28, 28, 1)


def test_guidance_defaults_to_2_only_where_the_model_supports_it(tiny_checkpoint, no_dropout_checkpoint, tmp_path):
    def used_cfg(checkpoint, *args):
        result = fm("sample", checkpoint, *args, "--num", "2", "--steps", "1", "--out", tmp_path / "g.npz", "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["cfg"]

    assert used_cfg(tiny_checkpoint, "--class", "4") == 2.0
    assert used_cfg(tiny_checkpoint) == 1.0  # unconditional sampling: nothing to guide
    assert used_cfg(tiny_checkpoint, "--class", "4", "--cfg", "1") == 1.0
    assert used_cfg(no_dropout_checkpoint, "--class", "4") == 1.0  # no null class was trained
