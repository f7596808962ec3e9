"""The training loop: one objective, AdamW with warm-up + cosine, EMA, checkpoints and exact resume.

Where the parts live (all in ``fmcli.training``): what a batch is trained towards in ``objectives``, what
step k trains on in ``batches``, how the run is built in ``setup``, AdamW / schedule / EMA in ``optim``,
checkpoint state in ``state``, run folders and their lock in ``runs``, options in ``config``, --max-time in
``budget``. This module runs the loop.

Everything random in step k is drawn from generators seeded by (seed, k), and the initial weights
from the seed alone, so N steps + N resumed steps == 2N steps in one go (bit for bit on the CPU;
with a cosine schedule the planned total must be the same).
"""

import math
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from fmcli.device import resolve_device
from fmcli.io.checkpoint import CheckpointMeta, LoadedModel, read_checkpoint, read_header
from fmcli.io.files import atomic_write_bytes
from fmcli.runtime import threads
from fmcli.sampling.generate import preview_count, write_sample_grid
from fmcli.sampling.stored_guidance import GUIDE_FILE
from fmcli.training import distributed
from fmcli.training.batches import BatchSampler, step_seed
from fmcli.training.budget import (
    StepTimer,
    budgeted_steps,
    end_costs,
    format_duration,
    plan_before,
    plan_message,
)
from fmcli.training.conditions import training_condition, training_conditions
from fmcli.training.config import TrainConfig, resolve, to_json
from fmcli.training.events import (
    Callbacks,
    MetricsWindow,
    TrainingInterrupted,
    TrainResult,
    non_finite_error,
    run_info,
    say_thread_changes,
    stop_signals,
)
from fmcli.training.latent import FILE as AUTOENCODER_FILE
from fmcli.training.latent import FOLDER as LATENT_FOLDER
from fmcli.training.latent import latent_data, pixel_space, plan_space
from fmcli.training.loggers import Loggers, check_loggers
from fmcli.training.optim import clip_gradients, ema_decay_at, lr_at, planned_schedule, update_ema
from fmcli.training.runs import checkpoint_name, lock_run, new_run_dir, publish_checkpoint, resume_target
from fmcli.training.setup import (
    build_objective,
    build_state,
    check_batch_split,
    check_device_flags,
    choose_threads,
    load_teacher,
    load_training_data,
    place_data,
    planned_steps,
    probe_seconds,
    uses_channels_last,
    with_model_decision,
    wrap_for_forward,
)
from fmcli.training.state import (
    TrainState,
    check_resume,
    check_same_data,
    checkpoint_meta,
    data_description,
    restore_state,
    save_state,
)

UNPLANNED = 10**9  # the placeholder total of a --max-time run until its first steps are timed


class Trainer:
    """One training run: built (and checked) in ``__init__``, trained by ``run``. Never mutates its inputs."""

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
        self.budget = config.max_time  # seconds of a --max-time run; the config says steps once planned
        check_batch_split(config, dist.world_size)
        check_device_flags(config, device)
        say = self.cb.on_message if dist.is_main else None  # a latent run's data: its pictures, encoded once
        self.autoencoder, self.data, latent = latent_data(config, load_training_data(config, say), run_dir, device, say)
        self.config, self.num_classes, self.text = training_condition(config, self.data, device.type)
        self.data_meta = data_description(self.data, self.num_classes, text=self.text is not None, latent=latent)
        self.teacher = load_teacher(config, self.data, self.num_classes, device)
        self.objective = build_objective(config, self.data, self.num_classes, self.teacher, self.text is not None)
        self.config, threads_said = choose_threads(self.config, self.objective)  # before anything is timed
        self.state, self.last_good = self._state(resume_from)
        self.forward_model = wrap_for_forward(self.state.model, self.objective, config, dist, device)
        self.total_steps = planned_steps(config, self.state.step, len(self.data), UNPLANNED)
        self.batches = self._batches()
        self.channels_last = uses_channels_last(device, self.data)
        self.stop_flag, self.stop_requested = {"signum": 0}, 0
        self.loggers = Loggers(check_loggers(config.log_to))  # opened by run(), on rank 0
        self.probed = self._probe_seconds()  # s/step before the first step: the plan, and a budget's warm-up
        planned = self._budgeted_total() if self.budget else self.total_steps
        self.config = with_model_decision(planned_schedule(self.config, planned), self.data, device)
        per_epoch = max(1, len(self.data) // config.batch_size)
        self.plan = plan_before(planned - self.state.step, self.probed, per_epoch, device.type) + "\n" + threads_said

    def _state(self, resume_from: Path | None) -> tuple[TrainState, Path | None]:
        """A fresh training state, or the resumed checkpoint's (its data checked first); and the last good file."""
        checkpoint = read_checkpoint(resume_from) if resume_from is not None else None
        state = build_state(self.config, self.data, self.num_classes, self.objective, self.device, text=self.text,
                            teacher=self.teacher, resumed=checkpoint[1] if checkpoint else None)  # fmt: skip
        if checkpoint is None:
            return state, None
        check_same_data(checkpoint[1].data, self.data_meta, resume_from)
        restore_state(state, *checkpoint, resume_from, self.config.weight_decay)
        return state, Path(resume_from).resolve()

    def _probe_seconds(self) -> float:
        """Seconds per step from a few passes of the first batch (``setup.probe_seconds``), agreed by all ranks."""
        batch = self.batches.draw(self.state.step)
        seconds = probe_seconds(lambda: self._accumulate_gradients(batch), self.state.optimizer)
        return distributed.all_max(self.dist, seconds, self.device)

    def _budgeted_total(self) -> int:
        """The steps a --max-time budget fits at the probed speed (the first steps refine it); too few: FMError."""
        elapsed = time.perf_counter() - self.started
        steps = budgeted_steps(self.budget, elapsed, self.probed, self.config.warmup_steps, self.device.type)
        return self.state.step + steps

    def _batches(self) -> BatchSampler:
        """What each step trains on, with the data on the device when it fits."""
        conditions = training_conditions(self.config, self.data, self.num_classes, self.state.model)
        inputs = place_data(self.data.data, self.device)
        return BatchSampler(inputs, conditions, self.data.kind, self.config, self.objective, self.dist.rank,
                            self.dist.world_size, self.device, mirrored=self.data.mirrored)  # fmt: skip

    # -- files

    def meta(self) -> CheckpointMeta:
        meta = checkpoint_meta(self.state, self.config, self.data_meta, self.total_steps)
        if self.budget is not None:
            meta.extra["planned_for_max_time"] = self.budget  # the budget that chose --steps
        return meta

    def save(self, name: str | None = None) -> Path:
        """Write step-N.safetensors (rank 0), repoint last.safetensors, prune to --keep; or ``name`` (the guide)."""
        path = self.run_dir / (name or checkpoint_name(self.state.step))
        if self.dist.is_main:
            save_state(path, self.state, self.meta())
            if name is None:
                publish_checkpoint(self.run_dir, path, self.config.keep)
        distributed.barrier(self.dist)
        self.last_good = self.last_good if name else path
        return path

    def save_sample_grid(self) -> Path | None:
        """samples/step-N.png from the EMA weights (rank 0 only)."""
        if not self.dist.is_main:
            return None
        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        path = folder / f"step-{self.state.step:07d}.png"
        picture = write_sample_grid(LoadedModel(self.state.ema.eval(), self.meta(), autoencoder=self.autoencoder), path)
        self.loggers.log_image(self.state.step, "samples", picture)
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
        grad_norm = clip_gradients(list(state.model.parameters()), config.grad_clip)
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
        """Forward and backward over --grad-accum micro-batches; returns the mean logged loss (detached)."""
        config, ddp = self.config, self.dist.enabled and self.objective.uses_ddp
        if self.channels_last:
            batch = replace(
                batch, **{k: getattr(batch, k).contiguous(memory_format=torch.channels_last) for k in ("x0", "x1")}
            )
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        autocast = nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)
        micro = batch.x0.shape[0] // config.grad_accum
        total = torch.zeros((), device=self.device)
        for k in range(config.grad_accum):
            sync = k == config.grad_accum - 1 or not ddp  # DDP all-reduces on the last one only
            with nullcontext() if sync else self.forward_model.no_sync(), autocast:
                out = self.objective(self.forward_model, batch[k * micro : (k + 1) * micro])
                self.state.scaler.scale(out.loss / config.grad_accum).backward()
            total += out.logged / config.grad_accum
        if self.dist.enabled and not ddp:
            distributed.average_gradients(self.dist, self.state.model.parameters())
        return total

    def _non_finite(self, loss_value: float) -> None:
        if not self.config.skip_nonfinite:
            raise non_finite_error(loss_value, self.state.step, self.last_good)
        self.state.skipped += 1

    def log(self, window: MetricsWindow, grad_norm: float, lr: float, start_time: float) -> None:
        record = window.record(
            step=self.state.step,
            lr=lr,
            grad_norm=grad_norm,
            skipped_steps=self.state.skipped,
            time=time.perf_counter() - start_time,
            threads=threads.now_threads(),
        )
        if self.device.type == "cuda":
            record["peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.dist.is_main:
            self.loggers.log(record)
            self.cb.on_log(record)

    def run(self) -> TrainResult:
        """Step to the planned total; log, checkpoint and sample on their cadences; on a signal, checkpoint and stop."""
        config, state = self.config, self.state
        if self.dist.is_main:
            self.cb.on_start(self.total_steps, state.step, run_info(self))
            self.cb.on_message(self.plan)
            self.loggers.open(self.run_dir, config)
        start_time, window, loss = time.perf_counter(), MetricsWindow(), float("nan")
        timer = StepTimer(budget=self.budget, started=self.started, loop_start=start_time, start_step=state.step,
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
            self.loggers.close()
        return TrainResult(self.run_dir, path, state.step, loss, time.perf_counter() - self.started, state.skipped)

    def _after_step(self, window: MetricsWindow, grad_norm: float, lr: float, start_time: float) -> None:
        config, step = self.config, self.state.step
        threads.tick()  # the thread governor: fewer threads when steps stall, more when cores free up
        if self.dist.is_main:
            self.cb.on_step(step)
            say_thread_changes(self.cb, step)
        last = step == self.total_steps
        if step % config.log_every == 0 or last or self.stop_requested:
            self.log(window, grad_norm, lr, start_time)
        if self.stop_requested and not last:
            raise TrainingInterrupted(step, self.save(), self.run_dir, self.stop_requested)
        if step % config.checkpoint_every == 0 and not last:
            self.save()
        if config.guide_at and step == max(1, round(config.guide_at * self.total_steps)):
            self.save(GUIDE_FILE)  # an early checkpoint: the autoguide fm tune --guidance tries
            if self.dist.is_main:
                self.cb.on_message(f"guide: step {step} kept as {GUIDE_FILE} (fm tune --guidance tries it)")
        if config.sample_every and step % config.sample_every == 0 and not last:
            self.save_sample_grid()
        if config.diagnose_every and (step % config.diagnose_every == 0 or last) and self.dist.is_main:
            self.loggers.log({"step": step, **self.objective.diagnostics(self.state.ema.eval())})

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
        images, per_step = preview_count(self.num_classes, self.data.kind), config.batch_size // self.dist.world_size
        costs = end_costs(seconds_per_step, self.state.model, per_step, images, config.sample_every)
        what = f"{self.total_steps:,} steps"
        if config.max_time is not None:
            fitted = timer.fit(step, seconds_per_step, costs, config.checkpoint_every, config.sample_every)
            self.total_steps = max(step, fitted)
            # From here on the run is defined by steps, like any other (resume, schedule, config.json).
            self.config = replace(config, steps=self.total_steps, max_time=None)
            if self.dist.is_main:
                atomic_write_bytes(self.run_dir / "config.json", to_json(self.config).encode())
                self.cb.on_plan(self.total_steps)
            what = f"--max-time {format_duration(self.budget)}: {self.total_steps:,} steps"
        left = (self.total_steps - step) * seconds_per_step + costs.checkpoint + costs.grid
        if self.dist.is_main:
            epoch = seconds_per_step * len(self.data) / config.batch_size
            self.cb.on_message(plan_message(what, seconds_per_step, left, epoch))


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

    Under torchrun every rank runs this; only rank 0 writes files, and holds the run folder's lock (a second
    trainer on the same folder is refused, naming the process that has it). Input errors are raised before
    anything is written, and before a new run folder is created. ``started`` (a ``time.perf_counter()``
    value) is when the user's clock started, for --max-time.
    """
    started = time.perf_counter() if started is None else started  # --max-time counts from here
    callbacks = callbacks or Callbacks()
    config, run_dir, resume_from = _resolve_run(overrides, config_file, resume, allow_change)
    device = resolve_device(config.device)
    dist = distributed.setup(device.type)
    try:
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        distributed.barrier(dist)
        with lock_run(run_dir, enabled=dist.is_main):
            if resume_from is None:  # --autoencoder auto: pixels or latents, and the autoencoder trained first
                config = _plan_space(config, run_dir, device, dist, callbacks, started)
            trainer = Trainer(config, run_dir, callbacks, resume_from, dist, device, started)
            if dist.is_main:
                atomic_write_bytes(run_dir / "config.json", to_json(trainer.config).encode())
            distributed.barrier(dist)
            return trainer.run()
    finally:
        distributed.teardown(dist)


def _plan_space(config: TrainConfig, run_dir: Path, device: torch.device, dist: distributed.DistInfo,
                callbacks: Callbacks, started: float) -> TrainConfig:  # fmt: skip
    """``latent.plan_space`` on rank 0 (which trains the autoencoder when one is needed); under torchrun the other
    ranks then take the autoencoder it left in the run folder (a shared folder, as checkpoints need)."""
    load = lambda: load_training_data(config, None)  # noqa: E731
    if dist.is_main:
        config = plan_space(config, run_dir, device.type, load, callbacks, started)
    distributed.barrier(dist)
    if not dist.is_main and config.autoencoder == "auto":  # as rank 0 decided, latent defaults included
        chosen = run_dir / LATENT_FOLDER / AUTOENCODER_FILE
        if chosen.exists():
            return replace(config, autoencoder=str(chosen))
        return pixel_space(config, "none: as rank 0 chose")
    return config


def _resolve_run(
    overrides: dict, config_file: Path | None, resume: str | None, allow_change: bool
) -> tuple[TrainConfig, Path, Path | None]:
    """(the resolved config, the run folder, the checkpoint to resume from or None)."""
    if resume is None:
        config = resolve(overrides, config_file)
        config = resolve(overrides, config_file, device_type=resolve_device(config.device).type)
        run_dir = new_run_dir(config.out, config.data)  # every rank picks the same folder; created under the lock
        return replace(config, out=str(run_dir)), run_dir, None
    resume_from = resume_target(resume, overrides.get("out"))
    _, meta = read_header(resume_from)
    layers = ({**overrides, "out": str(resume_from.parent)}, config_file)
    config = resolve(*layers, base=meta.train_config)
    config = resolve(*layers, base=meta.train_config, device_type=resolve_device(config.device).type)
    check_resume(meta.train_config, config, allow_change)
    return config, resume_from.parent, resume_from
