"""`fm train --max-time`: durations, the step timer's arithmetic, and a timed run being a run of the steps
it planned (so schedule, checkpoints and resume stay defined by steps). No timing is asserted."""

import json

import pytest
import torch

from fmcli.errors import FMError
from fmcli.io.checkpoint import read_checkpoint
from fmcli.training import budget
from fmcli.training.budget import EndCosts, StepTimer, parse_duration
from fmcli.training.loop import train


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("1.5m", 90), ("45", 45), (30, 30), ("2M", 120)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "0s", "-5m", "m"])
def test_bad_durations_fail_in_one_line(text):
    with pytest.raises(FMError, match="--max-time"):
        parse_duration(text)


def test_the_timer_skips_the_first_step_and_averages_the_rest():
    timer = StepTimer(budget=None, started=0.0, loop_start=0.0, start_step=0, warmup_steps=5)
    clock = {1: 3.0, 2: 3.5, 3: 4.0, 4: 4.5, 5: 5.0}  # step 1 pays 3 s of one-off costs
    assert [timer.observe(step, now) for step, now in clock.items()] == [None, None, None, None, 0.5]


def test_the_timer_stops_at_its_share_of_the_budget():
    timer = StepTimer(budget=10.0, started=0.0, loop_start=0.0, start_step=0, warmup_steps=1000)
    assert timer.observe(1, 0.2) is None
    assert timer.observe(2, 0.9) is None  # 0.7 s timed: under 10% of the budget
    assert timer.observe(3, 1.4) == pytest.approx(0.6)  # 1.2 s timed over 2 steps


def test_fit_leaves_room_for_the_final_and_periodic_checkpoints(monkeypatch):
    monkeypatch.setattr(budget.time, "perf_counter", lambda: 20.0)
    timer = StepTimer(budget=120.0, started=0.0, loop_start=0.0, start_step=0, warmup_steps=10)
    # 100 s left, 1 s for the last checkpoint, 0.5 s per step: 198 steps without periodic checkpoints;
    # one every 50 steps costs 3 more seconds (at 50, 100, 150), so 192 steps (still 3 checkpoints).
    assert timer.fit(10, 0.5, EndCosts(checkpoint=1.0, grid=0.0), checkpoint_every=10_000, sample_every=0) == 208
    assert timer.fit(10, 0.5, EndCosts(checkpoint=1.0, grid=0.0), checkpoint_every=50, sample_every=0) == 202


def test_a_timed_run_is_the_run_of_the_steps_it_planned(tmp_path):
    common = dict(data="moons", model={"hidden": 32, "depth": 2}, batch_size=16, warmup_steps=5, seed=3,
                  sample_every=0, log_every=1000, checkpoint_every=100_000)  # fmt: skip
    timed = train(common | {"out": str(tmp_path / "timed"), "max_time": "3s"})  # some of it goes to start-up
    config = json.loads((tmp_path / "timed" / "config.json").read_text())
    assert config["max_time"] is None and config["steps"] == timed.step > 5  # planned, recorded as steps
    fixed = train(common | {"out": str(tmp_path / "fixed"), "steps": timed.step})
    first, second = read_checkpoint(timed.checkpoint)[0], read_checkpoint(fixed.checkpoint)[0]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
