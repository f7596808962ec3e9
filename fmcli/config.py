"""The training configuration: defaults, ``--config train.toml``, command-line overrides, resume checks.

Precedence: built-in defaults < the TOML file < options given on the command line. The
resolved config is written to the run folder (``config.json``) and into every checkpoint.
"""

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import tomllib

from fmcli.budget import parse_duration
from fmcli.errors import FMError


@dataclass
class TrainConfig:
    # data
    data: str = "mnist-mini"  # registered data set name, or a folder of images
    data_dir: str | None = None  # where data files live (else $FM_DATA_DIR)
    image_size: int | None = None  # resize + centre-crop (folders default to 32)
    channels: int | None = None  # force 1 or 3 channels
    conditional: bool = True  # use class labels when the data has them
    hflip: bool = False  # random horizontal flips (image folders default to on; see dataset_defaults)
    cache: bool = True  # image folders: decode once into $FM_CACHE_DIR and map it (False: decode into RAM)
    # length
    steps: int | None = None  # optimizer steps (default: DEFAULT_STEPS)
    epochs: float | None = None  # alternative to --steps
    max_time: float | None = None  # seconds: alternative to --steps, fixed after timing the first steps
    batch_size: int = 128  # global batch of one optimizer step (split over GPUs and --grad-accum)
    # optimisation
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    lr_schedule: str = "cosine"  # cosine | constant (after linear warm-up)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # flow matching
    label_dropout: float = 0.1  # probability of training on the null class (enables --cfg)
    time_sampling: str = "uniform"  # uniform | logit-normal
    time_mean: float = 0.0
    time_std: float = 1.0
    coupling: str = "independent"  # independent | ot (minibatch optimal transport)
    # objective
    objective: str = "fm"  # fm (instantaneous velocity) | meanflow (average velocity: 1-4 step sampling)
    interval_fraction: float = 0.25  # meanflow: share of samples with r < t (the others learn u(x, t, t) = v)
    weighting_power: float = 1.0  # meanflow: adaptive loss weight 1 / (||error||^2 + 1e-3)^p (0: plain L2)
    train_cfg: float = 1.0  # meanflow: classifier-free guidance folded into the target (sample at cfg 1)
    teacher: str | None = None  # distillation: the flow checkpoint whose velocity replaces x1 - x0
    # model overrides (None: the preset for the data)
    model: dict = field(default_factory=dict)
    # machinery
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16
    compile: bool = False
    grad_checkpoint: bool = False
    grad_accum: int = 1
    # output
    out: str | None = None
    log_every: int = 100
    log_to: list = field(default_factory=list)  # loggers besides metrics.jsonl, e.g. ["tensorboard"]
    sample_every: int = 1000  # 0: no sample grids at all
    checkpoint_every: int = 1000
    keep: int = 3
    skip_nonfinite: bool = False


DEFAULT_STEPS = 2000
LENGTH_KEYS = ("steps", "epochs", "max_time")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024
CHOICES = {
    "lr_schedule": ("cosine", "constant"),
    "time_sampling": ("uniform", "logit-normal"),
    "coupling": ("independent", "ot"),
    "precision": ("fp32", "bf16", "fp16"),
    "objective": ("fm", "meanflow"),
}
# MeanFlow's time distribution of (r, t): logit-normal(-0.4, 1), as in the paper (see fmcli.flow.sample_interval).
OBJECTIVE_DEFAULTS = {"meanflow": {"time_sampling": "logit-normal", "time_mean": -0.4, "time_std": 1.0}}
# Keys that define what is trained: never changeable on resume.
STRUCTURAL = ("data", "image_size", "channels", "conditional", "model", "objective", "teacher")
# Keys that may change freely on resume (length, cadence, machinery).
FREE_ON_RESUME = (
    "steps",
    "epochs",
    "max_time",
    "out",
    "log_every",
    "sample_every",
    "checkpoint_every",
    "keep",
    "log_to",
    "cache",
    "skip_nonfinite",
    "device",
    "compile",
    "grad_checkpoint",
    "grad_accum",
    "data_dir",
)


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def read_toml(path: Path) -> dict:
    try:
        values = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FMError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise FMError(f"config file {path} is not valid TOML: {error}") from None
    values = {key.replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(values) - set(field_names()))
    if unknown:
        raise FMError(f"config file {path}: unknown option(s) {', '.join(unknown)}")
    return values


def resolve(overrides: dict, config_file: Path | None = None, base: dict | None = None) -> TrainConfig:
    """Defaults (or ``base``, a resumed run's config) < TOML file < explicit overrides."""
    values = asdict(TrainConfig())
    file_values = read_toml(config_file) if config_file is not None else {}
    explicit = {key: value for key, value in overrides.items() if value is not None}
    data = explicit.get("data") or file_values.get("data") or (base or {}).get("data") or values["data"]
    objective = explicit.get("objective") or file_values.get("objective") or (base or {}).get("objective") or "fm"
    if base is not None:  # a run saved before an option existed trained with that option's plain default
        base = asdict(TrainConfig()) | base
    layers = [dataset_defaults(data), OBJECTIVE_DEFAULTS.get(objective, {}), base or {}, file_values, explicit]
    for layer in layers:
        # --steps, --epochs and --max-time are three ways to say one thing: a layer that gives one drops the others.
        given = [key for key in LENGTH_KEYS if layer.get(key) is not None]
        if given:
            values.update({key: None for key in LENGTH_KEYS if key not in given})
        values.update({key: value for key, value in layer.items() if key in values})
    if isinstance(values["max_time"], str):  # "10m" in a TOML file
        values["max_time"] = parse_duration(values["max_time"])
    config = TrainConfig(**values)
    validate(config)
    return config


def dataset_defaults(data: str) -> dict:
    """The registered data set's own training defaults; image folders: horizontal flips on."""
    from fmcli.data.resolve import registered_dataset

    spec = registered_dataset(data)
    if spec is None:  # a folder of photos, icons, faces...: mirror images are as likely as the originals
        return {"hflip": True}
    return {"hflip": spec.flip_invariant} | dict(spec.train_defaults)


def validate(config: TrainConfig) -> None:
    for key, allowed in CHOICES.items():
        if getattr(config, key) not in allowed:
            raise FMError(
                f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}, not {getattr(config, key)!r}"
            )
    positive = {
        "batch_size": config.batch_size,
        "grad_accum": config.grad_accum,
        "log_every": config.log_every,
        "checkpoint_every": config.checkpoint_every,
        "keep": config.keep,
    }
    for key, value in positive.items():
        if value < 1:
            raise FMError(f"--{key.replace('_', '-')} must be at least 1 (got {value})")
    if config.sample_every < 0:
        raise FMError(f"--sample-every must be 0 (no sample grids) or positive (got {config.sample_every})")
    if config.warmup_steps < 0:
        raise FMError(f"--warmup-steps must be 0 or positive (got {config.warmup_steps})")
    if config.steps is not None and config.steps < 1:
        raise FMError(f"--steps must be at least 1 (got {config.steps})")
    if config.epochs is not None and config.epochs <= 0:
        raise FMError(f"--epochs must be positive (got {config.epochs})")
    if sum(getattr(config, key) is not None for key in LENGTH_KEYS) > 1:
        raise FMError("give one of --steps, --epochs and --max-time")
    if config.max_time is not None and not config.max_time > 0:
        raise FMError(f"--max-time must be a positive duration (got {config.max_time})")
    if config.lr <= 0:
        raise FMError(f"--lr must be positive (got {config.lr})")
    if not 0 <= config.label_dropout < 1:
        raise FMError(f"--label-dropout must be in [0, 1) (got {config.label_dropout})")
    if not 0 <= config.ema_decay < 1:
        raise FMError(f"--ema-decay must be in [0, 1) (got {config.ema_decay})")
    if config.batch_size % config.grad_accum:
        raise FMError(f"--batch-size {config.batch_size} is not divisible by --grad-accum {config.grad_accum}")
    if config.time_std <= 0:
        raise FMError("--time-std must be positive")
    if config.image_size is not None and not MIN_IMAGE_SIZE <= config.image_size <= MAX_IMAGE_SIZE:
        raise FMError(
            f"--image-size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels (got {config.image_size})"
        )
    if not 0 <= config.interval_fraction <= 1:
        raise FMError(f"--interval-fraction must be in [0, 1] (got {config.interval_fraction})")
    if config.weighting_power < 0:
        raise FMError(f"--weighting-power must be 0 or positive (got {config.weighting_power})")
    if not (math.isfinite(config.train_cfg) and config.train_cfg >= 1):
        raise FMError(f"--train-cfg must be at least 1, where 1 is no guidance (got {config.train_cfg})")
    if config.objective == "fm" and (config.train_cfg != 1 or config.teacher):
        raise FMError("--train-cfg and a teacher need --objective meanflow (fm distill sets it)")
    if config.objective == "meanflow" and config.compile:
        raise FMError(
            "--compile does not work with --objective meanflow (torch.func.jvp through a compiled "
            "model); drop --compile"
        )
    if config.channels not in (None, 1, 3):
        raise FMError(f"--channels must be 1 (grayscale) or 3 (RGB), not {config.channels}")


def check_resume(saved: dict, wanted: TrainConfig, allow_change: bool) -> None:
    """Refuse to continue a run as something else; hyper-parameters change only when allowed."""
    current = asdict(wanted)
    structural = [key for key in STRUCTURAL if saved.get(key) != current.get(key)]
    if structural:
        details = "; ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in structural)
        raise FMError(f"cannot resume: the run was trained with a different model or data ({details})")
    changed = [key for key in current if key not in STRUCTURAL + FREE_ON_RESUME and saved.get(key) != current[key]]
    if changed and not allow_change:
        details = ", ".join(f"{key} {saved.get(key)!r} -> {current[key]!r}" for key in changed)
        raise FMError(f"resuming with changed training options ({details}); pass --allow-change to accept")


def to_json(config: TrainConfig) -> str:
    return json.dumps(asdict(config), indent=2, sort_keys=True)
