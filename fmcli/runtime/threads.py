"""How many threads torch computes with, chosen for the machine as it is and kept right while fm works.

Why: torch's OpenMP threads wait for each other at the end of every operator, spinning. When one of them
loses its core to another process (a browser, a second run, ``fm serve`` beside ``fm train``), every operator
waits for it: measured on 2 cores with one busy Python thread beside, ``fm train`` ran 19x slower with torch's
default of one thread per core, 1.4x with one thread.

The rule (``rule``): as many threads as the cores this process may use (affinity, cgroup quota) minus the
cores other processes keep busy, rounded, at least 1. ``configure`` applies it once per process: first an
explicit count (``--threads``, ``threads=``), then ``OMP_NUM_THREADS`` (the user's, left to torch), then the
rule. Then the ``Governor`` watches the work it is told about (``tick``: a training step, a velocity evaluation
of a solver): when the time per unit of work jumps (steps stall) or other processes take cores, it steps down;
when cores free up for two checks in a row it tries one more thread and keeps it only if the work gets faster
(else it backs off, 10 s, then 20 s, ... up to 5 minutes). A count the user set (``torch.set_num_threads``
after fm chose) is noticed and left alone.

Changing the count never changes results: training and sampling compute the same bits with 1 thread or 16
(the operators fm trains through reduce per output element; the few whole-tensor sums are written to be
thread-count free, see ``fmcli.training.optim.clip_gradients``), which is what keeps resume exact.

OpenMP's thread count belongs to the OS thread that sets it, so the governor applies its count in each thread
that computes (``fm serve`` samples in a worker thread), at that thread's next tick.
"""

import math
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from fmcli.errors import FMError
from fmcli.runtime import machine

ENV = "OMP_NUM_THREADS"
CHECK_SECONDS = 1.0  # how often the governor reads the CPU counters while work is ticking
FIRST_WINDOW = 0.25  # seconds of counters before the first choice when nothing earlier was marked
STALE_MARK = 10.0  # a start mark older than this says little about the machine now
WINDOW = 5  # ticks whose median is "the time per unit of work now"
STALL = 1.5  # the median this many times the best seen at this count: steps stalled
GAIN = 0.05  # one more thread is kept when the work gets at least this much faster
BACKOFF = (10.0, 300.0)  # seconds before another step-up after one that did not pay: first, most
IDLE = 5.0  # a gap between ticks this long is a pause (a request page idle, features being extracted), not work ...
PAUSE = 3.0  # ... when it is also this many times the gap before it (a 14 s training step, step after step, is work)


def rule(usable: int, others: float | None) -> int:
    """Threads for ``usable`` cores when other processes keep ``others`` cores busy (None: unknown, all)."""
    if others is None:
        return usable
    return max(1, min(usable, math.floor(usable - others + 0.5)))


def parse_count(value: object, source: str) -> int:
    """A thread count from the command line or the environment: a whole number >= 1, else one clear line."""
    text = str(value).strip()
    if not text.lstrip("+").isdigit() or int(text) < 1:
        raise FMError(f"{source} must be a whole number of threads, at least 1 (got {text!r})")
    return int(text)


@dataclass
class Choice:
    """What ``configure`` decided, and why; ``describe()`` is the line commands print and config.json records."""

    threads: int
    usable: int
    source: str  # "auto", "--threads" (or the API's threads=), "OMP_NUM_THREADS"
    others: float | None = None  # cores other processes kept busy when the choice was made
    warning: str | None = None  # a bad OMP_NUM_THREADS, ignored

    @property
    def adaptive(self) -> bool:
        return self.source == "auto"

    def describe(self) -> str:
        cores = f"{self.usable} core{'s' if self.usable != 1 else ''}"
        if not self.adaptive:
            extra = f"; more than the {cores} this process may use, so they will share them" * (
                self.threads > self.usable
            )
            return f"threads: {self.threads} (set by {self.source}{extra})"
        if self.threads < self.usable:
            busy = f"other processes keep {self.others:.1f} of the {cores} busy"
            return f"threads: {self.threads} of {self.usable} ({busy}; more when they stop; --threads N fixes it)"
        return f"threads: {self.threads} (the {cores} this process may use; fewer if other processes need them)"


@dataclass
class Governor:
    """Steps the thread count down when work stalls or cores are taken, and back up when they free up."""

    usable: int
    threads: int
    cores: machine.Cores
    sample: Callable[[], machine.CpuSample]
    set_threads: Callable[[int], None]
    get_threads: Callable[[], int]
    clock: Callable[[], float] = time.monotonic
    last: machine.CpuSample | None = None
    changes: list = field(default_factory=list)  # (when, from, to, why)
    active: bool = True
    _durations: dict = field(default_factory=dict)  # kind of work -> deque of its last WINDOW seconds per unit
    _best: dict = field(default_factory=dict)  # (kind, threads) -> the best median seen
    _applied: dict = field(default_factory=dict)  # OS thread id -> the count set there
    _tick: tuple | None = None  # (when, kind) of the last tick
    _gaps: dict = field(default_factory=dict)  # kind of work -> the gap before its last tick (a pause or not)
    _skip: int = 1  # ticks to ignore (the first after a change builds the new threads)
    _raise: int = 0  # checks in a row that had room for one more thread
    _trial: tuple | None = None  # (count before the step-up, the kind of work, its best median then)
    _backoff: float = BACKOFF[0]
    _hold_until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def tick(self, work: float = 1.0, kind: str = "step") -> None:
        """One unit of ``kind`` of work is done (a training step; a solver's evaluation of a batch, ``work`` its
        samples). Times are compared within a kind only; a pause (``IDLE``) or a change of kind times nothing."""
        if not self.active:
            return
        with self._lock:
            now = self.clock()
            self._apply_here()
            window = self._durations.setdefault(kind, deque(maxlen=WINDOW))
            gap = now - self._tick[0] if self._tick is not None and self._tick[1] == kind else None
            pause = gap is not None and self._is_pause(kind, gap)
            if gap is not None and not pause and self._skip == 0:
                window.append(gap / max(work, 1e-9))
            self._skip = max(0, self._skip - 1)
            self._tick = (now, kind)
            stale = self.last is None or pause or (gap is None and now - self.last.at > IDLE)
            if stale:  # counters from before a pause say nothing of now
                self.last = self.sample()
                return
            median = statistics.median(window) if len(window) >= 3 else None
            best = self._best.get((kind, self.threads), math.inf)
            if median is not None:
                best = self._best[(kind, self.threads)] = min(best, median)
            if self._trial is not None and self._trial[1] == kind and len(window) == WINDOW:
                self._judge_trial(median, now)
                return
            stalled = len(window) == WINDOW and median > STALL * best
            if stalled or now - self.last.at >= CHECK_SECONDS:
                self._check(now, kind, median / best if stalled else None, best)

    def _is_pause(self, kind: str, gap: float) -> bool:
        """A gap of ``IDLE`` or more is a pause unless the gap before it was about as long: slow work (a 128 px
        training step of 14 s) ticks at long gaps too, and must be watched like fast work."""
        before, self._gaps[kind] = self._gaps.get(kind), gap
        return gap >= IDLE and (before is None or gap > PAUSE * before)

    def _check(self, now: float, kind: str, slower: float | None, best: float) -> None:
        sample = self.sample()
        others = machine.others_cores(self.last, sample)
        if others is None and slower is None:
            return  # too soon to read the counters; try at the next tick
        self.last = sample
        if self.get_threads() != self._applied.get(threading.get_ident(), self.threads):
            self.active = False  # someone else set a count in this thread: theirs wins
            return
        target = self.threads if others is None else rule(self.usable, others)  # unread counters: only a stall
        if target < self.threads:
            self._change(target, f"other processes keep {others:.1f} cores busy", now)
        elif slower is not None and self.threads > 1:
            self._hold(now)  # a thread that stalls the steps is not tried again at once (no 1 -> 2 -> 1 -> 2 ...)
            self._change(self.threads - 1, f"steps took {slower:.1f}x longer than before", now)
        elif target > self.threads and now >= self._hold_until:
            self._raise += 1
            if self._raise >= 2:
                self._trial = (self.threads, kind, best)
                self._change(self.threads + 1, f"other processes keep {others:.1f} cores busy: trying one more", now)
        else:
            self._raise = 0

    def _judge_trial(self, median: float, now: float) -> None:
        before, _, best_before = self._trial
        self._trial = None
        if median <= (1 - GAIN) * best_before:
            return  # kept; the back-off stays as it is: a thread that paid for a moment may stall the steps later
        self._hold(now)
        self._change(before, f"one more thread was not faster ({median / best_before:.2f}x)", now)

    def _hold(self, now: float) -> None:
        """No step-up before the back-off has passed; the next back-off is twice as long (up to BACKOFF[1])."""
        self._hold_until = now + self._backoff
        self._backoff = min(2 * self._backoff, BACKOFF[1])

    def _change(self, threads: int, why: str, now: float) -> None:
        if threads == self.threads:
            return  # a trial judged after the count already fell back: nothing changes, nothing to say
        self.changes.append((now, self.threads, threads, why))
        self.threads, self._raise, self._skip = threads, 0, 1
        for window in self._durations.values():
            window.clear()
        self._apply_here()

    def _apply_here(self) -> None:
        here = threading.get_ident()
        if self._applied.get(here) != self.threads:
            self.set_threads(self.threads)
            self._applied[here] = self.threads


_lock = threading.Lock()
_choice: Choice | None = None
_governor: Governor | None = None
_mark: machine.CpuSample | None = None
_said = 0  # changes returned by changes(unsaid=True)


def mark_start() -> None:
    """Read the CPU counters now (the CLI does this first thing), so the first choice needs no extra wait."""
    global _mark
    _mark = machine.cpu_sample(machine.cores())


def _torch_threads() -> tuple[Callable[[int], None], Callable[[], int]]:
    import torch

    return torch.set_num_threads, torch.get_num_threads


def configure(threads: int | None = None, *, environ: dict | None = None) -> Choice:
    """Choose the thread count for this process (once; a later call with an explicit count replaces it).

    ``threads``: the user's count (``--threads``); else ``OMP_NUM_THREADS`` when it is a number (torch already
    follows it; a bad value is ignored with a warning); else the rule, on the load measured since
    ``mark_start`` (or over a quarter of a second), with a governor that keeps it right.
    """
    global _choice, _governor
    environ = os.environ if environ is None else environ
    with _lock:
        if _choice is not None and threads is None:
            return _choice
        set_threads, get_threads = _torch_threads()
        cores = machine.cores()
        if threads is not None:
            count = parse_count(threads, "--threads")
            set_threads(count)
            _choice, _governor = Choice(count, cores.usable, "--threads"), None
            return _choice
        warning = None
        if environ.get(ENV) is not None:
            try:
                count = parse_count(environ[ENV], ENV)
                _choice, _governor = Choice(count, cores.usable, ENV), None
                return _choice
            except FMError as error:
                warning = f"{error}; fm chooses the thread count itself"
        start = _mark if _mark is not None and time.monotonic() - _mark.at < STALE_MARK else None
        if start is None:
            start = machine.cpu_sample(cores)
            time.sleep(FIRST_WINDOW)
        now = machine.cpu_sample(cores)
        others = machine.others_cores(start, now)
        usable = min(cores.usable, get_threads())  # torch's own default: one per physical core, not hyperthreads
        count = rule(usable, others)
        _governor = Governor(usable, count, cores, lambda: machine.cpu_sample(cores), set_threads, get_threads)
        _governor.last = now
        _governor._apply_here()
        _choice = Choice(count, usable, "auto", others, warning)
        return _choice


def tick(work: float = 1.0, kind: str = "step") -> None:
    """Tell the governor a unit of ``kind`` of work is done (``Governor.tick``); the first call configures the
    threads if nothing did (the Python API)."""
    if _choice is None:
        configure()
    if _governor is not None:
        _governor.tick(work, kind)


def hold() -> None:
    """Keep the present count from now on (training whose gradients depend on the count: resume stays exact)."""
    if _governor is not None:
        _governor.active = False


def changes(unsaid: bool = False) -> list[tuple[float, int, int, str]]:
    """The governor's changes so far: (monotonic time, from, to, why); ``unsaid``: only those no earlier call with
    ``unsaid`` returned (what a progress display has not shown yet)."""
    global _said
    if _governor is None:
        return []
    found = _governor.changes[_said:] if unsaid else _governor.changes
    if unsaid:
        _said = len(_governor.changes)
    return list(found)


def now_threads() -> int:
    """The count the governor is using now (or the fixed one)."""
    if _governor is not None:
        return _governor.threads
    return _choice.threads if _choice is not None else 0


CHUNK = 4096  # below torch's grain size (32,768): a sum this long runs in one thread


def invariant_sum(tensor):
    """The sum of a tensor's elements, the same bits at any thread count.

    torch splits a whole-tensor sum into one part per thread, so its last bits depend on the count. Summing rows
    of ``CHUNK`` elements (each row by one thread) and then the row sums (short: one thread) does not.
    """
    flat, tails = tensor.reshape(-1), []
    while flat.numel() > CHUNK:
        body = flat.numel() // CHUNK * CHUNK
        tails.append(flat[body:].sum())
        flat = flat[:body].view(-1, CHUNK).sum(1)
    total = flat.sum()
    for tail in tails:
        total = total + tail
    return total


def reset() -> None:
    """Forget the choice (tests; a long-lived process that wants a fresh look at the machine)."""
    global _choice, _governor, _said
    with _lock:
        _choice, _governor, _said = None, None, 0
