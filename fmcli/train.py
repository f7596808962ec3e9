"""The training loop: flow matching with AdamW, warm-up + cosine, EMA, checkpoints and exact resume.

Everything random in step k (data order, t, the noise x1, label dropout, dropout inside the
model) is drawn from generators seeded by (seed, epoch) and (seed, k), and the initial weights
from the seed alone. Resuming therefore needs no saved RNG streams and continues bit for bit:
N steps + N resumed steps == 2N steps in one go (CPU; with a cosine schedule the planned total
must be the same). Under torchrun every rank draws the same global batch and keeps its slice,
so N ranks at B/N do the maths of one process at B.
"""

import json
import math
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from fmcli import distributed
from fmcli.checkpoint import (CheckpointMeta, FORMAT_VERSION, atomic_write_bytes, read_checkpoint, save_checkpoint,
                              split_prefix, update_last_link)
from fmcli.config import DEFAULT_STEPS, TrainConfig, check_resume, resolve, to_json
from fmcli.data.base import ArrayDataset, LoadOptions, to_model_space, to_uint8
from fmcli.errors import FMError
from fmcli.flow import flow_matching_loss, sample_time
from fmcli.models import build_model
from fmcli.models.presets import default_model_config
from fmcli.sampling import resolve_device


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
    def on_step(self, step: int) -> None: ...
    def on_log(self, record: dict) -> None: ...
    def on_message(self, text: str) -> None: ...


# ----------------------------------------------------------------------------- run folders

def find_latest_run(root: Path = Path("runs")) -> Path:
    candidates = [p.parent for p in Path(root).glob("*/last.safetensors")]
    if not candidates:
        raise FMError(f"--resume latest: no run with a last.safetensors under {root}/")
    return max(candidates, key=lambda p: (p / "last.safetensors").stat().st_mtime)


def new_run_dir(config: TrainConfig) -> Path:
    if config.out:
        run_dir = Path(config.out)
        if run_dir.exists() and any(run_dir.glob("*.safetensors")):
            raise FMError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                          f"or choose another --out")
        return run_dir
    name = Path(config.data.rstrip("/\\")).expanduser().resolve().name if "/" in config.data or config.data.startswith((".", "~")) \
        else config.data
    stem = Path("runs") / (name or "data")
    run_dir, n = stem, 1
    while run_dir.exists() and any(run_dir.iterdir()):
        n += 1
        run_dir = stem.with_name(f"{stem.name}-{n}")
    return run_dir


# ----------------------------------------------------------------------------- pieces

def lr_at(step: int, config: TrainConfig, total_steps: int) -> float:
    """Linear warm-up to --lr, then cosine decay to 0 (or constant)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up of the EMA decay so early averages are not dominated by the random init."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def ot_pairing(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Permutation of x1 minimising sum ||x0_i - x1_perm(i)||^2 within the batch (minibatch OT)."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x0.flatten(1).float(), x1.flatten(1).float()).pow(2).cpu().numpy()
    _, columns = linear_sum_assignment(cost)
    return torch.as_tensor(columns, device=x1.device)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for all parameters) where this torch and device support it."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError):  # e.g. a device without a fused kernel
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


class BatchOrder:
    """Epoch permutations from (seed, epoch); the global batch of step k is a slice of one."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.batches_per_epoch = max(1, size // batch_size)
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.size, generator=generator)
            self._epoch = epoch
        start = position * self.batch_size
        chunk = self._perm[start : start + self.batch_size]
        if len(chunk) < self.batch_size:  # data smaller than one batch: wrap around
            chunk = self._perm[torch.arange(start, start + self.batch_size) % self.size]
        return chunk


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW's per-parameter state as ``optim.<index>.<slot>`` tensors (its param groups go in the metadata)."""
    tensors = {}
    for index, slots in optimizer.state_dict()["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict] = {}
    for name, value in split_prefix(tensors, "optim").items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


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


# ----------------------------------------------------------------------------- the loop

def step_seed(seed: int, step: int, salt: int) -> int:
    """One integer per (seed, step, purpose): the seed of a generator used only in that step."""
    return (seed * 1_000_003 + step) * 7 + salt


class Trainer:
    def __init__(self, config: TrainConfig, run_dir: Path, callbacks: Callbacks, resume_from: Path | None,
                 dist: distributed.DistInfo, device: torch.device):
        self.config, self.run_dir, self.cb = config, run_dir, callbacks
        self.dist, self.device = dist, device
        if config.batch_size % (self.dist.world_size * config.grad_accum):
            raise FMError(f"--batch-size {config.batch_size} must be divisible by the number of processes "
                          f"({self.dist.world_size}) times --grad-accum ({config.grad_accum})")

        self.data = self._load_data()
        self.num_classes = self.data.num_classes if (config.conditional and self.data.labels is not None) else 0
        checkpoint = read_checkpoint(resume_from) if resume_from is not None else None
        if checkpoint is not None:
            # The checkpoint's own model config: newer presets must not change a resumed model.
            self.check_same_data(checkpoint[1], resume_from)
            model_config = dict(checkpoint[1].model_config)
        else:
            model_config = default_model_config(self.data.kind, self.data.shape, self.num_classes, device.type)
            model_config.update(config.model)
        torch.manual_seed(config.seed)  # the initial weights depend on --seed only
        self.model = build_model(model_config).to(device)
        self.ema = build_model(model_config).to(device).requires_grad_(False)
        self.ema.load_state_dict(self.model.state_dict())
        if config.grad_checkpoint and hasattr(self.model, "set_grad_checkpointing"):
            self.model.set_grad_checkpointing(True)
        self.channels_last = device.type == "cuda" and self.data.kind == "image"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        self.step, self.skipped, self.images_seen = 0, 0, 0
        self.last_good: Path | None = None
        self.stop_flag, self.stop_requested = {"signum": 0}, 0
        if checkpoint is not None:
            self._restore(*checkpoint, resume_from)
        self.forward_model: nn.Module = torch.compile(self.model) if config.compile else self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.forward_model, device_ids=ids)
        self.order = BatchOrder(len(self.data), config.batch_size, config.seed)
        if config.steps is not None:
            self.total_steps = config.steps
        elif config.epochs is not None:
            self.total_steps = max(1, math.ceil(config.epochs * self.order.batches_per_epoch))
        else:
            self.total_steps = DEFAULT_STEPS
        if self.step >= self.total_steps:
            raise FMError(f"the run is already at step {self.step} of {self.total_steps}; "
                          f"pass a larger --steps to continue it")
        # uint8 images live on the device (MNIST is 47 MB) and are normalised batch by batch.
        self.inputs = self.data.data.to(device)
        self.labels = self.data.labels.to(device) if self.num_classes else None

    def _load_data(self) -> ArrayDataset:
        from fmcli.data.resolve import load_data

        config = self.config
        options = LoadOptions(split="train", data_dir=Path(config.data_dir) if config.data_dir else None,
                              image_size=config.image_size, channels=config.channels, seed=config.seed)
        data = load_data(config.data, options)
        if len(data) == 0:
            raise FMError(f"data set {config.data} is empty")
        skipped = data.info.get("skipped")
        if skipped and self.dist.is_main:
            self.cb.on_message(f"warning: skipped {skipped['count']} unreadable file(s), e.g. "
                               f"{', '.join(skipped['examples'])}")
        if data.info.get("cache_warning") and self.dist.is_main:
            self.cb.on_message(f"warning: {data.info['cache_warning']}")
        return data

    # -- state

    def meta(self) -> CheckpointMeta:
        from fmcli.data.resolve import describe

        data = describe(self.data)
        data["num_classes"] = self.num_classes
        data["class_names"] = self.data.class_names if self.num_classes else None
        data["normalisation"] = "uint8 / 127.5 - 1 (range [-1, 1])" if self.data.kind == "image" else "none"
        extra = {"optimizer_param_groups": self.optimizer.state_dict()["param_groups"], "skipped_steps": self.skipped, "images_seen": self.images_seen,
                 "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                 "total_steps": self.total_steps}
        return CheckpointMeta(format_version=FORMAT_VERSION, model_config=self.model.config, data=data,
                              step=self.step, label_dropout=self.config.label_dropout if self.num_classes else 0.0,
                              train_config=asdict(self.config), extra=extra)

    def save(self) -> Path:
        """Write step-N.safetensors (rank 0), repoint last.safetensors, prune to --keep."""
        path = self.run_dir / f"step-{self.step:07d}.safetensors"
        if self.dist.is_main:
            tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
            tensors |= {f"ema.{k}": v for k, v in self.ema.state_dict().items()}
            tensors |= optimizer_tensors(self.optimizer)
            save_checkpoint(path, tensors, self.meta())
            update_last_link(self.run_dir, path)
            old = sorted(self.run_dir.glob("step-*.safetensors"))[: -self.config.keep]
            for stale in old:
                if stale != path:
                    stale.unlink(missing_ok=True)
        distributed.barrier(self.dist)
        self.last_good = path
        return path

    def check_same_data(self, meta: CheckpointMeta, path: Path) -> None:
        """The data must be what the checkpoint was trained on (kind, item shape, classes, size)."""
        from fmcli.data.resolve import describe

        now = describe(self.data)
        now["num_classes"] = self.num_classes
        keys = ("kind", "shape", "num_classes", "size")
        changed = [key for key in keys if meta.data.get(key) != now[key]]
        if changed:
            details = "; ".join(f"{key}: {meta.data.get(key)!r} -> {now[key]!r}" for key in changed)
            raise FMError(f"cannot resume {path}: the data differs from the data it was trained on ({details})")

    def _restore(self, tensors: dict[str, torch.Tensor], meta: CheckpointMeta, path: Path) -> None:
        try:
            self.model.load_state_dict(split_prefix(tensors, "model"))
            self.ema.load_state_dict(split_prefix(tensors, "ema"))
        except RuntimeError as error:
            raise FMError(f"cannot resume {path}: its weights do not fit the model "
                          f"({str(error).splitlines()[0][:160]})") from None
        load_optimizer(self.optimizer, tensors, meta.extra["optimizer_param_groups"])
        for group in self.optimizer.param_groups:  # the saved groups carry the old run's options
            group["weight_decay"] = self.config.weight_decay
        if meta.extra.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(meta.extra["scaler"])
        self.step = meta.step
        self.skipped = meta.extra.get("skipped_steps", 0)
        self.images_seen = meta.extra.get("images_seen", 0)
        self.last_good = Path(path).resolve()

    # -- one step

    def draw_batch(self, step: int):
        """This rank's slice of the global batch for ``step``: x0, x1, t, labels (or None)."""
        config, device = self.config, self.device
        index = self.order.indices(step).to(device)
        generator = torch.Generator(device=device).manual_seed(step_seed(config.seed, step, 1))
        x0_all = self.inputs[index]
        x0_all = to_model_space(x0_all) if self.data.kind == "image" else x0_all.float()
        batch = x0_all.shape[0]
        t = sample_time(batch, method=config.time_sampling, mean=config.time_mean, std=config.time_std,
                        generator=generator, device=device)
        x1 = torch.randn(x0_all.shape, generator=generator, device=device)
        labels = None
        if self.labels is not None:
            labels = self.labels[index].clone()
            drop = torch.rand(batch, generator=generator, device=device) < config.label_dropout
            labels[drop] = self.num_classes  # the null class
        if config.coupling == "ot":
            x1 = x1[ot_pairing(x0_all, x1)]
        share = batch // self.dist.world_size
        mine = slice(self.dist.rank * share, (self.dist.rank + 1) * share)
        return x0_all[mine], x1[mine], t[mine], None if labels is None else labels[mine]

    def train_step(self) -> tuple[float, float, float]:
        """One optimizer step on the global batch of ``self.step``; returns (loss, grad norm, lr)."""
        config = self.config
        lr = lr_at(self.step, config, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x0, x1, t, labels = self.draw_batch(self.step)
        # Draws inside the model (dropout) use the global generator: seed it per step and rank too.
        torch.manual_seed(step_seed(config.seed, self.step, 2 + self.dist.rank))
        if self.channels_last:
            x0, x1 = x0.contiguous(memory_format=torch.channels_last), x1.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16 if config.precision == "bf16" else torch.float16)
                    if config.precision != "fp32" else nullcontext())
        micro = x0.shape[0] // config.grad_accum
        loss_sum = torch.zeros((), device=self.device)
        for k in range(config.grad_accum):
            part = slice(k * micro, (k + 1) * micro)
            conditioning = {} if labels is None else {"y": labels[part]}
            sync = (k == config.grad_accum - 1) or not self.dist.enabled
            with (nullcontext() if sync else self.forward_model.no_sync()), autocast:
                loss = flow_matching_loss(self.forward_model, x0[part], x1[part], t[part], **conditioning)
                self.scaler.scale(loss / config.grad_accum).backward()
            loss_sum += loss.detach() / config.grad_accum
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        # One host sync per step: agree across ranks on the loss and on a stop request.
        status = torch.stack([loss_sum.float(), grad_norm.float().nan_to_num(float("inf"))])
        status = distributed.all_sum(self.dist, status).cpu()
        signal_number = distributed.all_max(self.dist, torch.tensor(float(self.stop_flag["signum"]), device=self.device))
        loss_value = float(status[0]) / self.dist.world_size
        # With fp16 an infinite gradient is the grad scaler's business (it skips and lowers the scale).
        finite = math.isfinite(loss_value) and (self.scaler.is_enabled() or math.isfinite(float(status[1])))
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            if not config.skip_nonfinite:
                where = f"; the last good checkpoint is {self.last_good}" if self.last_good else "; no checkpoint was written yet"
                what = "loss" if not math.isfinite(loss_value) else "gradient"
                raise FMError(f"non-finite {what} at step {self.step}{where}. Lower --lr, use --precision fp32, "
                              f"or pass --skip-nonfinite")
            self.skipped += 1
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            update_ema(self.ema, self.model, ema_decay_at(self.step, config.ema_decay))
        self.stop_requested = int(signal_number)
        self.step += 1
        self.images_seen += config.batch_size
        return loss_value, float(status[1]) / self.dist.world_size, lr

    # -- pictures

    def save_sample_grid(self) -> Path | None:
        if not self.dist.is_main:
            return None
        from fmcli.checkpoint import LoadedModel
        from fmcli.images import grid_image, png_bytes, scatter_image
        from fmcli.sampling import balanced_classes, generate

        meta = self.meta()
        loaded = LoadedModel(model=self.ema.eval(), meta=meta)
        per_class = 8
        num = per_class * self.num_classes if self.num_classes else (1000 if self.data.kind == "points" else 64)
        classes = balanced_classes(num, self.num_classes) if self.num_classes else None
        result = generate(loaded, num=num, classes=classes, solver="heun", steps=10, seed=1234)
        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        path = folder / f"step-{self.step:07d}.png"
        if self.data.kind == "image":
            picture = grid_image(to_uint8(result.samples), nrow=per_class if self.num_classes else None, scale=2)
        else:
            picture = scatter_image(result.samples, result.labels)
        atomic_write_bytes(path, png_bytes(picture))
        return path

    def run(self) -> TrainResult:
        config = self.config
        info = {"run_dir": str(self.run_dir), "device": str(self.device), "world_size": self.dist.world_size,
                "data": self.config.data, "size": len(self.data), "parameters": sum(p.numel() for p in self.model.parameters()),
                "classes": self.num_classes}
        if self.dist.is_main:
            self.cb.on_start(self.total_steps, self.step, info)
        metrics_file = self.run_dir / "metrics.jsonl"
        start_time = time.perf_counter()
        window_start, window_images, window_losses = time.perf_counter(), 0, []
        last_loss = float("nan")
        with stop_signals() as flag:
            self.stop_flag = flag
            while self.step < self.total_steps:
                loss, grad_norm, lr = self.train_step()
                last_loss = loss
                window_losses.append(loss)
                window_images += config.batch_size
                if self.dist.is_main:
                    self.cb.on_step(self.step)
                if self.step % config.log_every == 0 or self.step == self.total_steps or self.stop_requested:
                    elapsed = time.perf_counter() - window_start
                    record = {"step": self.step, "loss": sum(window_losses) / len(window_losses), "lr": lr,
                              "grad_norm": grad_norm, "images_per_s": window_images / max(elapsed, 1e-9),
                              "skipped_steps": self.skipped, "time": time.perf_counter() - start_time}
                    if self.device.type == "cuda":
                        record["peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
                    if self.dist.is_main:
                        with open(metrics_file, "a") as handle:
                            handle.write(json.dumps(record) + "\n")
                        self.cb.on_log(record)
                    window_start, window_images, window_losses = time.perf_counter(), 0, []
                if self.stop_requested and self.step < self.total_steps:
                    path = self.save()
                    raise TrainingInterrupted(self.step, path, self.run_dir, self.stop_requested)
                if self.step % config.checkpoint_every == 0 and self.step < self.total_steps:
                    self.save()
                if config.sample_every and self.step % config.sample_every == 0 and self.step < self.total_steps:
                    self.save_sample_grid()
        path = self.save()
        grid = self.save_sample_grid() if config.sample_every else None
        if grid is not None:
            self.cb.on_message(f"samples: {grid}")
        return TrainResult(self.run_dir, path, self.step, last_loss, time.perf_counter() - start_time, self.skipped)


def resume_target(resume: str, out: str | None) -> Path:
    """The checkpoint to continue from: a run folder's last.safetensors, a given file, or the newest run."""
    if resume == "latest":
        path = Path(out) if out else find_latest_run()
    else:
        path = Path(resume).expanduser()
    if path.is_dir():
        path = path / "last.safetensors"
    if not path.exists():
        raise FMError(f"--resume {resume}: {path} does not exist (give a run folder, a checkpoint in it, or 'latest')")
    return path


def train(overrides: dict, *, config_file: Path | None = None, resume: str | None = None, allow_change: bool = False,
          callbacks: Callbacks | None = None) -> TrainResult:
    """Resolve the config (defaults < file < overrides), set up the run folder, train, checkpoint.

    Under torchrun every rank runs this; only rank 0 writes files. Input errors are raised
    before anything is written, and before a new run folder is created.
    """
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
        run_dir = new_run_dir(config)  # every rank picks the same folder: nobody creates it before the barrier
        config.out = str(run_dir)
    device = resolve_device(config.device)
    dist = distributed.setup(device.type)
    try:
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        distributed.barrier(dist)
        trainer = Trainer(config, run_dir, callbacks, resume_from, dist, device)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(run_dir / "config.json", to_json(config).encode())
        distributed.barrier(dist)
        return trainer.run()
    finally:
        distributed.teardown(dist)
