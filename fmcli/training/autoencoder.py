"""``fm autoencoder train``: train the built-in autoencoder on a data set's images, in a run folder.

The run folder holds ``autoencoder.safetensors`` (the autoencoder: weights, config and latent statistics, what
``fm autoencoder eval`` and latent training read), ``state.safetensors`` (weights, Adam moments, step and options:
what ``--resume`` continues from), ``metrics.jsonl`` and ``.lock`` (the run-folder lock ``fm train`` uses).

Step k trains on a batch drawn from (seed, k) alone (``fmcli.training.batches.BatchOrder``) with a learning rate
that depends on k and the planned total, so a resumed run equals an uninterrupted one bit for bit. ``--max-time``
times the first steps and fixes the total (``fmcli.training.budget``). Data without a test split keeps a seeded
tenth of its items out of training (``held_out_split``) for ``fm autoencoder eval``.
"""

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from fmcli.autoencoders.base import FILE, held_out_split, measure_statistics, save_file, set_statistics
from fmcli.autoencoders.builtin import DEFAULTS, LATENT_PENALTY, build, check_config
from fmcli.data.base import ArrayDataset, LoadOptions, to_model_space
from fmcli.data.resolve import describe, load_data, registered_dataset
from fmcli.device import resolve_device
from fmcli.errors import FMError
from fmcli.io.files import atomic_write_bytes
from fmcli.runtime import threads
from fmcli.runtime.threads import invariant_sum
from fmcli.training.batches import BatchOrder
from fmcli.training.budget import EndCosts, StepTimer
from fmcli.training.events import Callbacks, MetricsWindow, TrainingInterrupted, TrainResult, stop_signals
from fmcli.training.runs import lock_run, new_run_dir

STATE = "state.safetensors"
STATE_FORMAT = "fmcli-autoencoder-state"
WARMUP = 50  # steps of linear warm-up; --max-time times steps inside it
STATISTICS_ITEMS = 512  # training images the latent mean and std are measured on (all of them when fewer)
STRUCTURAL = ("data", "image_size", "channels", "factor", "latent_channels", "width", "seed", "batch_size")


@dataclass
class AutoencoderTrainOptions:
    data: str
    image_size: int | None = None  # None: the data's own size
    channels: int | None = None
    data_dir: str | None = None
    factor: int = DEFAULTS["factor"]
    latent_channels: int = DEFAULTS["latent_channels"]
    width: int = DEFAULTS["width"]
    steps: int = 3000
    max_time: float | None = None  # seconds; fixes the total steps after timing the first ones
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # None: fm's rule (``fmcli.runtime.threads``)
    checkpoint_every: int = 500
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise FMError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FMError(f"--lr must be a positive number (got {self.lr})")


def lr_at(step: int, lr: float, total: int) -> float:
    """Linear warm-up over WARMUP steps, then a cosine down to a tenth of ``lr`` at ``total``."""
    if step < WARMUP:
        return lr * (step + 1) / WARMUP
    progress = min(1.0, (step - WARMUP) / max(1, total - WARMUP))
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def load_training_data(options: AutoencoderTrainOptions) -> tuple[ArrayDataset, torch.Tensor]:
    """The images and the indices training uses (all of a data set with a test split, else all but the held-out
    tenth); one line for point data or an image size the factor does not divide, before anything is written."""
    load = LoadOptions(split="train", image_size=options.image_size, channels=options.channels,
                       data_dir=Path(options.data_dir) if options.data_dir else None)  # fmt: skip
    data = load_data(options.data, load)
    if data.kind != "image":
        raise FMError(f"{options.data!r} holds {data.kind}, not images; an autoencoder needs pictures")
    channels, height, width = data.shape
    if height != width:
        raise FMError(f"{options.data!r} has {height}x{width} images; give --image-size to make them square")
    check_config(channels, height, options.factor, options.latent_channels, options.width)
    spec = registered_dataset(options.data)
    has_test = spec is not None and "test" in spec.splits
    indices = torch.arange(len(data)) if has_test else held_out_split(len(data))[0]
    return data, indices


def save_state(path: Path, model, optimizer, options: AutoencoderTrainOptions, step: int, total: int) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for index, slots in optimizer.state_dict()["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    groups = json.dumps(optimizer.state_dict()["param_groups"])
    metadata = {"format": STATE_FORMAT, "options": json.dumps(asdict(options)), "step": str(step),
                "total_steps": str(total), "param_groups": groups}  # fmt: skip
    payload = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, payload)


def read_state(run_dir: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a run's training state; one line when there is none or it is damaged."""
    from safetensors import safe_open

    path = Path(run_dir) / STATE
    if not path.is_file():
        raise FMError(f"--resume {run_dir}: no {STATE} there (give the run folder of an `fm autoencoder train`)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except Exception as error:  # noqa: BLE001 - a truncated or corrupted file
        raise FMError(f"{path} is damaged ({type(error).__name__}); start a new run") from None
    if metadata.get("format") != STATE_FORMAT:
        raise FMError(f"{path} is not the training state of an autoencoder run")
    return tensors, metadata


def resumed_options(run_dir: Path, given: dict) -> AutoencoderTrainOptions:
    """The run's own options, with what may change on resume (steps, max_time, lr, device, ...) from ``given``.
    Without --steps or --max-time the run goes on to the total it planned."""
    metadata = read_state(run_dir)[1]
    saved = json.loads(metadata["options"])
    given = {key: value for key, value in given.items() if value is not None}
    changed = [key for key in STRUCTURAL if key in given and given[key] != saved[key]]
    if changed:
        details = "; ".join(f"{key}: {saved[key]!r} -> {given[key]!r}" for key in changed)
        raise FMError(f"cannot resume {run_dir} as a different autoencoder or data ({details})")
    if "steps" not in given and "max_time" not in given:
        given["steps"] = int(metadata["total_steps"])
    saved["max_time"] = None  # a budget is spent once; a new one is given again
    known = {f.name for f in fields(AutoencoderTrainOptions)}
    return AutoencoderTrainOptions(**(saved | {k: v for k, v in given.items() if k in known}))


class AutoencoderTrainer:
    """One run: the data, the model, Adam, the step counter; ``run()`` trains to the planned total."""

    def __init__(self, options: AutoencoderTrainOptions, data: tuple, run_dir: Path, callbacks: Callbacks,
                 started: float):  # fmt: skip
        self.options, self.run_dir, self.callbacks, self.started = options, Path(run_dir), callbacks, started
        self.device = resolve_device(options.device)
        self.data, self.indices = data
        channels, size, _ = self.data.shape
        with torch.random.fork_rng(devices=[]):  # the weights from the seed, the caller's generator untouched
            torch.manual_seed(options.seed)
            shape = {"factor": options.factor, "latent_channels": options.latent_channels, "width": options.width}
            self.model = build(channels=channels, image_size=size, **shape).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=options.lr)
        self.order = BatchOrder(len(self.indices), options.batch_size, options.seed)
        threads.configure(options.threads)  # torch's default (one per core) crawls when other work shares them
        self.step, self.total = 0, None if options.max_time else options.steps

    def restore(self) -> None:
        tensors, metadata = read_state(self.run_dir)
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        slots: dict[int, dict] = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                index, key = name[6:].split(".", 1)
                slots.setdefault(int(index), {})[key] = value
        self.optimizer.load_state_dict({"state": slots, "param_groups": json.loads(metadata["param_groups"])})
        self.step = int(metadata["step"])
        self.total = None if self.options.max_time else max(self.options.steps, self.step)

    def train_step(self) -> float:
        chosen = self.indices[self.order.indices(self.step)]
        images = to_model_space(self.data.data[chosen].to(self.device))
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.options.lr, self.total or WARMUP + 1)
        latents = self.model.encode_raw(images)
        error = self.model.decode_raw(latents) - images
        # L1 + L2 + the latent penalty, summed so the bits do not depend on the thread count (exact resume)
        loss = (invariant_sum(error.abs()) + invariant_sum(error.square())) / error.numel()
        loss = loss + LATENT_PENALTY * invariant_sum(latents.square()) / latents.numel()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def checkpoint(self) -> Path:
        """The training state, then the autoencoder with latent statistics measured now on training images."""
        save_state(self.run_dir / STATE, self.model, self.optimizer, self.options, self.step, self.total or self.step)
        self.model.eval()
        measured = self.indices[:STATISTICS_ITEMS]
        set_statistics(self.model, *measure_statistics(self.model, self.data.data[measured]))
        self.model.train()
        self.model.trained = {"data": describe(self.data) | {"source": self.options.data}, "step": self.step,
                              "statistics_items": len(measured), "options": asdict(self.options)}  # fmt: skip
        save_file(self.run_dir / FILE, self.model.state_dict(), self.model.export())
        return self.run_dir / FILE

    def plan(self, timer: StepTimer) -> None:
        """Under --max-time, once the first steps are timed: the total that ends within the budget."""
        seconds = timer.observe(self.step)
        if seconds is not None:
            # a checkpoint's statistics pass encodes STATISTICS_ITEMS images: about a sixth of a step's work each
            passes = min(STATISTICS_ITEMS, len(self.indices)) / (6 * self.options.batch_size)
            costs = EndCosts(checkpoint=seconds * (passes + 1), grid=0.0)
            self.total = max(self.step, timer.fit(self.step, seconds, costs, self.options.checkpoint_every, 0))
            self.callbacks.on_plan(self.total)

    def run(self) -> TrainResult:
        options, window, last = self.options, MetricsWindow(), None
        info = {"run_dir": str(self.run_dir), "device": str(self.device), "world_size": 1, "data": options.data,
                "size": len(self.indices), "classes": self.data.num_classes, "captions": False,
                "parameters": sum(p.numel() for p in self.model.parameters()), "task": "autoencoder"}  # fmt: skip
        self.callbacks.on_start(self.total or options.steps, self.step, info)
        timer = StepTimer(budget=options.max_time, started=self.started, loop_start=time.perf_counter(),
                          start_step=self.step, warmup_steps=WARMUP) if options.max_time else None  # fmt: skip
        self.model.train()
        with stop_signals() as stop, open(self.run_dir / "metrics.jsonl", "a") as metrics:
            while self.total is None or self.step < self.total:
                last = self.train_step()
                threads.tick()  # the governor: fewer threads when steps stall, more when cores free up
                window.add(last, options.batch_size)
                self.callbacks.on_step(self.step)
                if timer is not None and self.total is None:
                    self.plan(timer)
                if self.step % options.log_every == 0:
                    record = window.record(step=self.step, lr=lr_at(self.step - 1, options.lr, self.total or 1))
                    metrics.write(json.dumps(record) + "\n")
                    self.callbacks.on_log(record)
                if stop["signum"]:
                    raise TrainingInterrupted(self.step, self.checkpoint(), self.run_dir, stop["signum"])
                if self.step % options.checkpoint_every == 0 and self.step < (self.total or math.inf):
                    self.checkpoint()
        path = self.checkpoint()
        return TrainResult(self.run_dir, path, self.step, last if last is not None else math.nan,
                           time.perf_counter() - self.started, 0)  # fmt: skip


def train_autoencoder(
    options: dict, *, out: str | None = None, resume: str | None = None, callbacks: Callbacks | None = None,
    started: float | None = None,
) -> TrainResult:  # fmt: skip
    """Train (or, with ``resume``, continue) a built-in autoencoder; ``options`` are AutoencoderTrainOptions fields
    the user gave. Bad input is one FMError before anything is written."""
    started = time.perf_counter() if started is None else started
    callbacks = callbacks or Callbacks()
    if resume:
        run_dir = Path(resume).expanduser()
        parsed = resumed_options(run_dir, options)
    else:
        parsed = AutoencoderTrainOptions(**options)
        name = Path(parsed.data.rstrip("/")).name or "data"
        run_dir = new_run_dir(out, f"{name}-autoencoder")
    data = load_training_data(parsed)  # every check on the data and the shape before the folder exists
    resolve_device(parsed.device)
    with lock_run(run_dir):
        trainer = AutoencoderTrainer(parsed, data, run_dir, callbacks, started)
        if resume:
            trainer.restore()
        return trainer.run()
