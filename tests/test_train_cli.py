"""`fm train` on the command line: bad input gives one line on stderr and writes nothing; a config
file sits between the defaults and the command line; `fm info` shows the resolved config."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, fm
from PIL import Image

from fmcli.training.loop import train


def write_pngs(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / f"{k}.png")


def make_empty(root: Path) -> None:
    (root / "empty").mkdir()


def make_non_images(root: Path) -> None:
    (root / "junk").mkdir()
    for name in ("a.png", "b.jpg"):
        (root / "junk" / name).write_bytes(b"this is not an image")


def make_images(root: Path) -> None:
    write_pngs(root / "pictures", 2, 32)


BAD_INPUT = [
    (["mnist-tiny"], None, "unknown data set 'mnist-tiny'. Did you mean 'mnist-mini'? Known: "),
    (["./empty"], make_empty, "no image files under ./empty"),
    (["./junk"], make_non_images, "none of the 2 image files under ./junk could be read"),
    (
        ["./pictures", "--image-size", "30", "--channel-mults", "1,2,2"],
        make_images,
        "image size 30 is not divisible by 4, the model's total downsampling; use 28 or 32",
    ),
    (["moons", "--precision", "fp8"], None, "--precision must be one of fp32, bf16, fp16, not 'fp8'"),
    (["moons", "--steps", "0"], None, "--steps must be at least 1 (got 0)"),
    (["moons", "--batch-size", "10", "--grad-accum", "4"], None, "--batch-size 10 is not divisible by --grad-accum 4"),
    (["moons", "--config", "missing.toml"], None, "config file missing.toml does not exist"),
    (["--resume", "runs/nothing"], None, "--resume runs/nothing: runs/nothing does not exist"),
    (["--resume", "latest"], None, "--resume latest: no run with a last.safetensors under runs/"),
]


@pytest.mark.parametrize("args, prepare, fragment", BAD_INPUT, ids=[" ".join(case[0]) for case in BAD_INPUT])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, args, prepare, fragment):
    monkeypatch.chdir(tmp_path)
    if prepare:
        prepare(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_one_line_error(fm("train", *args, "--sample-every", "0"), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no runs/ folder


def test_unknown_data_set_lists_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = fm("train", "no-such-data")
    for known in ("mnist", "mnist-mini", "moons", "8gaussians"):
        assert known in result.output


def test_an_existing_run_is_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(
        {
            "data": "moons",
            "model": {"hidden": 16, "depth": 1},
            "steps": 1,
            "batch_size": 8,
            "out": "runs/mine",
            "sample_every": 0,
        }
    )
    files = {p.name: p.read_bytes() for p in Path("runs/mine").iterdir()}
    assert_one_line_error(
        fm("train", "moons", "--out", "runs/mine", "--steps", "1"),
        "runs/mine already holds a run; continue it with --resume runs/mine, or choose another --out",
    )
    assert {p.name: p.read_bytes() for p in Path("runs/mine").iterdir()} == files


def test_config_file_then_command_line_and_fm_info_shows_the_result(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("train.toml").write_text(
        'data = "8gaussians"\nlr = 0.004\nbatch-size = 64\nsteps = 50\nmodel = { hidden = 16, depth = 1 }\n'
    )
    result = fm(
        "train",
        "moons",
        "--config",
        "train.toml",
        "--batch-size",
        "16",
        "--steps",
        "2",
        "--sample-every",
        "0",
        "--out",
        "runs/x",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["step"] == 2 and summary["checkpoint"] == "runs/x/step-0000002.safetensors"
    saved = json.loads(Path("runs/x/config.json").read_text())
    assert (saved["data"], saved["lr"], saved["batch_size"], saved["steps"]) == ("moons", 0.004, 16, 2)

    shown = fm("info", "runs/x", "--json")
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.output)
    assert info["train_config"] == saved and info["step"] == 2
    assert info["model_config"]["hidden"] == 16 and info["model_config"]["depth"] == 1


def test_resume_needs_allow_change_for_new_hyper_parameters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(
        {
            "data": "moons",
            "model": {"hidden": 16, "depth": 1},
            "steps": 1,
            "batch_size": 8,
            "out": "runs/r",
            "sample_every": 0,
        }
    )
    assert_one_line_error(fm("train", "--resume", "runs/r", "--steps", "2", "--lr", "0.01"), "pass --allow-change")
    assert_one_line_error(
        fm("train", "--resume", "runs/r", "--steps", "2", "--base-channels", "8"),
        "cannot resume: the run was trained with a different model or data",
    )
    result = fm("train", "--resume", "runs/r", "--steps", "2", "--lr", "0.01", "--allow-change")
    assert result.exit_code == 0, result.output
    assert "done: step 2" in result.output
