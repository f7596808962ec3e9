"""Ctrl-C on a real `python -m fmcli train` process: the first SIGINT checkpoints and stops (exit 130,
resumable exactly); a second SIGINT while that checkpoint is being written aborts at once and leaves
no half-written file. (SIGTERM: tests/test_resume.py.)

The processes poll files, never sleep fixed times: training has started when metrics.jsonl has a
line (--log-every 1); the checkpoint is being written when the child says so (see WRITE_HOOK).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import MLP, assert_identical, assert_one_line_error, fm

from fmcli.io.checkpoint import load_checkpoint, read_checkpoint
from fmcli.training.loop import train

REPO = Path(__file__).resolve().parents[1]
TOTAL = 100_000  # never reached: the run is interrupted a few steps in

# `python -m fmcli` with one addition: before a step checkpoint is renamed into place (the atomic write's
# last act: the complete temp file becomes step-N.safetensors), the child writes the destination's path
# to the marker file and waits (up to 30 s) for a signal. os.replace is patched, not anything of fmcli's.
WRITE_HOOK = r"""
import os, re, runpy, sys, time
marker = sys.argv.pop(1)
real_replace = os.replace

def replace(src, dst, *args, **kwargs):
    if re.fullmatch(r"step-\d+\.safetensors", os.path.basename(os.fspath(dst))):
        with open(marker + ".part", "w") as handle:
            handle.write(os.fspath(dst))
        real_replace(marker + ".part", marker)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.01)
    return real_replace(src, dst, *args, **kwargs)

os.replace = replace
sys.argv[0] = "fm"
runpy.run_module("fmcli", run_name="__main__", alter_sys=True)
"""


def start_training(tmp_path: Path, run: Path, *prefix: str) -> subprocess.Popen:
    toml = tmp_path / "train.toml"
    toml.write_text("model = { hidden = 32, depth = 2 }\n")
    options = [
        "train",
        "moons",
        "--config",
        str(toml),
        "--out",
        str(run),
        "--steps",
        str(TOTAL),
        "--batch-size",
        "16",
        "--warmup-steps",
        "2",
        "--lr-schedule",
        "constant",
        "--log-every",
        "1",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "1000000",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "FM_LOAD_PLUGINS": ""}
    return subprocess.Popen(
        [sys.executable, *prefix, *options],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, process: subprocess.Popen, what: str) -> None:
    """Poll until ``path`` exists with content; fail if the process ends first (or after 120 s)."""
    deadline = time.monotonic() + 120
    while not (path.exists() and path.stat().st_size):
        if process.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {process.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, f"no sign of {what} after 120 s"
        time.sleep(0.005)


def test_sigint_checkpoints_stops_with_130_and_resumes_exactly(tmp_path):
    """One Ctrl-C: the step in flight finishes, a checkpoint is written, exit 130 with the resume hint."""
    run = tmp_path / "run"
    process = start_training(tmp_path, run, "-m", "fmcli")
    wait_for(run / "metrics.jsonl", process, "the first logged step")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, stderr

    step = read_checkpoint(run / "last.safetensors")[1].step
    assert 0 < step < TOTAL
    checkpoint = run / f"step-{step:07d}.safetensors"
    assert stderr.strip().splitlines()[-1] == (
        f"SIGINT: stopped at step {step}; checkpoint {checkpoint}. Resume with: fm train --resume {run}"
    )
    assert load_checkpoint(run / "last.safetensors").meta.step == step
    # Constant learning rate: resuming to step + 3 must equal 3 more steps in one go (the planned total may change).
    resumed = train({"steps": step + 3}, resume=str(run))
    whole = train(
        {
            "data": "moons",
            "model": MLP,
            "steps": step + 3,
            "batch_size": 16,
            "warmup_steps": 2,
            "lr_schedule": "constant",
            "out": str(tmp_path / "whole"),
            "log_every": 1000,
            "sample_every": 0,
            "checkpoint_every": 1000000,
        }
    )
    assert resumed.step == step + 3
    assert_identical(whole.checkpoint, resumed.checkpoint)


def test_second_sigint_while_checkpointing_aborts_without_a_partial_file(tmp_path):
    """A second Ctrl-C during the checkpoint write raises at once: exit 130, "interrupted", no file half there."""
    run, marker = tmp_path / "run", tmp_path / "writing"
    process = start_training(tmp_path, run, "-c", WRITE_HOOK, str(marker))
    wait_for(run / "metrics.jsonl", process, "the first logged step")
    process.send_signal(signal.SIGINT)  # finish the step, then checkpoint and stop ...
    wait_for(marker, process, "the checkpoint write")
    process.send_signal(signal.SIGINT)  # ... but a second Ctrl-C aborts, even mid-write
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, stderr
    # Aborted, not the orderly stop: it must not claim a checkpoint (the hook would have let the write
    # finish after 30 s had the second signal been ignored).
    assert stderr.strip().splitlines()[-1] == "interrupted", stderr
    assert "stopped at step" not in stderr
    assert not Path(marker.read_text()).exists()  # the interrupted write left nothing ...
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]  # ... not even its temp file
    for checkpoint in run.glob("step-*.safetensors"):  # and whatever is there is whole
        read_checkpoint(checkpoint)
    assert not (run / "last.safetensors").exists()


def test_a_run_folder_in_use_refuses_a_second_trainer_and_a_killed_ones_lock_does_not_block(tmp_path):
    """Two `fm train --resume` of one run (a requeued cluster job beside a live one) must not both write into it:
    the second is refused in one line naming the first's process. A trainer killed with SIGKILL leaves its lock
    file behind, and the next resume still works (the kernel dropped the lock with the process)."""
    run = tmp_path / "run"
    train({"data": "moons", "model": MLP, "steps": 2, "batch_size": 16, "warmup_steps": 1, "out": str(run),
           "sample_every": 0, "lr_schedule": "constant"})  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "FM_LOAD_PLUGINS": ""}
    command = [sys.executable, "-m", "fmcli", "train", "--resume", str(run), "--steps", "1000000"]
    live = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while f"pid {live.pid} " not in ((run / ".lock").read_text() if (run / ".lock").exists() else ""):
            assert live.poll() is None, live.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the live trainer never took the run folder's lock"
            time.sleep(0.01)
        refused = fm("train", "--resume", run, "--steps", "5")
        assert_one_line_error(refused, f"run folder {run} is in use by pid {live.pid}", f"fm train --resume {run}")
        before = sorted(p.name for p in run.iterdir())
    finally:
        live.kill()
        live.communicate(timeout=60)
    assert sorted(p.name for p in run.iterdir()) == before  # the refused trainer wrote nothing
    assert (run / ".lock").exists()  # the killed process's lock file is still there ...
    again = fm("train", "--resume", run, "--steps", "3")
    assert again.exit_code == 0, again.output  # ... and blocks nobody
    assert read_checkpoint(run / "last.safetensors")[1].step == 3
