"""``fm distill``: turn a flow checkpoint into a few-step (MeanFlow) model with the training loop of ``fm train``."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmcli.cli._common import cli_errors, parse_list
from fmcli.cli.train import (
    BatchSize,
    CheckpointEvery,
    ConfigFile,
    Device,
    EmaDecay,
    GradAccum,
    GradCheckpoint,
    IntervalFraction,
    JsonOutput,
    Keep,
    LogEvery,
    LogTo,
    Lr,
    MaxTime,
    Out,
    Precision,
    SampleEvery,
    Seed,
    SkipNonfinite,
    Steps,
    TimeMean,
    TimeSampling,
    TimeStd,
    TrainCfg,
    WarmupSteps,
    WeightingPower,
    run_training,
)
from fmcli.errors import FMError


@cli_errors
def distill_command(
    teacher: Annotated[
        Optional[Path], typer.Argument(help="The flow checkpoint (or run folder) to distill. Omit with --resume.")
    ] = None,
    out: Out = None,
    steps: Steps = None,
    max_time: MaxTime = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    warmup_steps: WarmupSteps = None,
    ema_decay: EmaDecay = None,
    train_cfg: TrainCfg = None,
    interval_fraction: IntervalFraction = None,
    weighting_power: WeightingPower = None,
    time_sampling: TimeSampling = None,
    time_mean: TimeMean = None,
    time_std: TimeStd = None,
    seed: Seed = None,
    device: Device = None,
    precision: Precision = None,
    grad_checkpoint: GradCheckpoint = None,
    grad_accum: GradAccum = None,
    log_every: LogEvery = None,
    log_to: LogTo = None,
    sample_every: SampleEvery = None,
    checkpoint_every: CheckpointEvery = None,
    keep: Keep = None,
    skip_nonfinite: SkipNonfinite = None,
    config: ConfigFile = None,
    resume: Annotated[
        Optional[str], typer.Option(help="Continue a distillation run: its folder or a checkpoint.")
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Distill a flow model into a model that samples in 1-4 steps (MeanFlow with the teacher's velocity).

    The student is the teacher's network with an interval input, starting from the teacher's
    weights, and learns the teacher's average velocity over \\[r, t]: one step x0 = x1 - u(x1, 0, 1)
    replaces an ODE solve. Guidance is folded in (--train-cfg, by default what `fm sample --class`
    uses on the teacher), so the student samples guided at --cfg 1. Run folder, checkpoints, resume,
    Ctrl-C, EMA, precision and progress are those of `fm train`; `fm sample STUDENT` uses the
    few-step sampler by default.

    Examples:

      fm distill runs/demo --out runs/demo-1step

      fm distill runs/demo --out runs/demo-1step --max-time 5m

      fm sample runs/demo-1step --class 6 --steps 1 --out six.png

      fm distill --resume runs/demo-1step --steps 600
    """
    from fmcli.budget import parse_duration
    from fmcli.distill import distill_overrides

    lengths = dict(steps=steps, max_time=parse_duration(max_time) if max_time is not None else None)
    options = dict(
        out=str(out) if out else None, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, ema_decay=ema_decay,
        train_cfg=train_cfg, interval_fraction=interval_fraction, weighting_power=weighting_power,
        time_sampling=time_sampling, time_mean=time_mean, time_std=time_std, seed=seed, device=device,
        precision=precision, grad_checkpoint=grad_checkpoint, grad_accum=grad_accum, log_every=log_every,
        sample_every=sample_every, checkpoint_every=checkpoint_every, keep=keep, skip_nonfinite=skip_nonfinite,
        log_to=parse_list(log_to, "--log-to") if log_to is not None else None, **lengths,
    )  # fmt: skip
    if resume is not None:
        if teacher is not None:
            raise FMError("give a teacher to start a distillation, or --resume RUN to continue one, not both")
        run_training(options, config=config, resume=resume, allow_change=False, json_output=json_output)
        return
    if teacher is None:
        raise FMError("give the flow checkpoint to distill (a .safetensors file or a run folder), or --resume RUN")
    run_training(distill_overrides(teacher, options), config=config, resume=None, allow_change=False,
                 json_output=json_output)  # fmt: skip
