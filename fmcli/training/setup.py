"""Building what a training run needs before its first step: data, teacher, model and optimizer, wrappers.

Each function raises ``FMError`` for input it cannot use, so a bad run fails before its folder exists.
"""

import math
import shutil
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from fmcli.data.base import ArrayDataset, LoadOptions
from fmcli.data.resolve import load_data
from fmcli.errors import FMError
from fmcli.io.checkpoint import CheckpointMeta, LoadedModel, load_checkpoint
from fmcli.models import build_model
from fmcli.models.presets import default_model_config
from fmcli.runtime import threads
from fmcli.training.config import DEFAULT_STEPS, TrainConfig
from fmcli.training.distributed import DistInfo
from fmcli.training.objectives import Objective, make_objective
from fmcli.training.optim import make_optimizer
from fmcli.training.state import TrainState

PROBE_PASSES = 3  # forward and backward passes timed before the first step (the first one is not counted)
# True while those passes run: a network (or a test's recording one) can tell them from training steps.
PROBING: ContextVar[bool] = ContextVar("fm_probing", default=False)


def probe_seconds(step: Callable[[], object], optimizer: torch.optim.Optimizer, passes: int = PROBE_PASSES) -> float:
    """Seconds per training step, timed over a few forward and backward passes (``step``) before training starts:
    what the plan says, and what a --max-time run's warm-up is planned from. Changes nothing: no optimizer step,
    the gradients are dropped. The first pass pays one-off costs (allocations) and is not counted."""
    times, token = [], PROBING.set(True)
    try:
        for _ in range(passes):
            start = time.perf_counter()
            step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    finally:
        PROBING.reset(token)
    timed = sorted(times[1:])
    return timed[len(timed) // 2]


def check_batch_split(config: TrainConfig, world_size: int) -> None:
    if config.batch_size % (world_size * config.grad_accum):
        raise FMError(
            f"--batch-size {config.batch_size} must be divisible by the number of processes "
            f"({world_size}) times --grad-accum ({config.grad_accum})"
        )


def load_training_data(config: TrainConfig, say: Callable[[str], None] | None) -> ArrayDataset:
    """The training split of ``config.data``; ``say`` (rank 0) hears about skipped files and the cache."""
    options = LoadOptions(
        split="train",
        data_dir=Path(config.data_dir) if config.data_dir else None,
        image_size=config.image_size,
        channels=config.channels,
        seed=config.seed,
        cache=config.cache,
        captions=config.captions,
        caption_column=config.caption_column,
    )
    data = load_data(config.data, options)
    if len(data) == 0:
        raise FMError(f"data set {config.data} is empty")
    if config.hflip and data.kind != "image":
        raise FMError(f"--hflip flips images; {config.data} holds {data.kind}")
    skipped = data.info.get("skipped")
    if skipped and say:
        say(f"warning: skipped {skipped['count']} unreadable file(s), e.g. {', '.join(skipped['examples'])}")
    if data.info.get("cache_warning") and say:
        say(f"warning: {data.info['cache_warning']}")
    missing = data.info.get("captions_missing_files")
    if missing and say:
        say(f"warning: {missing:,} caption row(s) name no image of the folder; they are ignored")
    return data


def load_teacher(config: TrainConfig, data: ArrayDataset, num_classes: int, device: torch.device) -> LoadedModel | None:
    """Distillation: the teacher flow, frozen, on the training device (its EMA weights)."""
    if not config.teacher:
        return None
    teacher = load_checkpoint(config.teacher, device=device)
    if teacher.meta.model_config.get("interval"):
        raise FMError(
            f"the teacher {config.teacher} is itself a few-step (interval) model; distil a flow model trained with "
            "fm train (--objective fm)"
        )
    if teacher.meta.shape != data.shape or teacher.meta.num_classes != num_classes:
        raise FMError(
            f"the teacher {config.teacher} was trained on items of shape {list(teacher.meta.shape)} with "
            f"{teacher.meta.num_classes} classes; the data here is {list(data.shape)} with {num_classes}"
        )
    return teacher


def build_state(
    config: TrainConfig,
    data: ArrayDataset,
    num_classes: int,
    objective: Objective,
    device: torch.device,
    *,
    teacher: LoadedModel | None = None,
    resumed: CheckpointMeta | None = None,
    text: dict | None = None,
) -> TrainState:
    """Model, EMA copy, AdamW and grad scaler; a resumed run keeps its checkpoint's model config.

    A text model (``text``: its encoder's model extras) gets the preset with them. An interval objective
    (MeanFlow) gets the preset with the interval input; a distilled student is its
    teacher's architecture with the interval input, starting from the teacher's weights (the interval input
    starts at zero, so at step 0 the student's u(x, r, t) is the teacher's v(x, t) for every r).
    """
    if resumed is not None:  # newer presets must not change a resumed model
        model_config = dict(resumed.model_config)
    elif teacher is not None:
        model_config = teacher.meta.model_config | objective.model_extras | dict(config.model)
    else:
        preset = default_model_config(data.kind, data.shape, num_classes, device.type)
        model_config = preset | objective.model_extras | (text or {}) | dict(config.model)
    torch.manual_seed(config.seed)  # the initial weights depend on --seed only
    model = build_model(model_config).to(device)
    if teacher is not None and resumed is None:
        missing, unexpected = model.load_state_dict(teacher.model.state_dict(), strict=False)
        if unexpected or not all("interval" in key for key in missing):
            raise FMError(
                f"the teacher's weights do not fit its own architecture with the interval input "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}); is {config.teacher} damaged?"
            )
    ema = build_model(model_config).to(device).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    if config.grad_checkpoint and hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    if uses_channels_last(device, data):
        model.to(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    return TrainState(model=model, ema=ema, optimizer=make_optimizer(model, config), scaler=scaler)


def check_device_flags(config: TrainConfig, device: torch.device) -> None:
    """Flags that contradict the device fail in one line before any training."""
    if device.type == "cpu" and config.precision != "fp32":
        native = {"bf16": torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported(),
                  "fp16": torch.cpu._is_amx_fp16_supported()}[config.precision]  # fmt: skip
        if not native:
            raise FMError(
                f"--precision {config.precision}: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no "
                f"{config.precision} arithmetic, so autocast would emulate it, slower than fp32; use --precision fp32"
            )
    if config.compile and device.type == "cpu" and not any(map(shutil.which, ("c++", "g++", "clang++"))):
        raise FMError("--compile on the CPU needs a C++ compiler (torch.compile builds kernels with it); "
                      "install one (g++) or drop --compile")  # fmt: skip
    if config.compile and device.type == "mps":
        raise FMError("--compile does not support MPS in this torch; drop --compile")


def with_model_decision(config: TrainConfig, data: ArrayDataset, device: torch.device) -> TrainConfig:
    """Record which preset the model came from when the user named no architecture (config.json's decisions)."""
    if config.model or config.teacher:
        return config
    size = {"image": f"{data.shape[-1]} px", "latent": f"{data.shape[-1]}x{data.shape[-1]} latent"}.get(
        data.kind, "point data"
    )
    why = f"the {size} preset for {device.type} (fmcli/models/presets.py, measured: docs/measured)"
    return replace(config, decisions=config.decisions | {"model": why})


def choose_threads(config: TrainConfig, objective: Objective) -> tuple[TrainConfig, str]:
    """Set torch's CPU threads for this run (``fmcli.runtime.threads``); returns the config with the choice recorded
    in its decisions when fm made it, and what the plan says of the run's choices: the threads, and what a text
    model reads (the "condition" decision, ``fmcli.training.conditions``). An objective whose gradients depend on the
    thread count keeps the first count for the whole run, and its resumed runs use it again (exact resume)."""
    config, said = _choose_threads(config, objective)
    condition = config.decisions.get("condition")
    return config, said if condition is None else f"{said}\n{condition}"


def _choose_threads(config: TrainConfig, objective: Objective) -> tuple[TrainConfig, str]:
    choice = threads.configure(config.threads)
    said = choice.describe() + (f" ({choice.warning})" if choice.warning else "")
    if not choice.adaptive:
        return config, said
    if not objective.thread_invariant:
        threads.hold()
        why = f"{said}; kept for the whole run: {objective.name}'s CPU gradients depend on the thread count"
        return replace(config, threads=choice.threads, decisions=config.decisions | {"threads": why}), why
    return replace(config, decisions=config.decisions | {"threads": said}), said


def uses_channels_last(device: torch.device, data: ArrayDataset) -> bool:
    """NHWC convolutions are faster on CUDA tensor cores; on the CPU the default layout is."""
    return device.type == "cuda" and data.kind in ("image", "latent")


def check_training_guidance(
    config: TrainConfig, num_classes: int, teacher: LoadedModel | None, text: bool = False
) -> None:
    """--train-cfg needs an unconditional velocity: class labels trained with label dropout, or captions (``text``)
    with caption dropout (the empty prompt)."""
    if config.train_cfg == 1:
        return
    own = config.caption_dropout if text else config.label_dropout
    dropout = teacher.meta.label_dropout if teacher is not None else own
    if not (num_classes or text) or dropout <= 0:
        whose = "the teacher was" if teacher is not None else "this run is"
        raise FMError(
            f"--train-cfg {config.train_cfg:g} needs class labels and label dropout (or captions and caption "
            f"dropout), and {whose} trained without them; use --train-cfg 1"
        )


def build_objective(
    config: TrainConfig, data: ArrayDataset, num_classes: int, teacher: LoadedModel | None, text: bool
) -> Objective:
    """The run's objective, once its --train-cfg is checked (before a teacher pool is solved); a text model's
    (``text``) draws its pool's and diagnostics' prompts from the training captions."""
    check_training_guidance(config, num_classes, teacher, text)
    return make_objective(config, num_classes, teacher, data.shape, data.captions if text else None)


def wrap_for_forward(
    model: nn.Module, objective: Objective, config: TrainConfig, dist: DistInfo, device: torch.device
) -> nn.Module:
    """torch.compile and DDP wrap the model for the forward pass; the state keeps the plain module.

    Objectives whose forward cannot run through DDP's wrapper (MeanFlow's torch.func.jvp) get their gradients
    averaged over the ranks after the backward pass instead (``distributed.average_gradients``).
    """
    if config.compile and not objective.compiles:
        raise FMError(
            f"--compile does not work with --objective {objective.name} (torch.func.jvp through a "
            "compiled model); drop --compile"
        )
    wrapped = torch.compile(model) if config.compile else model
    if dist.enabled and objective.uses_ddp:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        wrapped = DistributedDataParallel(wrapped, device_ids=ids)
    return wrapped


def planned_steps(config: TrainConfig, start_step: int, data_size: int, unplanned: int) -> int:
    """The total number of steps; under --max-time ``start_step + unplanned`` until the first steps are timed."""
    if config.max_time is not None:
        return start_step + unplanned
    if config.steps is not None:
        total = config.steps
    elif config.epochs is not None:
        total = max(1, math.ceil(config.epochs * max(1, data_size // config.batch_size)))
    else:
        total = DEFAULT_STEPS
    if start_step >= total:
        raise FMError(f"the run is already at step {start_step} of {total}; pass a larger --steps to continue it")
    return total


def place_data(inputs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images go to the GPU when they take at most a quarter of its memory (MNIST: 47 MB), and are
    normalised there batch by batch. Otherwise they stay where they are, in RAM or memory-mapped from
    the folder cache, and each batch is staged through pinned memory."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        if inputs.numel() * inputs.element_size() <= total // 4:
            return inputs.to(device)
    return inputs
