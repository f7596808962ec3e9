"""Few-step generation end to end: `fm train --objective meanflow`, `fm distill`, their checkpoints,
default sampling, resume, multi-process training and bad input.

The maths (exact Gaussian average velocities, the jvp, the sampler) is tested in test_meanflow.py;
here the training loop, the commands and the files around them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import MLP, assert_identical, assert_one_line_error, fm, grad_norms, max_difference, weights
from helpers import moons as moons_of

from fmcli.errors import FMError
from fmcli.io.checkpoint import load_checkpoint, read_checkpoint, split_prefix
from fmcli.training.loop import train

REPO = Path(__file__).resolve().parents[1]
TINY_UNET = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_resolutions": [14]}


@pytest.fixture(scope="module")
def teacher(tiny_checkpoint) -> Path:
    """A tiny class-conditional flow U-Net on mnist-mini, with label dropout (so it can be guided): the session's
    (no attention: a distillation's teacher and student passes are most of these tests' time, and the jvp through
    attention is tested in test_meanflow.py and by the memory-saver tests below)."""
    return tiny_checkpoint


@pytest.fixture(scope="module")
def meanflow_checkpoint(tmp_path_factory) -> Path:
    return train(moons(tmp_path_factory.mktemp("runs") / "mf", steps=3, log_every=1000)).checkpoint


def moons(out: Path, **overrides) -> dict:
    return moons_of(out, **({"objective": "meanflow", "log_every": 1} | overrides))


# --- the checkpoint samples with its own few-step sampler -----------------------------------------


def test_a_meanflow_checkpoint_samples_in_few_steps_by_default(meanflow_checkpoint, tmp_path):
    meta = read_checkpoint(meanflow_checkpoint)[1]
    assert meta.model_config["interval"] is True and meta.train_config["objective"] == "meanflow"
    result = fm("sample", meanflow_checkpoint, "--num", "8", "--out", tmp_path / "a.npz", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert (summary["solver"], summary["steps"], summary["nfe"]) == ("meanflow", 4, 4)
    result = fm("sample", meanflow_checkpoint, "--num", "8", "--steps", "1", "--out", tmp_path / "b.npz", "--json")
    assert json.loads(result.output[result.output.index("{") :])["nfe"] == 1
    # Plain ODE solvers still work: without r the model gives its instantaneous velocity u(x, t, t).
    result = fm("sample", meanflow_checkpoint, "--num", "8", "--solver", "heun", "--out", tmp_path / "c.npz",
                      "--json")  # fmt: skip
    assert result.exit_code == 0 and json.loads(result.output[result.output.index("{") :])["nfe"] == 40


def test_fm_info_shows_the_objective_and_the_default_sampler(meanflow_checkpoint):
    result = fm("info", meanflow_checkpoint, "--json")
    info = json.loads(result.output)
    assert info["objective"] == "meanflow" and info["training_guidance"] == 1.0
    assert info["default_sampling"] == {"solver": "meanflow", "steps": 4}


def test_the_sweep_and_animate_take_the_few_step_sampler(meanflow_checkpoint, tmp_path):
    result = fm("eval", meanflow_checkpoint, "--sweep", "meanflow,euler", "--steps", "1,2", "--num", "64",
                      "--metrics", "kid", "--kid-subsets", "2", "--out", tmp_path, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    runs = json.loads(result.output)["runs"]
    assert [(run["solver"], run["steps"], run["nfe"]) for run in runs] == [
        ("meanflow", 1, 1), ("meanflow", 2, 2), ("euler", 1, 1), ("euler", 2, 2)]  # fmt: skip
    result = fm("animate", meanflow_checkpoint, "--steps", "2", "--frames", "3", "--num", "16", "--scale", "1",
                      "--out", tmp_path / "a.gif", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["nfe"] == 2


def test_a_plain_flow_checkpoint_refuses_the_few_step_sampler(teacher, tmp_path):
    result = fm("sample", teacher, "--solver", "meanflow", "--out", tmp_path / "x.png")
    assert (
        result.exit_code == 1 and "no interval input" in result.output and len(result.output.strip().splitlines()) == 1
    )


# --- distillation -----------------------------------------------------------------------------------


def test_the_student_starts_as_its_teacher_and_records_what_it_distilled(teacher, tmp_path):
    """At step 0 the interval input is zero: u(x, r, t) = v_T(x, t) for every r. After training, the
    checkpoint names its teacher, the meanflow objective and the folded guidance (2: what `fm sample
    --class` gives the teacher), so the student samples at cfg 1 by default."""
    from fmcli.training.distill import distill_overrides

    overrides = distill_overrides(teacher, {"out": str(tmp_path / "student"), "steps": 1, "lr": 1e-12, "pool": 0,
                                            "diagnose_every": 0})  # fmt: skip
    assert overrides["train_cfg"] == 2.0 and overrides["objective"] == "meanflow"
    student = train(overrides | {"warmup_steps": 1, "ema_decay": 0.0})
    reference = load_checkpoint(teacher)
    distilled = load_checkpoint(student.checkpoint)
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([0.2, 0.5, 0.9, 1.0])
    y = torch.tensor([1, 3, 5, 10])  # 10: the null class
    with torch.no_grad():
        expected = reference.model(x, t, y)
        for r in (t, torch.zeros(4), torch.tensor([0.1, 0.4, 0.2, 0.5])):
            torch.testing.assert_close(distilled.model(x, t, y, r=r), expected, atol=1e-6, rtol=1e-5)
    meta = distilled.meta
    assert meta.train_config["teacher"] == str(teacher.resolve()) and meta.model_config["interval"] is True
    assert meta.train_config["data"] == "mnist-mini" and meta.label_dropout == 0.1
    result = fm("sample", student.checkpoint, "--class", "3", "--num", "2", "--out", tmp_path / "s.npz",
                      "--json")  # fmt: skip
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["cfg"] == 1.0 and summary["nfe"] == 4  # guidance is in the weights: no doubled batch


def test_distilling_takes_the_teachers_velocity_as_the_target(teacher, tmp_path, monkeypatch):
    """The velocity MeanFlow builds its target from is the teacher's guided v_T(x_t, t), not x1 - x0."""
    from fmcli.training.objectives import TeacherVelocity

    seen = []
    real = TeacherVelocity.__call__

    def spy(self, net, batch, xt):
        velocity = real(self, net, batch, xt)
        seen.append((batch.x0, batch.x1, batch.t, velocity, batch.labels))
        return velocity

    monkeypatch.setattr(TeacherVelocity, "__call__", spy)
    from fmcli.flow.path import interpolate
    from fmcli.sampling.guidance import guided_velocity
    from fmcli.training.distill import distill_overrides

    train(distill_overrides(teacher, {"out": str(tmp_path / "s"), "steps": 1, "batch_size": 8, "pool": 0,
                                      "diagnose_every": 0}))  # fmt: skip
    x0, x1, t, velocity, y = seen[0]
    model = load_checkpoint(teacher).model
    expected = guided_velocity(model, 2.0, 10)(interpolate(x0, x1, t), t, y)
    torch.testing.assert_close(velocity, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(velocity, x1 - x0, atol=1e-2)


# --- resume and processes -----------------------------------------------------------------------------


def test_a_meanflow_run_resumes_bit_for_bit(tmp_path):
    whole = train(moons(tmp_path / "whole", steps=6, lr_schedule="constant"))
    train(moons(tmp_path / "half", steps=3, lr_schedule="constant"))
    resumed = train({"steps": 6}, resume=str(tmp_path / "half"))
    assert_identical(whole.checkpoint, resumed.checkpoint)


def test_a_distillation_resumes_bit_for_bit(teacher, tmp_path, monkeypatch):
    """With the jump diagnostics of distill's default (at the last step: the half run's is mid-way in the whole),
    on 4 noise draws instead of 64 (their reference solve of the teacher was most of this test's time)."""
    from fmcli.training.distill import distill_overrides
    from fmcli.training.objectives import meanflow

    monkeypatch.setattr(meanflow, "DIAGNOSTIC_DRAWS", 4)
    common = {"batch_size": 8, "lr_schedule": "constant", "warmup_steps": 1, "pool": 16}  # the pool is rebuilt
    whole = train(distill_overrides(teacher, {"out": str(tmp_path / "whole"), "steps": 4}) | common)
    train(distill_overrides(teacher, {"out": str(tmp_path / "half"), "steps": 2}) | common)
    result = fm("distill", "--resume", tmp_path / "half", "--steps", "4")
    assert result.exit_code == 0, result.output
    assert_identical(whole.checkpoint, tmp_path / "half" / "step-0000004.safetensors")


def test_two_processes_average_meanflow_gradients_like_one(tmp_path):
    """torch.func.jvp cannot run through DDP: gradients are all-reduced by hand. 2 gloo ranks at batch 16
    each must then do the maths of 1 process at batch 32 (weights to float rounding)."""
    (tmp_path / "train.toml").write_text("model = { hidden = 32, depth = 2 }\n")
    common = ["moons", "--config", "train.toml", "--objective", "meanflow", "--batch-size", "32", "--steps", "3",
              "--warmup-steps", "2", "--lr-schedule", "constant", "--sample-every", "0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "FM_LOAD_PLUGINS": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fmcli"]
    done = subprocess.run([*command, "train", *common, "--out", "runs/ddp"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    torch.set_num_threads(1)
    single = train(moons(tmp_path / "one", model=MLP, batch_size=32, steps=3, lr_schedule="constant"))
    ddp, one = read_checkpoint(tmp_path / "runs" / "ddp" / "last.safetensors")[0], read_checkpoint(single.checkpoint)[0]
    for group in ("model", "ema", "optim"):
        a, b = split_prefix(ddp, group), split_prefix(one, group)
        worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
        assert worst < 1e-5, (group, worst)


# --- what works with the objective, and what is refused -----------------------------------------------


def test_meanflow_gradient_accumulation_gives_the_gradient_of_the_whole_batch(tmp_path):
    """Two micro-batches of 16 must do the maths of one batch of 32 under MeanFlow too: each half goes through the
    plain-forward / jvp split and the adaptive weight on its own, and the halves' losses are averaged."""
    one = train(moons(tmp_path / "one", batch_size=32, steps=2, interval_fraction=0.5))
    two = train(moons(tmp_path / "two", batch_size=32, steps=2, interval_fraction=0.5, grad_accum=2))
    norms_one, norms_two = grad_norms(tmp_path / "one"), grad_norms(tmp_path / "two")
    assert len(norms_one) == 2 and norms_two == pytest.approx(norms_one, rel=1e-5)
    for group in ("model", "ema"):
        assert max_difference(weights(one.checkpoint, group), weights(two.checkpoint, group)) < 1e-5


@pytest.mark.parametrize("extra", [{"grad_checkpoint": True}, {"precision": "bf16"}])
def test_meanflow_trains_with_memory_savers_and_reduced_precision(tmp_path, extra, half_precision_cpu):
    options = dict(data="mnist-mini", model=TINY_UNET, batch_size=8, steps=2, warmup_steps=1, out=str(tmp_path / "r"),
                   sample_every=0, log_every=1, objective="meanflow", interval_fraction=1.0)  # fmt: skip
    train(options | extra)
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(0 < record["loss"] < float("inf") for record in records)


def test_gradient_checkpointing_gives_the_meanflow_gradients_of_a_plain_step(tmp_path):
    options = dict(data="mnist-mini", model=TINY_UNET, batch_size=8, steps=2, warmup_steps=1, sample_every=0,
                   objective="meanflow", interval_fraction=1.0)  # fmt: skip
    plain = train(options | {"out": str(tmp_path / "plain")})
    saved = train(options | {"out": str(tmp_path / "saved"), "grad_checkpoint": True})
    a, b = (
        split_prefix(read_checkpoint(plain.checkpoint)[0], "model"),
        split_prefix(read_checkpoint(saved.checkpoint)[0], "model"),
    )
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_bad_few_step_input_is_one_line(tmp_path, teacher, meanflow_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-fm.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    assert_one_line_error(fm("distill", tmp_path / "not-fm.safetensors"), "not an fm checkpoint")
    assert_one_line_error(fm("distill", tmp_path / "missing.safetensors"), "does not exist")
    assert_one_line_error(fm("distill", teacher, "--steps", "0"), "--steps must be at least 1")
    assert_one_line_error(fm("train", "moons", "--objective", "meanflow", "--compile"), "--compile does not work")
    assert_one_line_error(fm("train", "moons", "--objective", "best"), "--objective must be one of fm, meanflow")
    assert_one_line_error(fm("train", "moons", "--train-cfg", "2"), "need --objective meanflow")
    # Folded guidance needs an unconditional velocity: labels trained with label dropout.
    assert_one_line_error(fm("train", "moons", "--objective", "meanflow", "--train-cfg", "2", "--label-dropout", "0"),
                   "needs class labels and label dropout")  # fmt: skip
    assert_one_line_error(fm("train", "checkerboard", "--objective", "meanflow", "--train-cfg", "2"),
                   "needs class labels and label dropout")  # fmt: skip
    assert not (tmp_path / "runs").exists()  # nothing written by any of them


def test_resuming_as_the_other_objective_is_refused(meanflow_checkpoint, teacher):
    with pytest.raises(FMError, match="objective: 'meanflow' -> 'fm'"):
        train({"steps": 10, "objective": "fm"}, resume=str(meanflow_checkpoint))
    with pytest.raises(FMError, match="objective: 'fm' -> 'meanflow'"):
        train({"steps": 10, "objective": "meanflow"}, resume=str(teacher))


def test_a_teacher_without_label_dropout_cannot_fold_guidance(tmp_path):
    options = dict(data="mnist-mini", model=TINY_UNET, batch_size=8, steps=1, warmup_steps=1, sample_every=0,
                   out=str(tmp_path / "plain"), label_dropout=0.0)  # fmt: skip
    plain = train(options).checkpoint
    assert_one_line_error(fm("distill", plain, "--train-cfg", "2", "--out", tmp_path / "s"), "the teacher was trained")
    assert not (tmp_path / "s").exists()
    from fmcli.training.distill import distill_overrides

    assert distill_overrides(plain, {})["train_cfg"] == 1.0  # the default: no guidance to fold


def test_flow_checkpoints_are_unchanged(teacher):
    """Flow checkpoints keep today's model configs (no interval key): they load into today's models."""
    tensors, meta = read_checkpoint(teacher)
    assert "interval" not in meta.model_config
    assert not any("interval" in name for name in tensors)
