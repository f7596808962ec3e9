"""Training for a wall-clock budget (``--max-time 10m``) by fixing a number of steps.

The learning-rate schedule, checkpoints and exact resume are all defined by steps, so a time
budget is turned into a step count once, early: the first steps are timed (within the warm-up,
where the schedule does not depend on the total), the time already spent (loading data,
building the model) and what the end will cost (the last checkpoint and sample grid, and the
periodic ones) are subtracted, and the steps that fit in what is left become the run's total.
Without a budget the same measurement tells the user how long the planned steps will take.
"""

import math
import re
import time
from dataclasses import dataclass

from fmcli.errors import FMError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
CALIBRATION_STEPS = 100  # at most; fewer when the warm-up is shorter or the budget small
# At most this share of the budget is spent measuring. A few seconds were not enough on a shared
# machine: 20 steps (10 s) once predicted 0.45 s/step for a run that went on at 0.57.
CALIBRATION_SHARE = 0.1
MIN_STEPS = 20  # a --max-time that fits fewer steps trains nothing worth keeping: the plan says so and stops
LONG_ON_CPU = 3600.0  # seconds: beyond this a CPU plan also says what --max-time would give instead


def parse_duration(text: str | float | int) -> float:
    """``"90s"``, ``"10m"``, ``"2h"``, ``"1h30m"`` or a number of seconds -> seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        parts = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?\s*[smh]?\s*)+)", str(text).lower())
        if not parts:
            raise FMError(f"--max-time takes a duration such as 90s, 10m, 2h or 1h30m (got {text!r})")
        seconds = sum(
            float(number) * _UNITS[unit or "s"]
            for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([smh]?)", parts.group(1))
        )
    if not (math.isfinite(seconds) and seconds > 0):
        raise FMError(f"--max-time must be a positive duration (got {text!r})")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"


@dataclass
class EndCosts:
    """Seconds the run spends outside optimizer steps, estimated from the step time."""

    checkpoint: float  # one checkpoint write
    grid: float  # one sample grid (0 when --sample-every is 0)


class StepTimer:
    """Times the first steps of a run, to fix the total steps of a budget or to say how long the plan takes.

    ``observe(step)`` after every step returns None until enough steps were timed, then the seconds
    per step (the caller stops observing).
    """

    def __init__(self, *, budget: float | None, started: float, loop_start: float, start_step: int, warmup_steps: int):
        self.budget, self.started, self.loop_start, self.start_step = budget, started, loop_start, start_step
        # Only steps inside the warm-up are timed: there the schedule does not depend on the total yet.
        self.limit = min(CALIBRATION_STEPS, max(1, warmup_steps - start_step))
        self.first_done = loop_start

    def observe(self, step: int, now: float | None = None) -> float | None:
        now = time.perf_counter() if now is None else now
        done = step - self.start_step
        if done == 1:
            self.first_done = now  # the first step pays one-off costs (allocations, caches): not timed
        long_enough = self.budget is not None and done >= 2 and now - self.first_done > CALIBRATION_SHARE * self.budget
        if done < self.limit and not long_enough:
            return None
        if done == 1:  # a single step to go by: its own time, one-off costs included (errs on the long side)
            return now - self.loop_start
        return (now - self.first_done) / (done - 1)

    def fit(self, step: int, seconds_per_step: float, costs: EndCosts, checkpoint_every: int, sample_every: int) -> int:
        """The total number of steps that ends within the budget."""
        left = self.budget - (time.perf_counter() - self.started) - costs.checkpoint - costs.grid
        more = max(0, math.floor(left / seconds_per_step))
        for _ in range(2):  # periodic checkpoints and grids depend on the total; two rounds settle it
            total = step + more
            periodic = (total - 1) // checkpoint_every * costs.checkpoint
            if sample_every:
                periodic += (total - 1) // sample_every * costs.grid
            more = max(0, math.floor((left - periodic) / seconds_per_step))
        return step + more


def end_costs(seconds_per_step: float, model, items_per_step: int, preview_images: int, sample_every: int) -> EndCosts:
    """A checkpoint write (about 200 MB/s for weights, EMA and two AdamW moments) and a preview grid (heun 10:
    20 forward passes of ``preview_images``, each ~1/3 of a training pass per item)."""
    from fmcli.sampling.generate import PREVIEW

    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    checkpoint = 0.05 + state_bytes * 4 / 200e6
    passes = PREVIEW.steps * 2  # a MeanFlow model's preview costs less
    grid = preview_images * passes * seconds_per_step / (3 * items_per_step) if sample_every else 0.0
    return EndCosts(checkpoint=checkpoint, grid=grid)


def plan_message(what: str, seconds_per_step: float, left: float, epoch: float) -> str:
    return (
        f"{what} at {seconds_per_step:.3g} s/step (timed over the first steps): training ends in about "
        f"{format_duration(left)} ({format_duration(epoch)} per epoch)"
    )


def budgeted_steps(budget: float, elapsed: float, seconds_per_step: float, warmup_steps: int | None,
                   device: str) -> int:  # fmt: skip
    """The steps a --max-time ``budget`` fits after ``elapsed`` seconds at ``seconds_per_step``; one line saying how
    much time it needs when that is too few to train anything worth keeping (or less than the warm-up)."""
    steps = fits(budget - elapsed, seconds_per_step)
    needed = max(MIN_STEPS, (warmup_steps or 0) + 1)
    if steps < needed:
        at_least = format_duration(needed * seconds_per_step + elapsed)
        raise FMError(
            f"--max-time {format_duration(budget)} fits about {steps} steps at {seconds_per_step:.3g} s/step on "
            f"{device} (the run needs at least {needed}, its warm-up included); give at least --max-time "
            f"{at_least}, or --steps"
        )
    return steps


def fits(budget_left: float, seconds_per_step: float) -> int:
    """Steps that fit in ``budget_left`` seconds (before the end's checkpoint and grid are counted)."""
    return max(0, math.floor(budget_left / seconds_per_step))


def plan_before(steps: int, seconds_per_step: float, steps_per_epoch: float, device: str) -> str:
    """What the run will cost, said before it starts (from a few probe passes): steps, epochs and time; on a
    CPU, when that is more than an hour, what ``--max-time 10m`` and ``1h`` would train instead."""
    seconds = steps * seconds_per_step
    text = (
        f"plan: {steps:,} steps ({steps / steps_per_epoch:.3g} epochs) at about {seconds_per_step:.3g} s/step on "
        f"{device}: about {format_duration(seconds)}"
    )
    if device == "cpu" and seconds > LONG_ON_CPU:
        options = [(600, "10m"), (3600, "1h")]
        instead = ", ".join(
            f"--max-time {name} trains about {fits(limit, seconds_per_step):,} steps "
            f"({fits(limit, seconds_per_step) / steps_per_epoch:.2g} epochs)"
            for limit, name in options
        )
        text += f"; that is more than an hour on this CPU: {instead}"
    return text
