"""``fm distill``: turn a flow checkpoint into a few-step (MeanFlow) model with the training loop of ``fm train``."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmcli.cli._common import GUIDE_HELP, GUIDE_LABEL_HELP, INTERVAL_HELP, cli_errors
from fmcli.cli._training import run_training, train_options
from fmcli.cli.train import ConfigFile, JsonOutput
from fmcli.errors import FMError

# What the teacher decides (its data and classes, or its captions and text encoder) or distillation fixes (the
# objective); every other training option applies, with distillation's own defaults
# (fmcli.training.distill.DISTILL_DEFAULTS).
FROM_THE_TEACHER = (
    "data_dir",
    "image_size",
    "channels",
    "conditional",
    "hflip",
    "cache",
    "label_dropout",
    "captions",
    "caption_column",
    "text_encoder",
    "text_encoder_path",
    "caption_dropout",
    "cross_attention",
    "objective",
    "coupling",
    "compile",
)
DEFAULTS = {
    "steps": "60% of the teacher's steps with the pool alone, else 30%: no longer than the teacher's training",
    "pool": "1000",
    "pool_fraction": "1.0 (every row from the pool)",
    "batch_size": "the teacher's",
    "lr": "5e-4",
    "warmup_steps": "20",
    "sample_every": "0",
    "diagnose_every": "250",
    "guide_at": "0 (a student samples with its guidance folded in: it needs no guide)",
    "train_cfg": "the teacher's sampling guidance (fm tune --guidance's stored setting; else 2 with label or caption "
    "dropout, else 1)",
}


@cli_errors
@train_options(exclude=FROM_THE_TEACHER, model=False, default_text=DEFAULTS)
def distill_command(
    teacher: Annotated[
        Optional[Path], typer.Argument(help="The flow checkpoint (or run folder) to distill. Omit with --resume.")
    ] = None,
    overrides: dict | None = None,
    config: ConfigFile = None,
    resume: Annotated[
        Optional[str], typer.Option(help="Continue a distillation run: its folder or a checkpoint.")
    ] = None,
    guidance_interval: Annotated[
        Optional[str], typer.Option(help=f"The teacher's guidance interval folded in. {INTERVAL_HELP}", metavar="LO,HI")
    ] = None,
    guide: Annotated[
        Optional[str], typer.Option(help=f"The teacher's guide, folded in. {GUIDE_HELP}", metavar="CKPT")
    ] = None,
    guide_label: Annotated[Optional[str], typer.Option(help=GUIDE_LABEL_HELP, metavar="null|same")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Distill a flow model into a model that samples in 1-4 steps (MeanFlow with the teacher's velocity).

    The student is the teacher's network with an interval input, starting from the teacher's
    weights, and learns the teacher's average velocity over \\[r, t]: one step x0 = x1 - u(x1, 0, 1)
    replaces an ODE solve. Guidance is folded in (--train-cfg, --guidance-interval, --guide: by default what `fm
    sample --class` uses on the teacher, the setting fm tune --guidance stored if there is one), so the student
    samples guided at --cfg 1. A text model's student takes prompts: it keeps the teacher's text encoder, and
    its pool's draws are each solved for a training caption (the empty prompt is the null condition). Run folder,
    checkpoints, resume, Ctrl-C, EMA, precision and progress are those of `fm train`; `fm sample STUDENT` uses the
    few-step sampler by default.

    Examples:

      fm distill runs/demo --out runs/demo-1step

      fm distill runs/demo --out runs/demo-1step --max-time 5m

      fm sample runs/demo-1step --class 6 --steps 1 --out six.png

      fm sample runs/shapes-1step --prompt "a red circle" --steps 1 --out red.png

      fm distill --resume runs/demo-1step --steps 600
    """
    from fmcli.training.distill import distill_overrides

    options = dict(overrides or {})
    if resume is not None:
        if teacher is not None:
            raise FMError("give a teacher to start a distillation, or --resume RUN to continue one, not both")
        run_training(options, config=config, resume=resume, allow_change=False, json_output=json_output)
        return
    if teacher is None:
        raise FMError("give the flow checkpoint to distill (a .safetensors file or a run folder), or --resume RUN")
    from fmcli.sampling.stored_guidance import parse_interval

    interval = parse_interval(guidance_interval)
    run_training(
        distill_overrides(teacher, options, interval, guide),
        config=config,
        resume=None,
        allow_change=False,
        json_output=json_output,
    )
