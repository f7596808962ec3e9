"""The training configuration: defaults, ``--config train.toml``, command-line overrides, resume checks.

Precedence: built-in defaults < the TOML file < options given on the command line. The
resolved config is written to the run folder (``config.json``) and into every checkpoint.
"""

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import tomllib

from fmcli.errors import FMError
from fmcli.training.budget import parse_duration
from fmcli.training.defaults import dataset_defaults, device_defaults, objective_defaults, space_defaults


def option(
    default=None,
    help: str = "",
    *,
    factory=None,
    default_text: str | None = None,
    cli: bool = True,
    flag: str | None = None,
    parse: str | None = None,
):
    """A TrainConfig field with its command-line help: ``fm train``, ``fm distill`` and ``--config`` TOML all read
    their options from these fields (``fmcli.cli._common.train_options``), so a new option is one field here.

    default_text: the "[default: ...]" shown in --help when the plain default would mislead (data-set defaults);
    cli: False for fields no command-line option sets (``model``: its own options; ``teacher``: fm distill's);
    flag: an option declaration other than ``--name`` (``--unconditional``, or "--x/--no-x" for booleans);
    parse: how the option's text becomes the value: "duration" (90s, 10m) or "list" (comma-separated).
    """
    metadata = {"help": help, "default_text": default_text, "cli": cli, "flag": flag, "parse": parse}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run. Frozen: a run's options change only by building a new config."""

    # data
    data: str = option(
        "mnist-mini", "A registered data set or a folder of images (sub-folders = classes).", cli=False
    )  # the command's argument
    data_dir: str | None = option(None, "Folder holding data files such as MNIST's IDX files (else $FM_DATA_DIR).")
    image_size: int | None = option(
        None, "Resize and centre-crop images to this size, 8 to 1024.", default_text="32 for folders"
    )
    channels: int | None = option(None, "Force 1 (grayscale) or 3 (RGB) channels.", default_text="from the images")
    conditional: bool = option(True, "Ignore class labels even if the data has them.", flag="--unconditional")
    captions: str = option(
        "auto", "auto: a text model when the data has captions (metadata.jsonl/.csv, NAME.txt); none: ignore them; "
        "classes: class folder names as captions.")  # fmt: skip
    caption_column: str = option("text", "The caption's column in metadata.jsonl / metadata.csv.")
    text_encoder: str = option("builtin", "Text models: the text encoder (fm plugins lists them).")
    text_encoder_path: str | None = option(None, "Text models: local weights of a pretrained encoder (clip).")
    caption_dropout: float = option(  # 0.1 vs 0.2, 15 min each on shapes: 31.6% vs 27.8% (docs/measured/text.md)
        0.1, "Probability of training a caption as the empty prompt; enables --cfg.")  # fmt: skip
    cross_attention: list | None = option(
        None, "Text models: resolutions whose features attend to the prompt's words.", parse="list",
        default_text="none on a CPU (measured), else the lowest")  # fmt: skip
    hflip: bool = option(
        False,
        "Random horizontal flips of training images, from (seed, step) so resume stays exact.",
        default_text="on for image folders, off for digits and data sets that are not mirror-symmetric",
    )
    cache: bool = option(
        True,
        "Image folders: decode once into a memory-mapped file under $FM_CACHE_DIR and map it on later runs (RAM use "
        "stays small), or decode every run into RAM.",
    )
    autoencoder: str = option("auto", "Train in an autoencoder's latent space: auto (fm decides by image size, and "
        "trains one first or reuses one), none (pixels), or yours: fm autoencoder train's run, diffusers:DIR.",
        default_text="auto: latent from 128 px on a CPU, from 256 px on a GPU (config.json says why)")  # fmt: skip
    # length
    steps: int | None = option(
        None, "Optimizer steps.", default_text="the data set's own, e.g. 1600 for mnist-mini; else 2000"
    )
    epochs: float | None = option(None, "Train for this many passes over the data instead of --steps.")
    max_time: float | None = option(
        None,
        "Train for this long instead of --steps (90s, 10m, 2h, 1h30m): the first steps are timed, then the number "
        "of steps that fits is fixed and printed.",
        parse="duration",
    )
    batch_size: int = option(
        128,
        "Global batch per optimizer step (split across GPUs and --grad-accum).",
        default_text="per data set and device, as measured: mnist-mini 16; image folders 32 on a CPU, 128 on a GPU; "
        "mnist 16 on a CPU, 128 on a GPU (config.json records the choice and why); else 128",
    )
    # optimisation
    lr: float = option(
        2e-3, "Peak learning rate of AdamW.", default_text="2e-3; image folders: 1e-3 on a CPU, 2e-4 on a GPU"
    )
    weight_decay: float = option(0.0, "AdamW weight decay.")
    warmup_steps: int | None = option(
        None,
        "Linear learning-rate warm-up steps.",
        default_text="10% of the planned steps, at most 200, however the length is given",
    )
    lr_schedule: str = option("cosine", "After linear warm-up: cosine or constant.")
    grad_clip: float = option(1.0, "Clip the gradient norm to this.")
    ema_decay: float = option(0.999, "EMA decay of the weights used for sampling.")
    # flow matching
    label_dropout: float = option(0.1, "Probability of training a label as the null class; enables `fm sample --cfg`.")
    time_sampling: str = option(
        "uniform",
        "Training times t: uniform or logit-normal (in pixels the best FID of the RGB search, sampled with --cfg "
        "1.25-1.5 rather than the default 2, docs/measured/folder-defaults.md; in latent space better FID and "
        "accuracy at the default cfg, docs/measured/latent.md).",
        default_text="uniform; logit-normal in latent space and for --objective meanflow",
    )
    time_mean: float = option(0.0, "Mean of the logit-normal time distribution.", default_text="0; -0.4 for meanflow")
    time_std: float = option(1.0, "Std of the logit-normal time distribution.")
    coupling: str = option(
        "independent", "Pair data and noise independently or by minibatch optimal transport (ot: straighter paths)."
    )
    # objective
    objective: str = option(
        "fm",
        "fm: flow matching (sample with ODE solvers, 10-40 NFE); meanflow: average velocities over \\[r, t] "
        "(MeanFlow), sampled in 1-4 steps.",
    )
    interval_fraction: float = option(
        0.25, "meanflow: share of samples trained on an interval r < t (the rest learn u(x, t, t) = v)."
    )
    weighting_power: float = option(
        1.0, "meanflow: adaptive loss weight 1 / (||error||^2 + 1e-3)^p; 0 is the plain squared error."
    )
    train_cfg: float = option(
        1.0,
        "meanflow / distill: classifier-free guidance of this scale folded into the training target, so samples are "
        "guided at --cfg 1 with no extra evaluations.",
        default_text="1 for meanflow; the teacher's sampling default (2 with label dropout) for fm distill",
    )
    teacher: str | None = option(None, "distillation: the flow checkpoint whose velocity replaces x1 - x0.", cli=False)
    teacher_guidance: dict = option(
        factory=dict,
        help="distillation: the teacher's guidance interval and guide, folded in with --train-cfg.",
        cli=False,
    )
    interval_sampling: str = option(
        "pair",
        "meanflow: how intervals r < t are drawn: pair (two times, sorted: the paper's; long intervals are rare) or "
        "length (t, then r uniform in [0, t]: long jumps as often as short ones).",
    )
    grid_fraction: float = option(
        0.0,
        "meanflow: share of the r < t samples placed exactly on the jumps of the sampler's 1-, 2- and 4-step grids.",
    )
    interval_scale: float = option(
        1.0,
        "meanflow: the factor on the interval length t - r before its sinusoidal embedding (1: raw times, as the "
        "published code; 0.1's models used 1000, the factor on t).",
    )
    pool: int = option(
        0,
        "distill: solve the teacher for this many noise draws first and regress the student's jumps on the exact "
        "ones (its cost counts in the run's time); 0: none.",
    )
    pool_fraction: float = option(0.5, "distill: share of each batch taken from the pool (with --pool).")
    pool_solver: str = option("heun", "distill: the solver of the pool's teacher solves.")
    pool_steps: int = option(8, "distill: steps of the pool's solver (a multiple of 4: every grid time exact).")
    diagnose_every: int = option(
        0,
        "Log diagnostics every N steps (metrics.jsonl, TensorBoard): for few-step models the error of the one-step "
        "jumps from t = 1 against the flow, beside a single Euler step's; 0: never.",
        default_text="0; 250 for fm distill",
    )
    # model overrides (empty: the preset for the data); the command line sets them through MODEL_OPTIONS
    model: dict = option(factory=dict, help="Model config overrides, e.g. {base_channels = 16}.", cli=False)
    # machinery
    seed: int = option(0, "Seed of data order, times, noise and initialisation.")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps.")
    threads: int | None = option(
        None,
        "CPU threads torch computes with (OMP_NUM_THREADS fixes it too).",
        default_text="as many as the cores this process may use minus those other processes keep busy, adapted "
        "while training",
    )
    precision: str = option("fp32", "fp32, bf16 or fp16 (autocast; fp16 adds a grad scaler).")
    compile: bool = option(False, "torch.compile the model (not with --objective meanflow).")
    grad_checkpoint: bool = option(False, "Recompute activations in backward to save memory.")
    grad_accum: int = option(1, "Split each batch into this many micro-batches.")
    # output
    out: str | None = option(None, "Run folder (never overwritten).", default_text="runs/<data>")
    log_every: int = option(100, "Log the loss every N steps (metrics.jsonl).")
    log_to: list = option(
        factory=list,
        help="Also log to these, comma-separated: tensorboard (pip install 'fmcli[tensorboard]'), or a plugin's "
        "logger (`fm plugins` lists them). metrics.jsonl is always written.",
        parse="list",
        default_text="none",
    )
    sample_every: int = option(1000, "Save a sample grid every N steps and at the end (0: never).")
    checkpoint_every: int = option(1000, "Write a checkpoint every N steps.")
    keep: int = option(3, "Keep the newest N step checkpoints.")
    guide_at: float = option(
        0.25,
        "Keep the checkpoint at this fraction of the steps as guide.safetensors: the autoguide fm tune --guidance "
        "tries and --guide takes (0: none).",
    )
    decisions: dict = option(
        factory=dict,
        help="What fm chose for options the user left unset, and why (written to config.json).",
        cli=False,
    )
    skip_nonfinite: bool = option(
        False, "Skip steps with a NaN/inf loss instead of stopping.", flag="--skip-nonfinite/--stop-nonfinite"
    )


# Options that shape the model: `fm train --base-channels 16` lands in TrainConfig.model as {"base_channels": 16}.
# option name -> (the model config key, its help, how to parse the text: "int", "int_list" or "resolutions")
MODEL_OPTIONS = {
    "base_channels": ("base_channels", "U-Net width (channels of the first level).", "int"),
    "channel_mults": ("channel_mults", "U-Net channel multiplier per level, e.g. 1,2,2.", "int_list"),
    "res_blocks": ("num_res_blocks", "Residual blocks per U-Net level.", "int"),
    "attention": (
        "attention_resolutions",
        "Resolutions with self-attention, e.g. 7 or 8,16 ('none' for none).",
        "resolutions",
    ),
}


DEFAULT_STEPS = 2000
LENGTH_KEYS = ("steps", "epochs", "max_time")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024
CHOICES = {
    "lr_schedule": ("cosine", "constant"),
    "time_sampling": ("uniform", "logit-normal"),
    "coupling": ("independent", "ot"),
    "precision": ("fp32", "bf16", "fp16"),
    "objective": ("fm", "meanflow"),
    "interval_sampling": ("pair", "length"),
    "captions": ("auto", "none", "classes"),
}
# MeanFlow's time distribution of (r, t): logit-normal(-0.4, 1), as in the paper (fmcli.flow.meanflow.sample_interval).
# Keys that define what is trained: never changeable on resume.
STRUCTURAL = ("data", "image_size", "channels", "conditional", "model", "objective", "teacher", "interval_scale",
              "captions", "caption_column", "text_encoder", "cross_attention", "autoencoder")  # fmt: skip
# Keys that may change freely on resume (length, cadence, machinery).
FREE_ON_RESUME = (
    "decisions",
    "diagnose_every",
    "steps",
    "epochs",
    "max_time",
    "out",
    "log_every",
    "sample_every",
    "checkpoint_every",
    "keep",
    "guide_at",
    "log_to",
    "cache",
    "skip_nonfinite",
    "device",
    "threads",
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


def resolve(
    overrides: dict, config_file: Path | None = None, base: dict | None = None, device_type: str = "cpu"
) -> TrainConfig:
    """Defaults (or ``base``, a resumed run's config) < TOML file < explicit overrides.

    The defaults come in layers: fm's own, the data set's (``dataset_defaults``), the device's
    (``device_defaults``: what won on a CPU is not what suits a GPU) and the objective's. What a default layer
    chose for an option the user left unset is recorded, with why, in ``decisions`` (config.json).
    """
    values = asdict(TrainConfig())
    file_values = read_toml(config_file) if config_file is not None else {}
    explicit = {key: value for key, value in overrides.items() if value is not None}

    def chosen(key: str):  # the value an option will have, before the default layers
        return explicit.get(key) or file_values.get(key) or (base or {}).get(key) or values[key]

    if base is not None:  # a run saved before an option existed trained with that option's plain default
        base = saved_with_defaults(base)
    data, objective = chosen("data"), chosen("objective")
    space = space_defaults(chosen("autoencoder"), chosen("image_size"), device_type)
    defaults = [dataset_defaults(data), device_defaults(data, device_type), space, objective_defaults(objective)]
    decisions = dict((base or {}).get("decisions") or {})
    for layer, why in defaults:
        decisions |= {key: why for key in layer if key in values}
    layers = [layer for layer, _ in defaults] + [base or {}, file_values, explicit]
    for layer in layers:
        # --steps, --epochs and --max-time are three ways to say one thing: a layer that gives one drops the others.
        given = [key for key in LENGTH_KEYS if layer.get(key) is not None]
        if given:
            values.update({key: None for key in LENGTH_KEYS if key not in given})
        values.update({key: value for key, value in layer.items() if key in values})
    for key in list(decisions):
        if key in file_values or key in explicit:  # the user's value won: nothing was decided for them
            decisions.pop(key)
    values["decisions"] = decisions
    if isinstance(values["max_time"], str):  # "10m" in a TOML file
        values["max_time"] = parse_duration(values["max_time"])
    config = TrainConfig(**values)
    validate(config)
    return config


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
    if not 0 <= config.guide_at < 1:
        raise FMError(f"--guide-at must be a fraction of the steps in [0, 1) (got {config.guide_at})")
    if config.threads is not None and config.threads < 1:
        raise FMError(f"--threads must be at least 1 (got {config.threads})")
    if config.sample_every < 0:
        raise FMError(f"--sample-every must be 0 (no sample grids) or positive (got {config.sample_every})")
    if config.warmup_steps is not None and config.warmup_steps < 0:
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
    for key in ("label_dropout", "caption_dropout"):
        if not 0 <= getattr(config, key) < 1:
            raise FMError(f"--{key.replace('_', '-')} must be in [0, 1) (got {getattr(config, key)})")
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
    for key in ("interval_fraction", "grid_fraction", "pool_fraction"):
        if not 0 <= getattr(config, key) <= 1:
            raise FMError(f"--{key.replace('_', '-')} must be in [0, 1] (got {getattr(config, key)})")
    if not (math.isfinite(config.interval_scale) and config.interval_scale > 0):
        raise FMError(f"--interval-scale must be positive (got {config.interval_scale})")
    if config.pool < 0 or config.pool_steps < 1 or config.diagnose_every < 0:
        raise FMError("--pool and --diagnose-every must be 0 or positive, --pool-steps at least 1")
    if config.weighting_power < 0:
        raise FMError(f"--weighting-power must be 0 or positive (got {config.weighting_power})")
    if not (math.isfinite(config.train_cfg) and config.train_cfg >= 1):
        raise FMError(f"--train-cfg must be at least 1, where 1 is no guidance (got {config.train_cfg})")
    if config.objective == "fm" and (config.train_cfg != 1 or config.teacher):
        raise FMError("--train-cfg and a teacher need --objective meanflow (fm distill sets it)")
    if config.channels not in (None, 1, 3):
        raise FMError(f"--channels must be 1 (grayscale) or 3 (RGB), not {config.channels}")


def saved_with_defaults(saved: dict) -> dict:
    """A saved run's config with the options it predates at the value it trained with: their defaults, except the
    interval scale, which was 1000 before it was an option, and the autoencoder: runs before it trained pixels."""
    return asdict(TrainConfig()) | {"interval_scale": 1000.0, "autoencoder": "none"} | saved


def to_json(config: TrainConfig) -> str:
    return json.dumps(asdict(config), indent=2, sort_keys=True)
