"""DDP through the real launcher: ``torchrun --standalone --nproc_per_node=2 -m fmcli train`` (gloo, CPU).

Every rank draws the same global batch (same indices, t and noise) and trains on its half; DDP
averages the gradients, so 2 ranks at B/2 do the maths of 1 process at B up to the order of the
all-reduce sums: the weights agree to float32 rounding (measured max |diff| ~1e-7 after 5 steps).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from fmcli.io.checkpoint import read_checkpoint, split_prefix
from fmcli.training.loop import train

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # max |weight difference|, 2 ranks vs 1 process, after 5 AdamW steps


def torchrun(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "fmcli",
        "train",
        *args,
    ]
    # --standalone finds a free port itself. One thread per rank: two gloo ranks on two cores
    # must not fight over OpenMP threads.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "FM_LOAD_PLUGINS": ""}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def metric_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_match_one_process_and_resume(tmp_path):
    (tmp_path / "train.toml").write_text("model = { hidden = 32, depth = 2 }\n")
    common = [
        "--batch-size",
        "32",
        "--warmup-steps",
        "2",
        "--lr-schedule",
        "constant",
        "--log-every",
        "1",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "3",
    ]
    first = torchrun(tmp_path, "moons", "--config", "train.toml", "--out", "runs/ddp", "--steps", "3", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    assert metric_steps(run) == [1, 2, 3]  # one line per step: rank 1 writes nothing
    # Resume on both ranks, with micro-batches this time (DDP's no_sync path).
    second = torchrun(tmp_path, "--resume", "runs/ddp", "--steps", "5", "--grad-accum", "2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert metric_steps(run) == [1, 2, 3, 4, 5]
    for result in (first, second):  # rank 0 speaks for everyone
        assert result.stderr.count("done: step") == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "train.toml"]
    assert sorted(p.name for p in run.iterdir()) == [
        ".lock",  # the run folder's lock, released when training ended
        "config.json",
        "guide.safetensors",  # --guide-at 0.25 of the 3 planned steps: step 1, written once (rank 0)
        "last.safetensors",
        "metrics.jsonl",
        "step-0000003.safetensors",
        "step-0000005.safetensors",
    ]
    assert "world_size" not in json.loads((run / "config.json").read_text())

    torch.set_num_threads(1)
    single = train(
        {
            "data": "moons",
            "model": {"hidden": 32, "depth": 2},
            "batch_size": 32,
            "warmup_steps": 2,
            "lr_schedule": "constant",
            "steps": 5,
            "checkpoint_every": 3,
            "sample_every": 0,
            "out": str(tmp_path / "single"),
        }
    )
    for step in (3, 5):
        ddp, _ = read_checkpoint(run / f"step-{step:07d}.safetensors")
        one, _ = read_checkpoint(single.run_dir / f"step-{step:07d}.safetensors")
        assert ddp.keys() == one.keys()
        for group in ("model", "ema", "optim"):
            a, b = split_prefix(ddp, group), split_prefix(one, group)
            worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
            print(f"2 ranks vs 1 process, step {step}, {group}: max |diff| {worst:.2e}")
            assert worst < TOLERANCE, (step, group, worst)
