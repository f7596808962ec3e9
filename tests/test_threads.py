"""The machine as it is: the thread rule, the governor that steps down when steps stall and back up when cores
free up, the user's count that always wins, the batch that fits the memory, and why changing the count mid-run
keeps resume exact (the gradients have the same bits at any thread count).

Nothing here is timed: the machine (cores, quotas, load, memory) is a fake tree or a fake function, the clock
is a counter. See bench/busy_machine.py for what the rule does on a real busy machine.
"""

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_identical, assert_one_line_error, fm, moons
from PIL import Image

from fmcli.errors import FMError
from fmcli.io.checkpoint import LoadedModel, load_checkpoint
from fmcli.runtime import machine, threads
from fmcli.runtime.threads import Governor, invariant_sum, rule
from fmcli.sampling import batching
from fmcli.sampling.generate import generate
from fmcli.sampling.options import SamplingOptions
from fmcli.training.events import TrainingInterrupted
from fmcli.training.loop import Trainer, train


@pytest.fixture(autouse=True)
def _fresh_threads():
    """Each test starts with no choice made and leaves torch at the suite's one thread."""
    threads.reset()
    yield
    threads.reset()
    torch.set_num_threads(1)


# --- the rule ---------------------------------------------------------------------------------------------------


def test_the_rule_leaves_the_cores_other_processes_keep_busy():
    assert rule(2, 0.0) == 2 and rule(2, 0.3) == 2  # a browser's blip does not cost a core
    assert rule(2, 0.6) == 1 and rule(2, 1.0) == 1 and rule(2, 5.0) == 1  # never fewer than one
    assert rule(16, 1.0) == 15 and rule(16, 2.4) == 14
    assert rule(4, None) == 4  # nothing readable: every core


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_cgroup_v2(root: Path, cpu_max: str, memory_max: str = "max", current: int = 0, cache: int = 0) -> None:
    write(root, "proc/self/cgroup", "0::/user.slice/job\n")
    write(root, "proc/self/mountinfo", "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n")
    job = "sys/fs/cgroup/user.slice/job"
    write(root, f"{job}/cpu.max", cpu_max)
    write(root, f"{job}/memory.max", memory_max)
    write(root, f"{job}/memory.current", str(current))
    write(root, f"{job}/memory.stat", f"anon 1\ninactive_file {cache}\n")
    write(root, f"{job}/cpu.stat", "usage_usec 5000000\n")
    write(root, "proc/meminfo", "MemTotal: 67108864 kB\nMemAvailable: 33554432 kB\n")  # 64 GiB, 32 GiB free


def test_a_cgroup_quota_rounds_down_to_whole_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    fake_cgroup_v2(tmp_path, "150000 100000")  # 1.5 cores of a 4-CPU machine
    cores = machine.cores(tmp_path)
    assert cores.quota == 1.5 and cores.usable == 1 and cores.quota_binds
    fake_cgroup_v2(tmp_path, "max 100000")  # no quota: the CPUs we may run on
    assert machine.cores(tmp_path).usable == 4 and machine.cores(tmp_path).quota is None


def test_a_cgroup_v1_quota_is_read_through_its_mount(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    write(tmp_path, "proc/self/cgroup", "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n")
    write(
        tmp_path, "proc/self/mountinfo", "40 30 0:35 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
    )
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000")
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000")
    assert machine.cores(tmp_path).usable == 3


def test_memory_free_is_the_tightest_of_the_kernel_and_the_cgroup(tmp_path):
    gib = 1 << 30
    fake_cgroup_v2(tmp_path, "max 100000", memory_max=str(4 * gib), current=3 * gib, cache=gib // 2)
    assert machine.memory_free(tmp_path) == 4 * gib - (3 * gib - gib // 2)  # page cache can be dropped
    fake_cgroup_v2(tmp_path, "max 100000")  # no limit: what the kernel says is available
    assert machine.memory_free(tmp_path) == 32 * gib


def test_other_processes_are_the_busy_time_that_is_not_ours():
    before = machine.CpuSample(at=10.0, busy=100.0, cgroup=None, own=50.0)
    after = machine.CpuSample(at=12.0, busy=104.0, cgroup=None, own=51.0)  # 4 busy CPU-seconds, 1 of them ours
    assert machine.others_cores(before, after) == pytest.approx(1.5)
    quota = machine.CpuSample(at=10.0, busy=100.0, cgroup=20.0, own=50.0)
    quota_after = machine.CpuSample(at=12.0, busy=150.0, cgroup=23.0, own=51.0)  # the host is busy, our cgroup not
    assert machine.others_cores(quota, quota_after) == pytest.approx(1.0)
    assert machine.others_cores(before, machine.CpuSample(10.05, 101.0, None, 50.0)) is None  # too short to say


# --- the governor -----------------------------------------------------------------------------------------------


class FakeMachine:
    """A clock, CPU counters in which other processes keep ``others`` cores busy, and torch's thread count."""

    def __init__(self, usable: int = 2):
        self.now, self.others, self.busy, self.set_to = 0.0, 0.0, 0.0, []
        self.count = usable
        self.governor = Governor(
            usable=usable,
            threads=usable,
            cores=machine.Cores(usable, tuple(range(usable)), None),
            sample=lambda: machine.CpuSample(self.now, self.busy, None, 0.0),
            set_threads=self.set_threads,
            get_threads=lambda: self.count,
            clock=lambda: self.now,
        )

    def set_threads(self, count: int) -> None:
        self.count = count
        self.set_to.append(count)

    def steps(self, n: int, seconds: float) -> None:
        for _ in range(n):
            self.now += seconds
            self.busy += self.others * seconds
            self.governor.tick()


def test_the_governor_steps_down_when_another_process_takes_a_core():
    fake = FakeMachine(usable=2)
    fake.steps(20, 0.1)
    assert fake.governor.threads == 2 and fake.set_to == [2]
    fake.others = 1.0  # a busy neighbour: its core shows in the counters at the next check
    fake.steps(15, 0.1)
    assert fake.governor.threads == 1 and fake.set_to == [2, 1]
    assert "other processes keep 1.0 cores busy" in fake.governor.changes[0][3]


def test_the_governor_steps_down_when_steps_stall_though_the_counters_show_nothing():
    fake = FakeMachine(usable=4)
    fake.steps(20, 0.1)
    fake.steps(6, 0.5)  # five times slower with the same work, nobody visible: a stall
    assert fake.governor.threads == 3
    assert "5.0x longer" in fake.governor.changes[0][3]


def test_the_governor_tries_one_more_thread_when_cores_free_up_and_keeps_it_only_if_faster():
    fake = FakeMachine(usable=2)
    fake.others = 1.0
    fake.steps(15, 0.1)
    assert fake.governor.threads == 1
    fake.others = 0.0  # the neighbour stopped: two checks in a row with room, then a trial
    fake.steps(25, 0.1)  # the same speed with 2 threads: not worth it, back to 1, and wait before trying again
    assert fake.set_to[:3] == [2, 1, 2] and fake.governor.threads == 1
    assert "not faster" in fake.governor.changes[-1][3]
    fake.steps(50, 0.1)  # within the back-off (10 s): no new trial
    assert fake.governor.threads == 1 and len(fake.governor.changes) == 3
    fake.steps(120, 0.1)  # after it, a trial that pays (twice as fast) is kept
    fake.governor.tick()
    while fake.governor.threads == 1:
        fake.steps(1, 0.1)
    fake.steps(10, 0.05)
    assert fake.governor.threads == 2 and fake.governor.active


def test_a_trial_judged_after_the_count_fell_back_says_nothing():
    fake = FakeMachine(usable=2)
    fake.others = 1.0
    fake.steps(15, 0.1)
    fake.others = 0.0
    while fake.governor.threads == 1:  # room again: the trial of a second thread starts
        fake.steps(1, 0.1)
    fake.others = 1.0  # the neighbour is back before the trial is judged: one thread again, by the counters
    fake.steps(20, 0.3)
    assert fake.governor.threads == 1
    assert all(before != after for _, before, after, _ in fake.governor.changes)  # no "threads: 1 -> 1"


def test_a_thread_that_pays_then_stalls_is_not_retried_at_once():
    """Two threads faster for a moment, then stalling (a noisy machine): the governor must not flip 1 -> 2 -> 1 ->
    2 every few steps (a 15-minute run once logged 70 changes); each stall doubles the wait before the next try."""
    fake = FakeMachine(usable=2)
    fake.others = 1.0
    fake.steps(15, 0.1)
    fake.others = 0.0
    with_two = 0  # steps since the second thread came
    for _ in range(3000):  # 5 minutes: with 2 threads the first 8 steps are quick, then they stall
        with_two = 0 if fake.governor.threads == 1 else with_two + 1
        fake.steps(1, 0.1 if fake.governor.threads == 1 else (0.05 if with_two <= 8 else 0.3))
    assert len(fake.governor.changes) <= 12, [c[3] for c in fake.governor.changes]


def test_other_kinds_of_work_and_pauses_are_not_stalls():
    """A preview grid between training steps (evaluations of 80 samples: microseconds per sample), a pause of a
    minute (a served page waiting for its next request): the step times stay comparable, nothing changes."""
    fake = FakeMachine(usable=2)
    fake.steps(20, 0.1)
    for _ in range(30):
        fake.now += 0.01
        fake.governor.tick(80, kind="evaluation")
    fake.steps(20, 0.1)
    fake.now += 60.0
    fake.steps(20, 0.1)
    assert fake.governor.threads == 2 and not fake.governor.changes


def test_slow_steps_are_watched_like_fast_ones():
    """A 128 px training step takes 14 s on one thread: step after step, that is work, not a pause. When the cores
    free up the governor tries a second thread (it once stayed at one thread for a whole 20-minute run)."""
    fake = FakeMachine(usable=2)
    fake.others = 1.0
    fake.steps(8, 14.0)
    assert fake.governor.threads == 1
    fake.others = 0.0
    fake.steps(4, 14.0)
    assert fake.governor.threads == 2 and "trying one more" in fake.governor.changes[-1][3]
    fake.steps(8, 7.0)  # twice as fast: kept
    assert fake.governor.threads == 2


def test_the_cpu_time_of_finished_children_is_ours():
    """A folder's decoding workers are this process's children: their CPU time must not read as other processes
    keeping the cores busy (the first thread choice after decoding a new folder once took one thread of two)."""
    import subprocess
    import sys

    before, own_before = machine._own_seconds(), time.process_time()
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert machine._own_seconds() - before >= 0.25 and time.process_time() - own_before < 0.1


def test_a_count_set_by_someone_else_wins_and_the_governor_stops():
    fake = FakeMachine(usable=2)
    fake.steps(5, 0.1)
    fake.count = 3  # torch.set_num_threads(3) by the user, after fm chose
    fake.others = 1.0
    fake.steps(30, 0.1)
    assert not fake.governor.active and fake.count == 3 and fake.set_to == [2]


# --- configure: the user's count wins --------------------------------------------------------------------------


def test_an_explicit_count_and_omp_num_threads_win_and_a_bad_one_is_one_line():
    assert threads.configure(3).source == "--threads" and torch.get_num_threads() == 3
    threads.reset()
    choice = threads.configure(environ={"OMP_NUM_THREADS": "1"})
    assert choice.source == "OMP_NUM_THREADS" and not choice.adaptive
    threads.reset()
    choice = threads.configure(environ={"OMP_NUM_THREADS": "many"})
    assert choice.adaptive and "OMP_NUM_THREADS must be a whole number" in choice.warning
    for bad in (0, -2, "x"):
        with pytest.raises(FMError, match="--threads must be a whole number of threads, at least 1"):
            threads.configure(bad)


def test_more_threads_than_cores_are_allowed_and_said():
    usable = machine.cores().usable
    choice = threads.configure(usable + 2)
    assert choice.threads == usable + 2 and "so they will share them" in choice.describe()


def test_the_commands_refuse_a_bad_thread_count_in_one_line(tmp_path):
    assert_one_line_error(fm("sample", tmp_path / "none.safetensors", "--threads", "0"), "--threads", code=1)
    result = fm("sample", tmp_path / "none.safetensors", "--threads", "two")  # Typer's own usage error
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert_one_line_error(fm("train", "moons", "--threads", "-1", "--out", tmp_path / "r"), "--threads", code=1)


# --- exact resume at any thread count ---------------------------------------------------------------------------


def flipping(monkeypatch) -> list[int]:
    """Replace the governor with one that changes torch's count at every step: 2, 1, 2, 1, ..."""
    seen = []

    def flip(work: float = 1.0) -> None:
        torch.set_num_threads(2 if torch.get_num_threads() == 1 else 1)
        seen.append(torch.get_num_threads())

    monkeypatch.setattr(threads, "tick", flip)
    return seen


def skip_probe(monkeypatch) -> None:
    """No timing probe before the first step: its untimed-for-the-run passes (three per start, the plan's seconds
    per step) cost as much as these tests' few steps of the default U-Net, and the bits are what they check."""
    monkeypatch.setattr(Trainer, "_probe_seconds", lambda self: 1.0)


def rgb_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


@pytest.mark.parametrize("data", ["mnist-mini", "rgb-folder", "moons"])
def test_training_has_the_same_bits_whatever_the_thread_count_does(data, tmp_path, monkeypatch):
    """The built-in presets' gradients do not depend on the thread count: a run whose count changes at every
    step equals one at a constant count, bit for bit (what lets the governor act during training)."""
    source = str(rgb_folder(tmp_path / "images")) if data == "rgb-folder" else data
    run = dict(moons(tmp_path), data=source, steps=3, batch_size=8) | ({} if data == "moons" else {"model": {}})
    skip_probe(monkeypatch)
    constant = train(run | {"out": str(tmp_path / "constant")})
    seen = flipping(monkeypatch)
    changing = train(run | {"out": str(tmp_path / "changing")})
    assert seen[:3] == [2, 1, 2]
    assert_identical(constant.checkpoint, changing.checkpoint)


class StopAfter:
    def __init__(self, step: int):
        self.step = step

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def on_step(self, step: int) -> None:
        if step == self.step:
            import signal

            os.kill(os.getpid(), signal.SIGTERM)


def test_an_interrupted_run_resumed_at_another_thread_count_equals_one_run(tmp_path, monkeypatch):
    run = dict(moons(tmp_path), data="mnist-mini", model={}, steps=4, batch_size=8)
    skip_probe(monkeypatch)
    whole = train(run | {"out": str(tmp_path / "whole")})  # one thread throughout
    seen = flipping(monkeypatch)
    with pytest.raises(TrainingInterrupted):
        train(run | {"out": str(tmp_path / "split")}, callbacks=StopAfter(2))
    monkeypatch.undo()
    skip_probe(monkeypatch)
    torch.set_num_threads(2)  # the machine freed up before the resume
    resumed = train({}, resume=str(tmp_path / "split"))
    assert len(set(seen)) == 2
    assert_identical(whole.checkpoint, resumed.checkpoint)


def test_meanflow_keeps_its_first_thread_count_for_the_run_and_its_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS")
    result = train(moons(tmp_path / "mf", objective="meanflow"))
    config = load_checkpoint(result.checkpoint).meta.train_config
    assert config["threads"] >= 1 and "kept for the whole run" in config["decisions"]["threads"]
    assert not threads._governor or not threads._governor.active  # held: no change during the run


def test_invariant_sum_has_the_same_bits_at_any_thread_count():
    values = torch.randn(3_000_001, generator=torch.Generator().manual_seed(0))
    sums = set()
    for count in (1, 2, 3):
        torch.set_num_threads(count)
        sums.add(invariant_sum(values).item())
    assert len(sums) == 1 and sums.pop() == pytest.approx(values.double().sum().item(), rel=1e-5)


# --- the sampling batch -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory) -> LoadedModel:
    """The default MNIST U-Net after one step, shared by the tests below (none changes it)."""
    run = train(dict(moons(tmp_path_factory.mktemp("demo")), data="mnist-mini", model={}, steps=1, batch_size=8))
    return load_checkpoint(run.checkpoint, device=torch.device("cpu"))


def test_the_default_batch_fits_the_memory_and_guidance_halves_it(demo_like, monkeypatch):
    model, shape = demo_like.model, demo_like.meta.shape
    per_sample = batching.bytes_per_sample(model, shape, 10)
    assert 100_000 < per_sample < 50_000_000  # an MNIST U-Net's layer outputs, one sample
    monkeypatch.setattr(batching, "memory_free", lambda: 64 << 30)  # plenty: the CPU's 1 GiB per call
    assert batching.sampling_batch(model, shape, torch.device("cpu"), 1, 10) == min(500, (1 << 30) // per_sample)
    monkeypatch.setattr(batching, "memory_free", lambda: 400 * per_sample)  # a tight container: a quarter of it
    assert batching.sampling_batch(model, shape, torch.device("cpu"), 1, 10) == 100
    assert batching.sampling_batch(model, shape, torch.device("cpu"), 2, 10) == 50  # two passes a sample
    monkeypatch.setattr(batching, "memory_free", lambda: 0)
    assert batching.sampling_batch(model, shape, torch.device("cpu"), 2, 10) == 1  # at least one


def test_samples_do_not_depend_on_the_batch_and_progress_moves_with_the_solver(demo_like):
    options = SamplingOptions(solver="heun", steps=4, seed=3)
    reports = []
    whole = generate(demo_like, options, num=6, progress=lambda done, total: reports.append(done))
    assert whole.batch_size >= 6  # chosen for the memory: all six in one call
    assert reports == sorted(reports) and len(reports) >= 4 and reports[-1] == 6  # during the solve, not only after
    for batch in (1, 4):  # the same noise per sample however the batches are cut (kernels round per batch size)
        split = generate(demo_like, SamplingOptions(solver="heun", steps=4, seed=3, batch_size=batch), num=6)
        assert split.batch_size == batch
        torch.testing.assert_close(split.samples, whole.samples, rtol=1e-4, atol=1e-4)
    torch.set_num_threads(2)  # and the same bits at another thread count
    assert torch.equal(generate(demo_like, options, num=6).samples, whole.samples)


def test_sample_json_reports_the_batch_and_the_threads(demo_like, tmp_path):
    import json

    result = fm("sample", demo_like.path, "--num", "3", "--steps", "2", "--out", tmp_path / "s.npz", "--json")
    summary = json.loads(result.output)
    assert summary["batch_size"] >= 3 and summary["threads_source"] == "OMP_NUM_THREADS"


def test_a_stall_judged_before_the_counters_can_be_read_changes_nothing_by_them():
    """One thread, steps suddenly slower, checked too soon after the last reading for the counters to say anything
    (``others`` unknown): the stall alone decides, and an unknown load is never reported (it once crashed
    formatting None) nor taken as room for one more thread."""
    fake = FakeMachine(usable=2)
    fake.others = 1.0
    fake.steps(15, 0.1)
    assert fake.governor.threads == 1
    fake.steps(30, 0.01)  # quick steps: the best median at one thread
    fake.steps(30, 0.05)  # five times slower, every check within 0.1 s of the last reading: counters unreadable
    assert fake.governor.threads == 1
    assert all("None" not in change[3] for change in fake.governor.changes)
