"""Exact resume: N steps + N resumed steps are bit-identical to 2N steps in one go (CPU), also
after a real SIGTERM; and resuming as something else is refused with a clear error.

Every random draw of step k comes from generators seeded by (seed, epoch) and (seed, k), so a
checkpoint needs no RNG state: weights, EMA, AdamW moments and the step are enough.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import MLP, assert_identical
from helpers import moons as moons_of
from PIL import Image

from fmcli.errors import FMError
from fmcli.io.checkpoint import load_checkpoint, read_checkpoint
from fmcli.training.events import Callbacks, TrainingInterrupted
from fmcli.training.loop import train

REPO = Path(__file__).resolve().parents[1]


def moons(out: Path, **overrides) -> dict:
    return moons_of(out, **({"steps": 6} | overrides))


def test_constant_schedule_n_then_n_more_equals_2n(tmp_path):
    whole = train(moons(tmp_path / "whole", lr_schedule="constant"))
    train(moons(tmp_path / "split", lr_schedule="constant", steps=3))
    resumed = train({"steps": 6}, resume=str(tmp_path / "split"))  # the step count may always change
    assert resumed.step == 6
    assert_identical(whole.checkpoint, resumed.checkpoint)


class StopAt(Callbacks):
    """Send ourselves SIGTERM after a given step, as a cluster scheduler would."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, step: int) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_cosine_schedule_interrupted_and_resumed_equals_one_run(tmp_path):
    whole = train(moons(tmp_path / "whole"))
    with pytest.raises(TrainingInterrupted) as stop:
        train(moons(tmp_path / "split"), callbacks=StopAt(2))
    assert stop.value.signum == signal.SIGTERM and stop.value.step == 3  # the step in flight finishes
    assert stop.value.checkpoint == tmp_path / "split" / "step-0000003.safetensors"
    resumed = train({}, resume=str(tmp_path / "split"))  # no --steps: the planned total from the run
    assert_identical(whole.checkpoint, resumed.checkpoint)
    # The metrics log continues where it stopped.
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6]


def test_resuming_an_older_checkpoint_reproduces_the_newer_one(tmp_path):
    run = tmp_path / "run"
    train(moons(run, steps=4, checkpoint_every=2, keep=5))
    later = read_checkpoint(run / "step-0000004.safetensors")[0]
    train({}, resume=str(run / "step-0000002.safetensors"))
    again = read_checkpoint(run / "last.safetensors")[0]
    assert all(torch.equal(later[name], again[name]) for name in later)


def test_resume_latest_picks_the_newest_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(moons(Path("runs/old"), steps=2))
    time.sleep(0.01)
    train(moons(Path("runs/new"), steps=2))
    result = train({"steps": 3}, resume="latest")
    assert result.run_dir == Path("runs/new") and result.step == 3
    assert read_checkpoint(Path("runs/old/last.safetensors"))[1].step == 2


def test_a_finished_run_needs_more_steps(tmp_path):
    run = tmp_path / "run"
    train(moons(run, steps=2))
    config = (run / "config.json").read_bytes()
    with pytest.raises(FMError, match="already at step 2 of 2; pass a larger --steps"):
        train({}, resume=str(run))
    assert (run / "config.json").read_bytes() == config


def test_epochs_run_resumes_with_steps(tmp_path):
    run = tmp_path / "run"
    first = train(moons(run, steps=None, epochs=0.002))  # 1250 batches per epoch -> 3 steps
    assert first.step == 3
    assert train({"steps": 5}, resume=str(run)).step == 5


# ----------------------------------------------------------------------------- refusing to resume as something else


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "run"
    train(moons(run, steps=2))
    return run


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"model": {"hidden": 64, "depth": 2}}, "model: {'hidden': 32, 'depth': 2} -> {'hidden': 64, 'depth': 2}"),
        ({"data": "8gaussians"}, "data: 'moons' -> '8gaussians'"),
    ],
)
def test_resuming_with_another_model_or_data_is_refused(finished_run, change, fragment):
    before = (finished_run / "last.safetensors").read_bytes()
    with pytest.raises(FMError, match="cannot resume: the run was trained with a different model or data") as caught:
        train({"steps": 4, **change}, resume=str(finished_run), allow_change=True)  # not even with --allow-change
    assert fragment in str(caught.value)
    assert (finished_run / "last.safetensors").read_bytes() == before


def test_changing_hyper_parameters_needs_allow_change(finished_run):
    with pytest.raises(FMError, match=r"changed training options \(lr 0.002 -> 0.0005\); pass --allow-change"):
        train({"steps": 3, "lr": 5e-4}, resume=str(finished_run))
    result = train({"steps": 3, "lr": 5e-4, "lr_schedule": "constant"}, resume=str(finished_run), allow_change=True)
    assert result.step == 3
    saved = read_checkpoint(result.checkpoint)[1].train_config
    assert saved["lr"] == 5e-4 and saved["lr_schedule"] == "constant"
    assert json.loads((finished_run / "config.json").read_text())["lr"] == 5e-4


def test_a_changed_image_folder_is_refused(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def add_images(count: int, start: int) -> None:
        for k in range(start, start + count):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{k}.png")

    add_images(4, 0)
    tiny = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_resolutions": []}
    train(moons(tmp_path / "run", data=str(folder), image_size=8, model=tiny, batch_size=4, steps=1))
    add_images(2, 4)
    with pytest.raises(FMError, match="the data differs from the data it was trained on \\(size: 4 -> 6\\)"):
        train({"steps": 2}, resume=str(tmp_path / "run"))


# ----------------------------------------------------------------------------- a real SIGTERM


def test_sigterm_to_a_real_training_process_checkpoints_and_resumes_exactly(tmp_path):
    """The strongest test: kill -TERM a running `python -m fmcli train`, resume, compare with one run."""
    total = 120
    toml = tmp_path / "train.toml"
    toml.write_text("model = { hidden = 32, depth = 2 }\n")
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "fmcli",
        "train",
        "moons",
        "--config",
        str(toml),
        "--out",
        str(run),
        "--steps",
        str(total),
        "--batch-size",
        "16",
        "--warmup-steps",
        "2",
        "--log-every",
        "1",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "100000",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "FM_LOAD_PLUGINS": ""}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.stat().st_size) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr

    last = run / "last.safetensors"
    step = read_checkpoint(last)[1].step
    assert 0 < step < total, "the signal came too late to test anything"
    message = stderr.strip().splitlines()[-1]
    assert message == (
        f"SIGTERM: stopped at step {step}; checkpoint {run / f'step-{step:07d}.safetensors'}. "
        f"Resume with: fm train --resume {run}"
    )
    assert load_checkpoint(last).meta.step == step  # loads as a model too

    resumed = train({}, resume=str(run))
    whole = train(
        {
            "data": "moons",
            "model": MLP,
            "steps": total,
            "batch_size": 16,
            "warmup_steps": 2,
            "out": str(tmp_path / "whole"),
            "log_every": 1000,
            "sample_every": 0,
            "checkpoint_every": 100000,
        }
    )
    assert resumed.step == total
    assert_identical(whole.checkpoint, resumed.checkpoint)
