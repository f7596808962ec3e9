"""What training tells the outside world, and how the outside world asks it to stop.

The core never prints: the CLI (or a notebook) passes ``Callbacks``; Ctrl-C and SIGTERM set a flag that the
loop reads after each step (``stop_signals``), so a run always stops on a written checkpoint.
"""

import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fmcli.errors import FMError
from fmcli.runtime import threads


class TrainingInterrupted(Exception):
    """Raised after SIGINT/SIGTERM once the checkpoint is safely written."""

    def __init__(self, step: int, checkpoint: Path, run_dir: Path, signum: int):
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint, self.run_dir, self.signum = step, checkpoint, run_dir, signum


def non_finite_error(loss: float, step: int, last_good: Path | None) -> FMError:
    """What a NaN or infinite step says: where it happened, the last good checkpoint, and what to try."""
    where = f"; the last good checkpoint is {last_good}" if last_good else "; no checkpoint was written yet"
    what = "loss" if not math.isfinite(loss) else "gradient"
    return FMError(
        f"non-finite {what} at step {step}{where}. Lower --lr, use --precision fp32, or pass --skip-nonfinite"
    )


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    step: int
    loss: float
    seconds: float  # since the command started (--max-time counts from there): setup and autoencoder included
    skipped: int


class Callbacks:
    """What the CLI (or a notebook) hears from training; the core never prints."""

    def on_start(self, total_steps: int, start_step: int, info: dict) -> None: ...
    def on_plan(self, total_steps: int) -> None: ...  # --max-time fixed the total after timing the first steps
    def on_step(self, step: int) -> None: ...
    def on_log(self, record: dict) -> None: ...
    def on_message(self, text: str) -> None: ...


@contextmanager
def stop_signals():
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and stops. A second Ctrl-C aborts."""
    flag = {"signum": 0}
    previous = {}

    def handler(signum, frame):
        if flag["signum"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signum"] = signum

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no signal handling
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class MetricsWindow:
    """Averages over the steps since the last log line: loss, images/s."""

    def __init__(self) -> None:
        self.start, self.images, self.losses = time.perf_counter(), 0, []

    def add(self, loss: float, images: int) -> None:
        self.losses.append(loss)
        self.images += images

    def record(self, **fields) -> dict:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        record = {
            "step": fields.pop("step"),
            "loss": sum(self.losses) / len(self.losses),
            **fields,
            "images_per_s": self.images / elapsed,
        }
        self.start, self.images, self.losses = time.perf_counter(), 0, []
        return record


def say_thread_changes(callbacks: "Callbacks", step: int) -> None:
    """Tell the callbacks each change of the thread governor (``fmcli.runtime.threads``) not told yet."""
    for _, before, after, why in threads.changes(unsaid=True):
        callbacks.on_message(f"threads: {before} -> {after} at step {step:,} ({why})")


def run_info(trainer) -> dict:
    """What ``Callbacks.on_start`` hears about a run (the CLI prints it as its first line)."""
    return {
        "run_dir": str(trainer.run_dir),
        "device": str(trainer.device),
        "world_size": trainer.dist.world_size,
        "data": trainer.config.data,
        "size": len(trainer.data),
        "classes": trainer.num_classes,
        "captions": trainer.text is not None,  # a text model
        "parameters": sum(p.numel() for p in trainer.state.model.parameters()),
    }
