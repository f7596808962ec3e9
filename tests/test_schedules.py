"""Schedules that fit the run, defaults per device, a plan that tells the truth, flags that fit the device."""

import json
import re

import pytest
from helpers import assert_one_line_error, fm, moons

import fmcli.training.loop as loop
from fmcli.training.config import resolve
from fmcli.training.events import Callbacks
from fmcli.training.loop import train


def config_json(run) -> dict:
    return json.loads((run / "config.json").read_text())


class Messages(Callbacks):
    def __init__(self):
        self.lines = []

    def on_message(self, text: str) -> None:
        self.lines.append(text)


@pytest.fixture
def probe(monkeypatch):
    """Make the probe say a given number of seconds per step (the plan's arithmetic, not this CPU's speed)."""

    def use(seconds: float) -> None:
        monkeypatch.setattr(loop.Trainer, "_probe_seconds", lambda self: seconds)

    return use


@pytest.mark.parametrize(
    "length, planned",
    [({"steps": 300}, 300), ({"epochs": 0.5}, 625), ({"steps": 5000}, 5000)],  # moons: 20,000 points, batch 16
)
def test_the_warm_up_is_a_tenth_of_the_planned_steps_at_most_200(tmp_path, probe, length, planned):
    probe(1e-6)  # the run is cut short below: only its plan matters here
    run = tmp_path / "run"
    overrides = moons(run, warmup_steps=None) | length
    overrides.pop("steps") if "epochs" in length else None
    trainer = _trainer(overrides)
    assert trainer.total_steps == planned
    assert trainer.config.warmup_steps == min(200, round(0.1 * planned))
    assert "10% of the" in trainer.config.decisions["warmup_steps"]


def test_a_max_time_run_warms_up_for_a_tenth_of_what_fits_and_records_why(tmp_path, probe):
    """--max-time: the probe's speed plans the length before step 0, so the warm-up is fixed before it starts;
    config.json records the steps, the warm-up and why, and a --steps run of that config is the same run."""
    probe(0.02)
    result = train(moons(tmp_path / "budget", warmup_steps=None, steps=None, max_time=6.0, log_every=1))
    saved = config_json(tmp_path / "budget")
    assert saved["max_time"] is None and saved["steps"] == result.step
    # planned from the probe: 6 s at 0.02 s/step, less what start-up took (this machine's: not asserted), so at
    # most 300 steps; the warm-up is a tenth of that plan, and the plan is what config.json says it was
    why = saved["decisions"]["warmup_steps"]
    planned = int(re.match(r"10% of the ([\d,]+) planned steps", why).group(1).replace(",", ""))
    assert 20 <= planned <= 300, why
    assert saved["warmup_steps"] == max(1, round(0.1 * planned))
    assert saved["warmup_steps"] < result.step  # the warm-up ends inside what the timed first steps then fitted


def test_the_users_warm_up_wins(tmp_path, probe):
    probe(1e-6)
    trainer = _trainer(moons(tmp_path / "run", warmup_steps=7, steps=300))
    assert trainer.config.warmup_steps == 7 and "warmup_steps" not in trainer.config.decisions


def _trainer(overrides: dict):
    """A Trainer built as ``train`` builds it, without training (its __init__ is where everything is decided)."""
    from fmcli.training import distributed
    from fmcli.training.loop import Trainer, _resolve_run

    config, run_dir, _ = _resolve_run(overrides, None, None, False)
    return Trainer(config, run_dir, Callbacks(), None, distributed.DistInfo(), loop.resolve_device("cpu"))


# --- defaults per device -----------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["./pictures", "mnist"])
def test_batch_and_learning_rate_come_from_the_device_and_the_user_wins(data):
    cpu, gpu = resolve({"data": data}, device_type="cpu"), resolve({"data": data}, device_type="cuda")
    assert (cpu.batch_size, gpu.batch_size) != (128, 128) or cpu.lr != gpu.lr  # the devices differ somewhere
    assert "CPU default" in cpu.decisions["batch_size"] and "GPU default" in gpu.decisions["batch_size"]
    mine = resolve({"data": data, "batch_size": 48, "lr": 1e-3}, device_type="cpu")
    assert (mine.batch_size, mine.lr) == (48, 1e-3)
    assert "batch_size" not in mine.decisions and "lr" not in mine.decisions


def test_mnist_mini_keeps_its_own_defaults_on_any_device():
    for device in ("cpu", "cuda"):
        config = resolve({"data": "mnist-mini"}, device_type=device)
        assert (config.batch_size, config.steps) == (16, 1600)


def test_train_help_says_defaults_depend_on_the_device():
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", fm("train", "--help").output).split())
    assert "per data set and device" in text and "10% of the planned steps" in text


# --- the plan, said before training -----------------------------------------------------------------


def test_the_plan_says_how_long_the_epochs_take_and_offers_max_time_when_it_is_over_an_hour(tmp_path, probe):
    probe(10.0)
    messages = Messages()
    trainer = _trainer_with(moons(tmp_path / "run", steps=None, epochs=2.0), messages)
    assert trainer.plan.startswith("plan: 2,500 steps (2 epochs) at about 10 s/step on cpu: about 6 h 56 min")
    assert "more than an hour on this CPU: --max-time 10m trains about 60 steps (0.048 epochs)" in trainer.plan
    probe(0.01)
    quick = _trainer_with(moons(tmp_path / "quick", steps=None, epochs=2.0), messages)
    assert "more than an hour" not in quick.plan and "about 25 s" in quick.plan


def _trainer_with(overrides: dict, callbacks: Callbacks):
    from fmcli.training import distributed
    from fmcli.training.loop import Trainer, _resolve_run

    config, run_dir, _ = _resolve_run(overrides, None, None, False)
    return Trainer(config, run_dir, callbacks, None, distributed.DistInfo(), loop.resolve_device("cpu"))


# --- bad input: one line, nothing written -----------------------------------------------------------


def test_a_max_time_too_short_for_the_warm_up_stops_before_anything_is_written(tmp_path, monkeypatch, probe):
    monkeypatch.chdir(tmp_path)
    probe(1.0)
    result = fm("train", "moons", "--max-time", "5s", "--sample-every", "0")
    assert_one_line_error(result, "--max-time 5 s fits about", "the run needs at least 20", "give at least --max-time")
    assert list(tmp_path.iterdir()) == []


def test_reduced_precision_on_a_cpu_without_it_is_one_line(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert_one_line_error(fm("train", "moons", "--precision", "bf16"), "no bf16 arithmetic", "--precision fp32")
    assert list(tmp_path.iterdir()) == []


def test_compile_without_a_compiler_is_one_line(tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert_one_line_error(fm("train", "moons", "--compile"), "--compile on the CPU needs a C++ compiler")
    assert list(tmp_path.iterdir()) == []
