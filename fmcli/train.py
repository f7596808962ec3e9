"""The training loop: flow matching with AdamW, warm-up + cosine, EMA, checkpoints and exact resume.

Where the parts live: the objective in ``fmcli.flow``, what step k trains on in ``fmcli.batches``,
AdamW / schedule / EMA in ``fmcli.optim``, checkpoint state in ``fmcli.train_state``, run folders
in ``fmcli.runs``, options in ``fmcli.config``. This module builds them and runs the loop.

Everything random in step k is drawn from generators seeded by (seed, k), and the initial weights
from the seed alone, so N steps + N resumed steps == 2N steps in one go (bit for bit on the CPU;
with a cosine schedule the planned total must be the same).
"""

import math
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fmcli import distributed
from fmcli.batches import BatchSampler, step_seed
from fmcli.budget import EndCosts, StepTimer, format_duration
from fmcli.checkpoint import CheckpointMeta, LoadedModel, load_checkpoint, read_checkpoint
from fmcli.config import DEFAULT_STEPS, TrainConfig, check_resume, resolve, to_json
from fmcli.data.base import ArrayDataset, LoadOptions
from fmcli.device import resolve_device
from fmcli.errors import FMError
from fmcli.files import atomic_write_bytes
from fmcli.flow import broadcast_time, flow_matching_loss, interpolate, meanflow_loss
from fmcli.loggers import Loggers, check_loggers
from fmcli.models import build_model
from fmcli.models.presets import default_model_config
from fmcli.optim import ema_decay_at, lr_at, make_optimizer, update_ema
from fmcli.runs import checkpoint_name, new_run_dir, publish_checkpoint, resume_target
from fmcli.sampling import guided_velocity
from fmcli.train_state import TrainState, check_same_data, checkpoint_meta, data_description, restore_state, save_state

UNPLANNED = 10**9  # the placeholder total of a --max-time run until its first steps are timed


class TrainingInterrupted(Exception):
    """Raised after SIGINT/SIGTERM once the checkpoint is safely written."""

    def __init__(self, step: int, checkpoint: Path, run_dir: Path, signum: int):
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint, self.run_dir, self.signum = step, checkpoint, run_dir, signum


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    step: int
    loss: float
    seconds: float
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
        self.__init__()
        return record


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        callbacks: Callbacks,
        resume_from: Path | None,
        dist: distributed.DistInfo,
        device: torch.device,
        started: float | None = None,
    ):
        self.config, self.run_dir, self.cb, self.dist, self.device = config, run_dir, callbacks, dist, device
        self.started = time.perf_counter() if started is None else started  # --max-time counts from here
        self.max_time = config.max_time
        self._check_batch_split()
        self.data = self._load_data()
        self.num_classes = self.data.num_classes if (config.conditional and self.data.labels is not None) else 0
        if config.hflip and self.data.kind != "image":
            raise FMError(f"--hflip flips images; {config.data} holds {self.data.kind}")
        self.data_meta = data_description(self.data, self.num_classes)
        checkpoint = read_checkpoint(resume_from) if resume_from is not None else None
        self.teacher = self._load_teacher()
        self.state = self._build_state(checkpoint[1] if checkpoint else None)
        self._check_guidance()
        self.last_good: Path | None = None
        if checkpoint is not None:
            check_same_data(checkpoint[1].data, self.data_meta, resume_from)
            restore_state(self.state, *checkpoint, resume_from, config.weight_decay)
            self.last_good = Path(resume_from).resolve()
        self.forward_model = self._wrap_for_forward(self.state.model)
        self.total_steps = self._plan_steps()
        self.batches = self._batch_sampler()
        self.stop_flag, self.stop_requested = {"signum": 0}, 0
        self.logger_specs = check_loggers(config.log_to)

    # -- building the parts

    def _check_batch_split(self) -> None:
        config, world = self.config, self.dist.world_size
        if config.batch_size % (world * config.grad_accum):
            raise FMError(
                f"--batch-size {config.batch_size} must be divisible by the number of processes "
                f"({world}) times --grad-accum ({config.grad_accum})"
            )

    def _load_data(self) -> ArrayDataset:
        from fmcli.data.resolve import load_data

        config = self.config
        options = LoadOptions(
            split="train",
            data_dir=Path(config.data_dir) if config.data_dir else None,
            image_size=config.image_size,
            channels=config.channels,
            seed=config.seed,
            cache=config.cache,
        )
        data = load_data(config.data, options)
        if len(data) == 0:
            raise FMError(f"data set {config.data} is empty")
        skipped = data.info.get("skipped")
        if skipped and self.dist.is_main:
            self.cb.on_message(
                f"warning: skipped {skipped['count']} unreadable file(s), e.g. {', '.join(skipped['examples'])}"
            )
        if data.info.get("cache_warning") and self.dist.is_main:
            self.cb.on_message(f"warning: {data.info['cache_warning']}")
        return data

    def _load_teacher(self) -> LoadedModel | None:
        """Distillation: the teacher flow, frozen, on the training device (its EMA weights)."""
        if not self.config.teacher:
            return None
        teacher = load_checkpoint(self.config.teacher, device=self.device)
        if teacher.meta.shape != self.data.shape or teacher.meta.num_classes != self.num_classes:
            raise FMError(
                f"the teacher {self.config.teacher} was trained on items of shape {list(teacher.meta.shape)} "
                f"with {teacher.meta.num_classes} classes; the data here is {list(self.data.shape)} with "
                f"{self.num_classes}"
            )
        return teacher

    def _build_state(self, resumed: CheckpointMeta | None) -> TrainState:
        """Model, EMA copy, AdamW and grad scaler; a resumed run keeps its checkpoint's model config.

        A MeanFlow model is the preset with the interval input; a distilled student is its teacher's
        architecture with the interval input, starting from the teacher's weights (the interval input
        starts at zero, so at step 0 the student's u(x, r, t) is the teacher's v(x, t) for every r).
        """
        config, device = self.config, self.device
        if resumed is not None:  # newer presets must not change a resumed model
            model_config = dict(resumed.model_config)
        elif self.teacher is not None:
            model_config = {**self.teacher.meta.model_config, "interval": True}
        else:
            model_config = default_model_config(self.data.kind, self.data.shape, self.num_classes, device.type)
            model_config.update(config.model)
            if config.objective == "meanflow":
                model_config["interval"] = True
        torch.manual_seed(config.seed)  # the initial weights depend on --seed only
        model = build_model(model_config).to(device)
        if self.teacher is not None and resumed is None:
            missing, unexpected = model.load_state_dict(self.teacher.model.state_dict(), strict=False)
            assert not unexpected and all("interval" in key for key in missing), (missing, unexpected)
        ema = build_model(model_config).to(device).requires_grad_(False)
        ema.load_state_dict(model.state_dict())
        if config.grad_checkpoint and hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        return TrainState(model=model, ema=ema, optimizer=make_optimizer(model, config), scaler=scaler)

    def _check_guidance(self) -> None:
        """--train-cfg needs an unconditional velocity: class labels trained with label dropout."""
        if self.config.train_cfg == 1:
            return
        dropout = self.teacher.meta.label_dropout if self.teacher is not None else self.config.label_dropout
        if not self.num_classes or dropout <= 0:
            whose = "the teacher was" if self.teacher is not None else "this run is"
            raise FMError(
                f"--train-cfg {self.config.train_cfg:g} needs class labels and label dropout, and {whose} "
                "trained without them; use --train-cfg 1"
            )

    @property
    def channels_last(self) -> bool:
        """NHWC convolutions are faster on CUDA tensor cores; on the CPU the default layout is."""
        return self.device.type == "cuda" and self.data.kind == "image"

    def _wrap_for_forward(self, model: nn.Module) -> nn.Module:
        """torch.compile and DDP wrap the model for the forward pass; ``state.model`` stays the plain module.

        MeanFlow's torch.func.jvp cannot run through DDP's wrapper: its gradients are averaged over
        the ranks by ``distributed.average_gradients`` after the backward pass instead.
        """
        wrapped = torch.compile(model) if self.config.compile else model
        if self.dist.enabled and self.config.objective == "fm":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(wrapped, device_ids=ids)
        return wrapped

    def _plan_steps(self) -> int:
        """The total number of steps; under --max-time a placeholder until the first steps are timed."""
        config = self.config
        if config.max_time is not None:
            return self.state.step + UNPLANNED
        if config.steps is not None:
            total = config.steps
        elif config.epochs is not None:
            total = max(1, math.ceil(config.epochs * max(1, len(self.data) // config.batch_size)))
        else:
            total = DEFAULT_STEPS
        if self.state.step >= total:
            raise FMError(
                f"the run is already at step {self.state.step} of {total}; pass a larger --steps to continue it"
            )
        return total

    def _batch_sampler(self) -> BatchSampler:
        return BatchSampler(self._place_data(), self.data.labels if self.num_classes else None, self.num_classes,
                            self.data.kind, self.config, self.dist.rank, self.dist.world_size, self.device)  # fmt: skip

    def _place_data(self) -> torch.Tensor:
        """uint8 images go to the GPU when they take at most a quarter of its memory (MNIST: 47 MB), and are
        normalised there batch by batch. Otherwise they stay where they are, in RAM or memory-mapped from
        the folder cache, and each batch is staged through pinned memory."""
        inputs = self.data.data
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            if inputs.numel() * inputs.element_size() <= total // 4:
                return inputs.to(self.device)
        return inputs

    # -- files

    def meta(self) -> CheckpointMeta:
        meta = checkpoint_meta(self.state, self.config, self.data_meta, self.total_steps)
        if self.max_time is not None:
            meta.extra["planned_for_max_time"] = self.max_time  # the budget that chose --steps
        return meta

    def save(self) -> Path:
        """Write step-N.safetensors (rank 0), repoint last.safetensors, prune to --keep."""
        path = self.run_dir / checkpoint_name(self.state.step)
        if self.dist.is_main:
            save_state(path, self.state, self.meta())
            publish_checkpoint(self.run_dir, path, self.config.keep)
        distributed.barrier(self.dist)
        self.last_good = path
        return path

    def save_sample_grid(self) -> Path | None:
        """samples/step-N.png from the EMA weights (rank 0 only)."""
        if not self.dist.is_main:
            return None
        from fmcli.checkpoint import LoadedModel
        from fmcli.sampling import write_sample_grid

        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        loaded = LoadedModel(model=self.state.ema.eval(), meta=self.meta())
        path = folder / f"step-{self.state.step:07d}.png"
        self.loggers.log_image(self.state.step, "samples", write_sample_grid(loaded, path))
        return path

    # -- the loop

    def train_step(self) -> tuple[float, float, float]:
        """One optimizer step on the global batch of ``state.step``; returns (loss, grad norm, lr)."""
        config, state = self.config, self.state
        lr = lr_at(state.step, config, self.total_steps)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        batch = self.batches.draw(state.step)
        # Draws inside the model (dropout) use the global generator: seed it per step and rank too.
        torch.manual_seed(step_seed(config.seed, state.step, 2 + self.dist.rank))
        loss = self._accumulate_gradients(batch)
        state.scaler.unscale_(state.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
        # One host sync per step: agree across ranks on the loss, the gradient norm and a stop request.
        status = torch.stack(
            [
                loss.float(),
                grad_norm.float().nan_to_num(float("inf")),
                torch.tensor(float(self.stop_flag["signum"]), device=self.device),
            ]
        )
        loss_value, grad_value, signum = distributed.all_reduce_status(self.dist, status)
        # With fp16 an infinite gradient is the grad scaler's business (it skips and lowers the scale).
        if math.isfinite(loss_value) and (state.scaler.is_enabled() or math.isfinite(grad_value)):
            state.scaler.step(state.optimizer)
            update_ema(state.ema, state.model, ema_decay_at(state.step, config.ema_decay))
        else:
            self._non_finite(loss_value)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)
        self.stop_requested = int(signum)
        state.step += 1
        state.images_seen += config.batch_size
        return loss_value, grad_value, lr

    def _accumulate_gradients(self, batch) -> torch.Tensor:
        """Forward and backward over --grad-accum micro-batches; returns the mean loss (detached)."""
        config = self.config
        x0, x1 = batch.x0, batch.x1
        if self.channels_last:
            x0, x1 = (x.contiguous(memory_format=torch.channels_last) for x in (x0, x1))
        autocast = (
            nullcontext()
            if config.precision == "fp32"
            else torch.autocast(self.device.type, dtype=torch.bfloat16 if config.precision == "bf16" else torch.float16)
        )
        micro = x0.shape[0] // config.grad_accum
        total = torch.zeros((), device=self.device)
        ddp = self.dist.enabled and config.objective == "fm"
        for k in range(config.grad_accum):
            part = slice(k * micro, (k + 1) * micro)
            labels = None if batch.labels is None else batch.labels[part]
            sync = k == config.grad_accum - 1 or not ddp  # DDP all-reduces on the last one only
            with nullcontext() if sync else self.forward_model.no_sync(), autocast:
                if config.objective == "fm":
                    conditioning = {} if labels is None else {"y": labels}
                    loss = flow_matching_loss(self.forward_model, x0[part], x1[part], batch.t[part], **conditioning)
                    logged = loss
                else:
                    loss, logged = self._meanflow_loss(x0[part], x1[part], batch.r[part], batch.t[part], labels)
                self.state.scaler.scale(loss / config.grad_accum).backward()
            total += logged.detach() / config.grad_accum
        if self.dist.enabled and not ddp:
            distributed.average_gradients(self.dist, self.state.model.parameters())
        return total

    def _meanflow_loss(self, x0, x1, r, t, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """MeanFlow's loss against x1 - x0, a teacher's velocity, or either with guidance folded in (--train-cfg);
        returns (the weighted loss to backpropagate, the plain mean squared error to log)."""
        config, model = self.config, self.state.model
        conditioning = {} if labels is None else {"y": labels}
        velocity = None
        if self.teacher is not None or config.train_cfg != 1:
            velocity = self._target_velocity(x0, x1, t, labels)
        return meanflow_loss(
            model, x0, x1, r, t, weighting_power=config.weighting_power, velocity=velocity, **conditioning
        )

    @torch.no_grad()
    def _target_velocity(self, x0, x1, t, labels) -> torch.Tensor:
        """The velocity MeanFlow's target is built from, at x_t (no gradient flows into it):

        distillation:  v_T(x_t, t | y) guided, v_uncond + S (v_cond - v_uncond), S = --train-cfg;
        from scratch:  S (x1 - x0) + (1 - S) u(x_t, t, t | null), the paper's guidance with the model's own
                       unconditional velocity. Samples trained on the null class keep the plain target.
        """
        xt = interpolate(x0, x1, t)
        if self.teacher is not None:
            guided = guided_velocity(self.teacher.model, self.config.train_cfg, self.num_classes)
            return guided(xt, t, labels) if labels is not None else self.teacher.model(xt, t)
        null = torch.full_like(labels, self.num_classes)
        unconditional = self.state.model(xt, t, y=null, r=t)
        guided = self.config.train_cfg * (x1 - x0) + (1 - self.config.train_cfg) * unconditional
        dropped = broadcast_time(labels == self.num_classes, x0)
        return torch.where(dropped, x1 - x0, guided)

    def _non_finite(self, loss_value: float) -> None:
        if not self.config.skip_nonfinite:
            where = (
                f"; the last good checkpoint is {self.last_good}"
                if self.last_good
                else "; no checkpoint was written yet"
            )
            what = "loss" if not math.isfinite(loss_value) else "gradient"
            raise FMError(
                f"non-finite {what} at step {self.state.step}{where}. Lower --lr, use --precision fp32, "
                f"or pass --skip-nonfinite"
            )
        self.state.skipped += 1

    def log(self, window: MetricsWindow, grad_norm: float, lr: float, start_time: float) -> None:
        record = window.record(step=self.state.step, lr=lr, grad_norm=grad_norm, skipped_steps=self.state.skipped,
                               time=time.perf_counter() - start_time)  # fmt: skip
        if self.device.type == "cuda":
            record["peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.dist.is_main:
            self.loggers.log(record)
            self.cb.on_log(record)

    def run(self) -> TrainResult:
        """Step to the planned total; log, checkpoint and sample on their cadences; on a signal, checkpoint and stop."""
        config, state = self.config, self.state
        if self.dist.is_main:
            self.cb.on_start(self.total_steps, state.step, self.describe())
            self.loggers = Loggers(self.logger_specs, self.run_dir, config)
        start_time, window, loss = time.perf_counter(), MetricsWindow(), float("nan")
        timer = StepTimer(budget=config.max_time, started=self.started, loop_start=start_time, start_step=state.step,
                          warmup_steps=config.warmup_steps)  # fmt: skip
        try:
            with stop_signals() as self.stop_flag:
                while state.step < self.total_steps:
                    loss, grad_norm, lr = self.train_step()
                    timer = self._time(timer)
                    window.add(loss, config.batch_size)
                    self._after_step(window, grad_norm, lr, start_time)
            path = self.save()
            if config.sample_every and (grid := self.save_sample_grid()) is not None:
                self.cb.on_message(f"samples: {grid}")
        finally:
            if self.dist.is_main:
                self.loggers.close()
        return TrainResult(self.run_dir, path, state.step, loss, time.perf_counter() - start_time, state.skipped)

    def _after_step(self, window: MetricsWindow, grad_norm: float, lr: float, start_time: float) -> None:
        config, step = self.config, self.state.step
        if self.dist.is_main:
            self.cb.on_step(step)
        last = step == self.total_steps
        if step % config.log_every == 0 or last or self.stop_requested:
            self.log(window, grad_norm, lr, start_time)
        if self.stop_requested and not last:
            raise TrainingInterrupted(step, self.save(), self.run_dir, self.stop_requested)
        if step % config.checkpoint_every == 0 and not last:
            self.save()
        if config.sample_every and step % config.sample_every == 0 and not last:
            self.save_sample_grid()

    def _time(self, timer: StepTimer | None) -> StepTimer | None:
        """Time the first steps (all ranks agree, on the slowest rank's time); then plan, and stop timing."""
        if timer is None:
            return None
        seconds = distributed.all_max(self.dist, timer.observe(self.state.step) or 0.0, self.device)
        if seconds <= 0:
            return timer
        self._plan(timer, seconds)
        return None

    def _plan(self, timer: StepTimer, seconds_per_step: float) -> None:
        """Fix the total of a --max-time run, or tell how long the planned steps will take."""
        config, step = self.config, self.state.step
        costs = self._end_costs(seconds_per_step)
        if config.max_time is not None:
            self.total_steps = max(
                step, timer.fit(step, seconds_per_step, costs, config.checkpoint_every, config.sample_every)
            )
            # From here on the run is defined by steps, like any other (resume, schedule, config.json).
            self.max_time, config.steps, config.max_time = config.max_time, self.total_steps, None
            if self.dist.is_main:
                atomic_write_bytes(self.run_dir / "config.json", to_json(config).encode())
                self.cb.on_plan(self.total_steps)
            what = f"--max-time {format_duration(self.max_time)}: {self.total_steps:,} steps"
        else:
            what = f"{self.total_steps:,} steps"
        left = (self.total_steps - step) * seconds_per_step + costs.checkpoint + costs.grid
        epoch = seconds_per_step * len(self.data) / config.batch_size
        if self.dist.is_main:
            self.cb.on_message(
                f"{what} at {seconds_per_step:.3g} s/step (timed over the first steps): training "
                f"ends in about {format_duration(left)} ({format_duration(epoch)} per epoch)"
            )

    def _end_costs(self, seconds_per_step: float) -> EndCosts:
        """A checkpoint write (about 200 MB/s) and a preview grid (forward passes, each ~1/3 of a training pass)."""
        from fmcli.sampling import PREVIEW, PREVIEW_PER_CLASS

        state_bytes = sum(t.numel() * t.element_size() for t in self.state.model.state_dict().values()) * 4
        checkpoint = 0.05 + state_bytes / 200e6
        items_per_step = self.config.batch_size // self.dist.world_size
        images = (
            PREVIEW_PER_CLASS * self.num_classes if self.num_classes else (1000 if self.data.kind == "points" else 64)
        )
        passes = PREVIEW.steps * 2  # heun: two evaluations per step (a MeanFlow model's preview costs less)
        grid = images * passes * seconds_per_step / (3 * items_per_step) if self.config.sample_every else 0.0
        return EndCosts(checkpoint=checkpoint, grid=grid)

    def describe(self) -> dict:
        return {
            "run_dir": str(self.run_dir),
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "data": self.config.data,
            "size": len(self.data),
            "classes": self.num_classes,
            "parameters": sum(p.numel() for p in self.state.model.parameters()),
        }


def train(
    overrides: dict,
    *,
    config_file: Path | None = None,
    resume: str | None = None,
    allow_change: bool = False,
    callbacks: Callbacks | None = None,
    started: float | None = None,
) -> TrainResult:
    """Resolve the config (defaults < file < overrides), set up the run folder, train, checkpoint.

    Under torchrun every rank runs this; only rank 0 writes files. Input errors are raised
    before anything is written, and before a new run folder is created. ``started`` (a
    ``time.perf_counter()`` value) is when the user's clock started, for --max-time.
    """
    started = time.perf_counter() if started is None else started  # --max-time counts from here
    callbacks = callbacks or Callbacks()
    resume_from = None
    if resume is not None:
        resume_from = resume_target(resume, overrides.get("out"))
        run_dir = resume_from.parent
        _, meta = read_checkpoint(resume_from)
        config = resolve({**overrides, "out": str(run_dir)}, config_file, base=meta.train_config)
        check_resume(meta.train_config, config, allow_change)
    else:
        config = resolve(overrides, config_file)
        run_dir = new_run_dir(config.out, config.data)  # every rank picks the same folder; created after the barrier
        config.out = str(run_dir)
    device = resolve_device(config.device)
    dist = distributed.setup(device.type)
    try:
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        distributed.barrier(dist)
        trainer = Trainer(config, run_dir, callbacks, resume_from, dist, device, started)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(run_dir / "config.json", to_json(config).encode())
        distributed.barrier(dist)
        return trainer.run()
    finally:
        distributed.teardown(dist)
