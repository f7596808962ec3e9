"""``fm train``: parse and validate options, then call ``fmcli.train.train``.

The options are declared once, as aliases (``Steps``, ``BatchSize``, ...), which ``fm distill``
shares; ``run_training`` is the part of both commands after parsing.
"""

import os
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from fmcli import registry
from fmcli.budget import parse_duration
from fmcli.cli._common import (
    cli_errors,
    dataset_help,
    err_console,
    parse_int_list,
    parse_list,
    print_json,
    progress_bar,
)


def _option(kind, help: str, *names: str, **extra) -> object:
    return Annotated[Optional[kind], typer.Option(*names, help=help, **extra)]


# --- what to train on, and for how long
Data = Annotated[
    Optional[str],
    typer.Argument(
        help=dataset_help(), autocompletion=registry.completer(registry.datasets), show_default="mnist-mini"
    ),
]
Out = _option(Path, "Run folder (default runs/<data>, never overwritten).")
Steps = _option(int, "Optimizer steps (default: the data set's own, e.g. 1600 for mnist-mini; else 2000).")
Epochs = _option(float, "Train for this many passes over the data instead of --steps.")
MaxTime = _option(
    str,
    "Train for this long instead of --steps (90s, 10m, 2h, 1h30m): the first steps are timed, then the number of "
    "steps that fits is fixed and printed.",
)
BatchSize = _option(
    int, "Global batch per optimizer step (split across GPUs and --grad-accum). [default: 128; mnist-mini 64]"
)
ImageSize = _option(int, "Resize and centre-crop images to this size, 8 to 1024 (folders: default 32).")
Channels = _option(int, "Force 1 (grayscale) or 3 (RGB) channels.")
Cache = _option(
    bool,
    "Image folders: decode once into a memory-mapped file under $FM_CACHE_DIR and map it on later runs (RAM use "
    "stays small), or decode every run into RAM. [default: --cache]",
    "--cache/--no-cache",
)
Hflip = _option(
    bool,
    "Random horizontal flips of training images, from (seed, step) so resume stays exact. [default: on for image "
    "folders, off for digits and data sets that are not mirror-symmetric]",
    "--hflip/--no-hflip",
)
DataDir = _option(Path, "Folder holding data files such as MNIST's IDX files (else $FM_DATA_DIR).")
# --- optimisation
Lr = _option(float, "Peak learning rate of AdamW. [default: 2e-3]")
LrSchedule = _option(str, "After linear warm-up: cosine or constant. [default: cosine]")
WarmupSteps = _option(int, "Linear learning-rate warm-up steps. [default: 200]")
WeightDecay = _option(float, "AdamW weight decay. [default: 0]")
GradClip = _option(float, "Clip the gradient norm to this. [default: 1.0]")
EmaDecay = _option(float, "EMA decay of the weights used for sampling. [default: 0.999]")
# --- the objective
LabelDropout = _option(
    float, "Probability of training a label as the null class; enables `fm sample --cfg`. [default: 0.1]"
)
TimeSampling = _option(
    str, "Training times t: uniform or logit-normal. [default: uniform; logit-normal for --objective meanflow]"
)
TimeMean = _option(float, "Mean of the logit-normal time distribution. [default: 0; -0.4 for meanflow]")
TimeStd = _option(float, "Std of the logit-normal time distribution. [default: 1]")
Coupling = _option(
    str,
    "Pair data and noise independently or by minibatch optimal transport (ot: straighter paths). "
    "[default: independent]",
)
Objective = _option(
    str,
    "fm: flow matching (sample with ODE solvers, 10-40 NFE); meanflow: average velocities over \\[r, t] "
    "(MeanFlow), sampled in 1-4 steps. [default: fm]",
)
IntervalFraction = _option(
    float, "meanflow: share of samples trained on an interval r < t (the rest learn u(x, t, t) = v). [default: 0.25]"
)
WeightingPower = _option(
    float, "meanflow: adaptive loss weight 1 / (||error||^2 + 1e-3)^p; 0 is the plain squared error. [default: 1]"
)
TrainCfg = _option(
    float,
    "meanflow / distill: classifier-free guidance of this scale folded into the training target, so samples are "
    "guided at --cfg 1 with no extra evaluations. [default: 1 for meanflow; the teacher's sampling default "
    "(2 with label dropout) for fm distill]",
)
# --- machinery
Seed = _option(int, "Seed of data order, times, noise and initialisation. [default: 0]")
Device = _option(str, "auto, cpu, cuda, cuda:N or mps. [default: auto]")
Precision = _option(str, "fp32, bf16 or fp16 (autocast; fp16 adds a grad scaler). [default: fp32]")
Compile = _option(bool, "torch.compile the model (not with --objective meanflow).", "--compile/--no-compile")
GradCheckpoint = _option(
    bool, "Recompute activations in backward to save memory.", "--grad-checkpoint/--no-grad-checkpoint"
)
GradAccum = _option(int, "Split each batch into this many micro-batches. [default: 1]")
LogEvery = _option(int, "Log the loss every N steps (metrics.jsonl). [default: 100]")
LogTo = _option(
    str,
    "Also log to these, comma-separated: tensorboard (pip install 'fmcli[tensorboard]'), or a plugin's logger "
    "(`fm plugins` lists them). metrics.jsonl is always written.",
)
SampleEvery = _option(int, "Save a sample grid every N steps and at the end (0: never). [default: 1000]")
CheckpointEvery = _option(int, "Write a checkpoint every N steps. [default: 1000]")
Keep = _option(int, "Keep the newest N step checkpoints. [default: 3]")
SkipNonfinite = _option(
    bool, "Skip steps with a NaN/inf loss instead of stopping.", "--skip-nonfinite/--stop-nonfinite"
)
ConfigFile = _option(Path, "TOML file of training options; command-line options override it.")
Resume = _option(str, "Continue a run: its folder, a checkpoint in it, or 'latest'.")
AllowChange = Annotated[
    bool, typer.Option("--allow-change", help="On --resume, accept changed hyper-parameters (lr, batch size, ...).")
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun job (they train but say nothing)."""
    return os.environ.get("RANK", "0") == "0"


class RichCallbacks:
    """fmcli.train.Callbacks drawn with rich: a progress bar with loss and images/s, and messages on stderr."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.progress = progress_bar("loss", "img/s")
        self.task = None

    def on_start(self, total_steps: int, start_step: int, info: dict) -> None:
        if not self.quiet:
            processes = f" x {info['world_size']} processes" if info["world_size"] > 1 else ""
            err_console.print(
                f"training on {info['data']} ({info['size']:,} items, {info['classes'] or 'no'} classes) "
                f"with {info['parameters']:,} parameters on {info['device']}{processes} -> {info['run_dir']}",
                highlight=False,
            )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, loss="-", **{"img/s": "-"})

    def on_plan(self, total_steps: int) -> None:
        self.progress.update(self.task, total=total_steps)

    def on_step(self, step: int) -> None:
        self.progress.update(self.task, completed=step)

    def on_log(self, record: dict) -> None:
        self.progress.update(self.task, loss=f"{record['loss']:.4f}", **{"img/s": f"{record['images_per_s']:.0f}"})
        if not self.quiet and self.progress.disable:
            err_console.print(
                f"step {record['step']}: loss {record['loss']:.4f}, lr {record['lr']:.2e}, "
                f"{record['images_per_s']:.0f} images/s",
                highlight=False,
            )

    def on_message(self, text: str) -> None:
        err_console.print(text, highlight=False)

    def close(self) -> None:
        self.progress.stop()


def run_training(
    overrides: dict, *, config: Path | None, resume: str | None, allow_change: bool, json_output: bool
) -> None:
    """Train with a progress bar; Ctrl-C/SIGTERM checkpoint and exit 128 + signal; print the summary."""
    from fmcli.cli import STARTED
    from fmcli.train import TrainingInterrupted, train

    callbacks = RichCallbacks(quiet=json_output)
    try:
        result = train(
            overrides, config_file=config, resume=resume, allow_change=allow_change, callbacks=callbacks,
            started=STARTED,
        )  # fmt: skip
    except TrainingInterrupted as stop:
        callbacks.close()
        if is_main_process():
            name = signal.Signals(stop.signum).name if stop.signum else "signal"
            typer.echo(
                f"{name}: stopped at step {stop.step}; checkpoint {stop.checkpoint}. "
                f"Resume with: fm train --resume {stop.run_dir}",
                err=True,
            )
        raise typer.Exit(128 + int(stop.signum or 2)) from None
    finally:
        callbacks.close()
    if not is_main_process():  # under torchrun rank 0 reports for everyone
        return
    summary = {
        "run_dir": str(result.run_dir),
        "checkpoint": str(result.checkpoint),
        "step": result.step,
        "loss": result.loss,
        "seconds": round(result.seconds, 2),
        "skipped_steps": result.skipped,
    }
    if json_output:
        print_json(summary)
    else:
        err_console.print(
            f"done: step {result.step}, loss {result.loss:.4f}, {result.seconds:.0f} s -> "
            f"{result.run_dir}/last.safetensors",
            highlight=False,
        )


@cli_errors
def train_command(
    data: Data = None,
    out: Out = None,
    steps: Steps = None,
    epochs: Epochs = None,
    max_time: MaxTime = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    lr_schedule: LrSchedule = None,
    warmup_steps: WarmupSteps = None,
    weight_decay: WeightDecay = None,
    grad_clip: GradClip = None,
    ema_decay: EmaDecay = None,
    label_dropout: LabelDropout = None,
    time_sampling: TimeSampling = None,
    time_mean: TimeMean = None,
    time_std: TimeStd = None,
    coupling: Coupling = None,
    objective: Objective = None,
    interval_fraction: IntervalFraction = None,
    weighting_power: WeightingPower = None,
    train_cfg: TrainCfg = None,
    image_size: ImageSize = None,
    channels: Channels = None,
    hflip: Hflip = None,
    cache: Cache = None,
    data_dir: DataDir = None,
    unconditional: Annotated[
        bool, typer.Option("--unconditional", help="Ignore class labels even if the data has them.")
    ] = False,
    base_channels: _option(int, "U-Net width (channels of the first level).") = None,
    channel_mults: _option(str, "U-Net channel multiplier per level, e.g. 1,2,2.") = None,
    res_blocks: _option(int, "Residual blocks per U-Net level.") = None,
    attention: _option(str, "Resolutions with self-attention, e.g. 7 or 8,16 ('none' for none).") = None,
    seed: Seed = None,
    device: Device = None,
    precision: Precision = None,
    compile: Compile = None,
    grad_checkpoint: GradCheckpoint = None,
    grad_accum: GradAccum = None,
    log_every: LogEvery = None,
    log_to: LogTo = None,
    sample_every: SampleEvery = None,
    checkpoint_every: CheckpointEvery = None,
    keep: Keep = None,
    skip_nonfinite: SkipNonfinite = None,
    config: ConfigFile = None,
    resume: Resume = None,
    allow_change: AllowChange = False,
    json_output: JsonOutput = False,
) -> None:
    """Train a flow-matching model and write checkpoints, sample grids and metrics.jsonl.

    Examples:

      fm train mnist-mini --out runs/demo

      fm train ./images --epochs 50 --image-size 32 --out runs/mine

      fm train ./images --max-time 10m

      fm train mnist-mini --objective meanflow --out runs/onestep

      fm train ./images --log-to tensorboard   (then: tensorboard --logdir runs/)

      fm train moons --steps 3000 --out runs/toy

      fm train --resume runs/demo --steps 4000

      torchrun --nproc_per_node=4 -m fmcli train mnist --batch-size 512 --precision bf16
    """
    model: dict = {}
    if base_channels is not None:
        model["base_channels"] = base_channels
    if channel_mults is not None:
        model["channel_mults"] = parse_int_list(channel_mults, "--channel-mults")
    if res_blocks is not None:
        model["num_res_blocks"] = res_blocks
    if attention is not None:
        model["attention_resolutions"] = [] if attention == "none" else parse_int_list(attention, "--attention")
    overrides = dict(
        data=data, out=str(out) if out else None, steps=steps, epochs=epochs, batch_size=batch_size, lr=lr,
        max_time=parse_duration(max_time) if max_time is not None else None, lr_schedule=lr_schedule,
        warmup_steps=warmup_steps, weight_decay=weight_decay, grad_clip=grad_clip, ema_decay=ema_decay,
        label_dropout=label_dropout, time_sampling=time_sampling, time_mean=time_mean, time_std=time_std,
        coupling=coupling, objective=objective, interval_fraction=interval_fraction, weighting_power=weighting_power,
        train_cfg=train_cfg, image_size=image_size, channels=channels, hflip=hflip, cache=cache,
        data_dir=str(data_dir) if data_dir else None, conditional=False if unconditional else None,
        model=model or None, seed=seed, device=device, precision=precision, compile=compile,
        grad_checkpoint=grad_checkpoint, grad_accum=grad_accum, log_every=log_every, sample_every=sample_every,
        checkpoint_every=checkpoint_every, keep=keep, skip_nonfinite=skip_nonfinite,
        log_to=parse_list(log_to, "--log-to") if log_to is not None else None,
    )  # fmt: skip
    run_training(overrides, config=config, resume=resume, allow_change=allow_change, json_output=json_output)
