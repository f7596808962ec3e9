"""``fm eval`` end to end on tiny checkpoints: reports, sweeps, the real-data floor and bad input."""

import json

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

import fmcli.eval.classifier as classifier_module
from fmcli.cli.eval import eval_command
from fmcli.io.checkpoint import FORMAT_VERSION, CheckpointMeta, save_checkpoint
from fmcli.models import build_model

runner = CliRunner()
app = typer.Typer()


@app.callback()
def _root() -> None:
    """Test app holding only the eval command."""


app.command("eval")(eval_command)


def write_checkpoint(path, model_config: dict, data: dict, train_config: dict, label_dropout: float = 0.0):
    torch.manual_seed(0)
    model = build_model(model_config)
    state = model.state_dict()
    tensors = {f"ema.{k}": v.clone() for k, v in state.items()} | {f"model.{k}": v.clone() for k, v in state.items()}
    meta = CheckpointMeta(
        format_version=FORMAT_VERSION,
        model_config=model_config,
        data=data,
        step=0,
        label_dropout=label_dropout,
        train_config=train_config,
    )
    save_checkpoint(path, tensors, meta)
    return path


@pytest.fixture(scope="module")
def points_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "points.safetensors"
    return write_checkpoint(
        path,
        {"name": "mlp", "dim": 2, "hidden": 32, "depth": 2, "num_classes": 0},
        {
            "name": "checkerboard",
            "split": "train",
            "kind": "points",
            "shape": [2],
            "num_classes": 0,
            "class_names": None,
        },
        {"data": "checkerboard"},
    )


@pytest.fixture(scope="module")
def image_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "digits.safetensors"
    return write_checkpoint(
        path,
        {
            "name": "unet",
            "in_channels": 1,
            "image_size": 28,
            "base_channels": 8,
            "channel_mults": [1, 2],
            "num_res_blocks": 1,
            "attention_resolutions": [],
            "num_classes": 10,
            "num_groups": 4,
        },
        {
            "name": "mnist-mini",
            "split": "train",
            "kind": "image",
            "shape": [1, 28, 28],
            "num_classes": 10,
            "class_names": [str(i) for i in range(10)],
        },
        {"data": "mnist-mini"},
        label_dropout=0.1,
    )


@pytest.fixture
def fast_classifier(monkeypatch):
    """Train the cached classifier on 640 images for one epoch: these tests check plumbing, not accuracy."""
    original = classifier_module.train_classifier

    def quick(images, labels, num_classes, **kwargs):
        return original(images[:640], labels[:640], num_classes, **{**kwargs, "epochs": 1})

    monkeypatch.setattr(classifier_module, "train_classifier", quick)


def invoke(*args: str):
    # Few KID subsets keep the tests fast (the kernel matrices are most of the cost at these sizes).
    return runner.invoke(app, ["eval", "--kid-subsets", "5", *args])


def test_points_report_has_every_figure_with_its_sample_count_and_the_nll(points_checkpoint):
    result = invoke(
        str(points_checkpoint),
        "--num",
        "300",
        "--steps",
        "4",
        "--nll",
        "--nll-samples",
        "20",
        "--nll-solver",
        "rk4",
        "--nll-steps",
        "8",
        "--device",
        "cpu",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["extractor"]["name"] == "points"
    for name in ("fid", "kid", "precision", "recall"):
        assert report["metrics"][name]["num_samples"] == 300
        assert np.isfinite(report["metrics"][name]["value"])
    assert report["metrics"]["fid"]["value"] > 0.1  # an untrained model is far from the checkerboard
    assert report["sampling"]["nfe"] > 0 and report["sampling"]["seconds"] >= 0
    assert report["device"] == "cpu"
    assert report["options"]["num_samples"] == 300
    nll = report["nll"]
    assert nll["divergence"] == "exact" and nll["num_samples"] == 20 and nll["nfe"] == 8 * 4
    assert np.isfinite(nll["bits_per_dim"]) and nll["dequantisation"] is None


def test_points_table_names_figures_and_counts(points_checkpoint):
    result = invoke(str(points_checkpoint), "--num", "150", "--steps", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "FID" in result.stdout and "KID" in result.stdout and "150" in result.stdout


def test_sweep_runs_the_grid_with_the_same_seed_and_writes_json_and_plot(points_checkpoint, tmp_path):
    out = tmp_path / "sweep"
    result = invoke(
        str(points_checkpoint),
        "--sweep",
        "euler,heun,dopri5",
        "--steps",
        "2,4",
        "--num",
        "120",
        "--rtol",
        "1e-3",
        "--atol",
        "1e-3",
        "--metrics",
        "fid,kid",
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "sweep.json").read_text())
    grid = [(run["solver"], run["steps"]) for run in report["runs"]]
    assert grid == [("euler", 2), ("euler", 4), ("heun", 2), ("heun", 4), ("dopri5", None)]
    nfe = {(run["solver"], run["steps"]): run["nfe"] for run in report["runs"]}
    assert nfe[("euler", 2)] == 2 and nfe[("euler", 4)] == 4 and nfe[("heun", 4)] > nfe[("heun", 2)]
    assert Image.open(out / "sweep.png").size[0] > 100
    assert "dopri5" in result.stdout


def test_image_report_has_class_accuracy_histogram_and_uses_the_reference_cache(image_checkpoint, fast_classifier):
    args = [str(image_checkpoint), "--num", "130", "--solver", "euler", "--steps", "1", "--device", "cpu", "--json"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["extractor"]["name"] == "classifier" and report["extractor"]["dim"] == 128
    assert 0 < report["extractor"]["test_accuracy"] <= 1
    assert report["metrics"]["fid"]["num_samples"] == 130
    conditional = report["conditional"]
    assert conditional["num_samples"] == 130 and len(conditional["per_class"]) == 10
    assert 0 <= conditional["accuracy"] <= 1
    assert report["class_histogram"] is None  # unconditional samples only on request (they double the cost)
    assert report["reference"]["cached"] is False
    second = invoke(*args, "--class-histogram", "--cfg", "2")
    assert second.exit_code == 0, second.output
    assert second.exit_code == 0, second.output
    again = json.loads(second.stdout)
    assert again["reference"]["cached"] is True
    assert again["conditional"]["cfg"] == 2.0
    histogram = again["class_histogram"]  # drawn without a label, so without guidance
    assert histogram["source"] == "unconditional samples" and sum(histogram["counts"].values()) == 130
    third = invoke(*args)
    assert json.loads(third.stdout)["metrics"]["fid"]["value"] == pytest.approx(report["metrics"]["fid"]["value"])


def test_real_floor_scores_train_against_test(fast_classifier):
    result = invoke("--real", "--data", "mnist-mini", "--num", "200", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["real"] is True and report["metrics"]["fid"]["num_samples"] == 200
    assert report["sampling"]["nfe"] == 0
    assert report["metrics"]["precision"]["value"] > 0.5  # real digits lie on the real manifold


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num", "50", "--steps", "2"], "at least 129"),
        (["--data", "checkerboard"], "shape"),
        (["--metrics", "fid,bogus"], "unknown metric"),
        (["--steps", "2,4"], "one number"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(image_checkpoint, fast_classifier, args, message):
    result = invoke(str(image_checkpoint), "--device", "cpu", *args)
    assert result.exit_code != 0
    assert message in result.output


def test_unknown_data_set_and_missing_test_split_are_errors(tmp_path):
    result = invoke("--real", "--data", "no-such-data")
    assert result.exit_code != 0 and "unknown data set" in result.output
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((28, 28), i * 60, dtype=np.uint8)).save(folder / f"{i}.png")
    checkpoint = write_checkpoint(
        tmp_path / "folder.safetensors",
        {
            "name": "unet",
            "in_channels": 1,
            "image_size": 28,
            "base_channels": 8,
            "channel_mults": [1, 2],
            "num_res_blocks": 1,
            "attention_resolutions": [],
            "num_classes": 0,
            "num_groups": 4,
        },
        {
            "name": "images",
            "split": "train",
            "kind": "image",
            "shape": [1, 28, 28],
            "num_classes": 0,
            "class_names": None,
        },
        {"data": str(folder), "image_size": 28, "channels": 1},
    )
    result = invoke(str(checkpoint), "--nll", "--metrics", "kid", "--num", "4", "--device", "cpu")
    assert result.exit_code != 0 and "test split" in result.output
