"""The training loop in-process: checkpoints (keep, last link, crash safety), non-finite losses,
precision, gradient accumulation and checkpointing, metrics, the schedule and the config layers.

Tiny models on tiny data (an MLP on moons, a two-level U-Net on mnist-mini) so every test is
about a second on two CPU cores.
"""

import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from helpers import moons

from fmcli.errors import FMError
from fmcli.io.checkpoint import read_checkpoint, split_prefix
from fmcli.training.batches import BatchOrder
from fmcli.training.config import TrainConfig, read_toml, resolve
from fmcli.training.loop import train
from fmcli.training.objectives import FlowMatching, LossOutput
from fmcli.training.optim import lr_at
from fmcli.training.setup import PROBE_PASSES

REPO = Path(__file__).resolve().parents[1]
TINY_UNET = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_resolutions": []}


def mnist(out: Path, **overrides) -> dict:
    return moons(out, data="mnist-mini", model=TINY_UNET) | overrides


def weights(checkpoint: Path, group: str = "model") -> dict[str, torch.Tensor]:
    return split_prefix(read_checkpoint(checkpoint)[0], group)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# ----------------------------------------------------------------------------- checkpoints


def test_keeps_the_newest_checkpoints_and_last_points_to_the_newest(tmp_path):
    result = train(moons(tmp_path / "run", steps=5, checkpoint_every=1, keep=2, sample_every=3))
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-0000003.png", "step-0000005.png"]
    assert sorted(p.name for p in run.glob("step-*.safetensors")) == [
        "step-0000004.safetensors",
        "step-0000005.safetensors",
    ]
    last = run / "last.safetensors"
    assert last.is_symlink() and os.readlink(last) == "step-0000005.safetensors"
    assert result.checkpoint == run / "step-0000005.safetensors"
    tensors, meta = read_checkpoint(last)
    assert meta.step == 5 and meta.extra["total_steps"] == 5
    # Everything exact resume needs is in the one safetensors file (no pickle anywhere).
    assert {name.split(".", 1)[0] for name in tensors} == {"model", "ema", "optim"}
    assert {int(float(t)) for name, t in tensors.items() if name.endswith(".step")} == {5}
    assert meta.train_config == json.loads((run / "config.json").read_text())
    assert not [p.name for p in run.iterdir() if p.name.startswith(".") and p.name != ".lock"]  # no temp files
    assert not (tmp_path / "quiet").exists()
    train(moons(tmp_path / "quiet", steps=2, sample_every=0))
    assert not (tmp_path / "quiet" / "samples").exists()  # --sample-every 0: no grids at all


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failing):
    run = tmp_path / "run"
    train(moons(run, steps=2, checkpoint_every=1))
    before = (run / "step-0000002.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    # os.replace fails after the temp file is complete; fsync fails while it is being written.
    monkeypatch.setattr(f"fmcli.io.files.os.{failing}", broken)
    with pytest.raises(OSError, match="No space left"):
        train({"steps": 4}, resume=str(run))
    monkeypatch.undo()

    assert os.readlink(run / "last.safetensors") == "step-0000002.safetensors"
    assert (run / "step-0000002.safetensors").read_bytes() == before
    assert read_checkpoint(run / "last.safetensors")[1].step == 2
    assert not [p.name for p in run.iterdir() if p.name.startswith(".tmp") or ".tmp-" in p.name]  # temp removed
    assert not (run / "step-0000003.safetensors").exists()


# ----------------------------------------------------------------------------- non-finite losses


class NaNGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient would poison the weights."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def poison(monkeypatch, bad_steps: set[int], kind: str) -> None:
    """Make the loss NaN (or its gradient NaN) on the given steps (one call per step, after the plan's probe)."""
    bad_calls = {PROBE_PASSES + step for step in bad_steps}
    real = FlowMatching.__call__
    calls = {"n": 0}

    def loss(self, net, batch):
        out = real(self, net, batch)
        calls["n"] += 1
        if calls["n"] - 1 in bad_calls:
            value = out.loss * float("nan") if kind == "loss" else NaNGradient.apply(out.loss)
            return LossOutput(value, value.detach())
        return out

    monkeypatch.setattr(FlowMatching, "__call__", loss)


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_a_non_finite_step_stops_and_names_the_last_good_checkpoint(tmp_path, monkeypatch, kind):
    run = tmp_path / "run"
    poison(monkeypatch, {3}, kind)
    with pytest.raises(FMError) as caught:
        train(moons(run, steps=6, checkpoint_every=2))
    message = str(caught.value)
    assert f"non-finite {kind} at step 3" in message and "--skip-nonfinite" in message
    assert str((run / "step-0000002.safetensors").resolve()) in message
    # Nothing after the bad step was written, and what was written is finite.
    assert sorted(p.name for p in run.glob("step-*")) == ["step-0000002.safetensors"]
    tensors, _ = read_checkpoint(run / "last.safetensors")
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_skip_nonfinite_skips_and_counts(tmp_path, monkeypatch):
    run = tmp_path / "run"
    poison(monkeypatch, {1, 3}, "gradient")
    result = train(moons(run, steps=5, log_every=1, skip_nonfinite=True))
    assert result.step == 5 and result.skipped == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [0, 1, 1, 2, 2]
    tensors, meta = read_checkpoint(result.checkpoint)
    assert meta.extra["skipped_steps"] == 2
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    # A skipped step leaves AdamW untouched: its step counter counts only the 3 real steps.
    assert {int(float(t)) for name, t in tensors.items() if name.endswith(".step")} == {3}


def test_the_first_step_non_finite_says_no_checkpoint_yet(tmp_path, monkeypatch):
    poison(monkeypatch, {0}, "loss")
    with pytest.raises(FMError, match="non-finite loss at step 0; no checkpoint was written yet"):
        train(moons(tmp_path / "run", steps=3))


# ----------------------------------------------------------------------------- precision and memory savers


@pytest.mark.parametrize("precision, make", [("bf16", mnist), ("fp16", moons)])  # CPU fp16 convolutions are slow
def test_reduced_precision_trains_with_a_finite_loss(tmp_path, precision, make, half_precision_cpu):
    """Autocast on the CPU too; fp16 adds a grad scaler (torch.amp.GradScaler("cpu") exists)."""
    result = train(make(tmp_path / precision, steps=2, precision=precision, log_every=1))
    records = [json.loads(line) for line in (tmp_path / precision / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
    tensors, meta = read_checkpoint(result.checkpoint)
    assert all(t.dtype == torch.float32 for name, t in tensors.items() if name.startswith(("model.", "ema.")))
    if precision == "fp16":  # the grad scaler's state travels in the checkpoint for exact resume
        assert meta.extra["scaler"]["scale"] > 0
    else:
        assert meta.extra["scaler"] is None


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    one = train(moons(tmp_path / "one", steps=4, batch_size=32))
    two = train(moons(tmp_path / "two", steps=4, batch_size=32, grad_accum=2))
    for group in ("model", "ema"):
        assert max_difference(weights(one.checkpoint, group), weights(two.checkpoint, group)) < 1e-5


def test_grad_checkpointing_gives_the_same_weights(tmp_path):
    plain = train(mnist(tmp_path / "plain", steps=2))
    saved = train(mnist(tmp_path / "recompute", steps=2, grad_checkpoint=True))
    assert max_difference(weights(plain.checkpoint), weights(saved.checkpoint)) < 1e-6


# ----------------------------------------------------------------------------- metrics, schedule, order


def test_metrics_log_records_loss_lr_and_throughput(tmp_path):
    run = tmp_path / "run"
    train(moons(run, steps=5, log_every=2, warmup_steps=2))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 5]  # every --log-every steps, and the last one
    config = TrainConfig(**json.loads((run / "config.json").read_text()))
    for record in records:
        assert record["lr"] == lr_at(record["step"] - 1, config, 5)
        assert record["images_per_s"] > 0 and math.isfinite(record["loss"]) and record["grad_norm"] > 0
        assert record["skipped_steps"] == 0 and record["time"] > 0
        assert "peak_memory_mb" not in record  # CUDA only
    assert records[0]["time"] < records[-1]["time"]


def test_learning_rate_warms_up_then_decays_to_zero():
    config = TrainConfig(lr=1.0, warmup_steps=4, lr_schedule="cosine")
    assert [lr_at(s, config, 12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(8, config, 12) == pytest.approx(0.5)  # half-way through the decay
    assert lr_at(12, config, 12) == pytest.approx(0.0, abs=1e-12)
    constant = TrainConfig(lr=1.0, warmup_steps=4, lr_schedule="constant")
    assert {lr_at(s, constant, 12) for s in range(3, 12)} == {1.0}


def test_batch_order_covers_each_epoch_once_and_depends_only_on_seed_and_step():
    order = BatchOrder(size=10, batch_size=3, seed=5)  # 3 batches per epoch, one item left out
    epoch = torch.cat([order.indices(step) for step in range(3)])
    assert len(set(epoch.tolist())) == 9
    fresh = BatchOrder(size=10, batch_size=3, seed=5)
    assert torch.equal(fresh.indices(4), order.indices(4))  # no state carried between steps
    assert not torch.equal(BatchOrder(10, 3, seed=6).indices(0), order.indices(0))
    assert len(BatchOrder(size=2, batch_size=5, seed=0).indices(0)) == 5  # smaller than a batch: wraps


# ----------------------------------------------------------------------------- config layers


def test_config_precedence_defaults_then_file_then_command_line(tmp_path):
    toml = tmp_path / "train.toml"
    toml.write_text("lr = 0.01\nbatch-size = 64\nepochs = 3\nmodel = { hidden = 16 }\n")
    config = resolve({"batch_size": 32, "steps": 100, "lr": None}, toml)
    assert config.lr == 0.01  # from the file
    assert config.batch_size == 32  # the command line wins
    assert config.steps == 100 and config.epochs is None  # --steps replaces the file's epochs
    assert config.model == {"hidden": 16}
    assert config.weight_decay == TrainConfig().weight_decay  # default
    with pytest.raises(FMError, match="unknown option"):
        toml.write_text("learning_rate = 0.1\n")
        resolve({}, toml)
    with pytest.raises(FMError, match="--precision must be one of fp32, bf16, fp16"):
        resolve({"precision": "fp8"})


def test_the_run_folder_holds_the_resolved_config(tmp_path):
    toml = tmp_path / "train.toml"
    toml.write_text("lr = 0.004\nwarmup-steps = 1\n")
    train(moons(tmp_path / "run", steps=1, warmup_steps=None, lr=None), config_file=toml)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["lr"] == 0.004 and saved["warmup_steps"] == 1 and saved["steps"] == 1
    assert saved == asdict(TrainConfig(**saved))


def test_the_example_config_is_valid_and_complete():
    values = read_toml(REPO / "examples" / "train.toml")
    config = resolve({}, REPO / "examples" / "train.toml")
    assert values and config.data == values["data"]
