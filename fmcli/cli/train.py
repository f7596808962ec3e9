"""``fm train``: parse and validate options, then call ``fmcli.train.train``."""

import os
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from fmcli import registry
from fmcli.budget import parse_duration
from fmcli.cli._common import cli_errors, dataset_help, err_console, parse_int_list, print_json, progress_bar

DATA_HELP = dataset_help()


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
            err_console.print(
                f"training on {info['data']} ({info['size']:,} items, {info['classes'] or 'no'} classes) "
                f"with {info['parameters']:,} parameters on {info['device']}"
                + (f" x {info['world_size']} processes" if info["world_size"] > 1 else "")
                + f" -> {info['run_dir']}",
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


@cli_errors
def train_command(
    data: Annotated[
        Optional[str],
        typer.Argument(help=DATA_HELP, autocompletion=registry.completer(registry.datasets), show_default="mnist-mini"),
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<data>, never overwritten).")] = None,
    steps: Annotated[
        Optional[int],
        typer.Option(help="Optimizer steps (default: the data set's own, e.g. 350 for mnist-mini; else 2000)."),
    ] = None,
    epochs: Annotated[
        Optional[float], typer.Option(help="Train for this many passes over the data instead of --steps.")
    ] = None,
    max_time: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "Train for this long instead of --steps (90s, 10m, 2h, 1h30m): the first steps are timed,"
                " then the number of steps that fits is fixed and printed."
            )
        ),
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            help="Global batch per optimizer step (split across GPUs and --grad-accum). [default: 128; mnist-mini 64]"
        ),
    ] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of AdamW. [default: 2e-3]")] = None,
    lr_schedule: Annotated[
        Optional[str], typer.Option(help="After linear warm-up: cosine or constant. [default: cosine]")
    ] = None,
    warmup_steps: Annotated[
        Optional[int], typer.Option(help="Linear learning-rate warm-up steps. [default: 200]")
    ] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay. [default: 0]")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Clip the gradient norm to this. [default: 1.0]")] = None,
    ema_decay: Annotated[
        Optional[float], typer.Option(help="EMA decay of the weights used for sampling. [default: 0.999]")
    ] = None,
    label_dropout: Annotated[
        Optional[float],
        typer.Option(
            help="Probability of training a label as the null class; enables `fm sample --cfg`. [default: 0.1]"
        ),
    ] = None,
    time_sampling: Annotated[
        Optional[str], typer.Option(help="Training times t: uniform or logit-normal. [default: uniform]")
    ] = None,
    time_mean: Annotated[
        Optional[float], typer.Option(help="Mean of the logit-normal time distribution. [default: 0]")
    ] = None,
    time_std: Annotated[
        Optional[float], typer.Option(help="Std of the logit-normal time distribution. [default: 1]")
    ] = None,
    coupling: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "Pair data and noise independently or by minibatch optimal transport (ot: straighter "
                "paths). [default: independent]"
            )
        ),
    ] = None,
    image_size: Annotated[
        Optional[int], typer.Option(help="Resize and centre-crop images to this size (folders: default 32).")
    ] = None,
    channels: Annotated[Optional[int], typer.Option(help="Force 1 (grayscale) or 3 (RGB) channels.")] = None,
    data_dir: Annotated[
        Optional[Path], typer.Option(help="Folder holding data files such as MNIST's IDX files (else $FM_DATA_DIR).")
    ] = None,
    unconditional: Annotated[
        bool, typer.Option("--unconditional", help="Ignore class labels even if the data has them.")
    ] = False,
    base_channels: Annotated[Optional[int], typer.Option(help="U-Net width (channels of the first level).")] = None,
    channel_mults: Annotated[
        Optional[str], typer.Option(help="U-Net channel multiplier per level, e.g. 1,2,2.")
    ] = None,
    res_blocks: Annotated[Optional[int], typer.Option(help="Residual blocks per U-Net level.")] = None,
    attention: Annotated[
        Optional[str], typer.Option(help="Resolutions with self-attention, e.g. 7 or 8,16 ('none' for none).")
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option(help="Seed of data order, times, noise and initialisation. [default: 0]")
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps. [default: auto]")] = None,
    precision: Annotated[
        Optional[str], typer.Option(help="fp32, bf16 or fp16 (autocast; fp16 adds a grad scaler). [default: fp32]")
    ] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
    grad_checkpoint: Annotated[
        Optional[bool],
        typer.Option(
            "--grad-checkpoint/--no-grad-checkpoint", help="Recompute activations in backward to save memory."
        ),
    ] = None,
    grad_accum: Annotated[
        Optional[int], typer.Option(help="Split each batch into this many micro-batches. [default: 1]")
    ] = None,
    log_every: Annotated[
        Optional[int], typer.Option(help="Log the loss every N steps (metrics.jsonl). [default: 100]")
    ] = None,
    sample_every: Annotated[
        Optional[int],
        typer.Option(help="Save a sample grid every N steps and at the end (0: never). [default: 1000]"),
    ] = None,
    checkpoint_every: Annotated[
        Optional[int], typer.Option(help="Write a checkpoint every N steps. [default: 1000]")
    ] = None,
    keep: Annotated[Optional[int], typer.Option(help="Keep the newest N step checkpoints. [default: 3]")] = None,
    skip_nonfinite: Annotated[
        Optional[bool],
        typer.Option("--skip-nonfinite/--stop-nonfinite", help="Skip steps with a NaN/inf loss instead of stopping."),
    ] = None,
    config: Annotated[
        Optional[Path], typer.Option(help="TOML file of training options; command-line options override it.")
    ] = None,
    resume: Annotated[
        Optional[str], typer.Option(help="Continue a run: its folder, a checkpoint in it, or 'latest'.")
    ] = None,
    allow_change: Annotated[
        bool, typer.Option("--allow-change", help="On --resume, accept changed hyper-parameters (lr, batch size, ...).")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a flow-matching model and write checkpoints, sample grids and metrics.jsonl.

    Examples:

      fm train mnist-mini --out runs/demo

      fm train ./images --epochs 50 --image-size 32 --out runs/mine

      fm train ./images --max-time 10m

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
        data=data,
        out=str(out) if out else None,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        max_time=parse_duration(max_time) if max_time is not None else None,
        lr_schedule=lr_schedule,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        ema_decay=ema_decay,
        label_dropout=label_dropout,
        time_sampling=time_sampling,
        time_mean=time_mean,
        time_std=time_std,
        coupling=coupling,
        image_size=image_size,
        channels=channels,
        data_dir=str(data_dir) if data_dir else None,
        conditional=False if unconditional else None,
        model=model or None,
        seed=seed,
        device=device,
        precision=precision,
        compile=compile,
        grad_checkpoint=grad_checkpoint,
        grad_accum=grad_accum,
        log_every=log_every,
        sample_every=sample_every,
        checkpoint_every=checkpoint_every,
        keep=keep,
        skip_nonfinite=skip_nonfinite,
    )
    from fmcli.train import TrainingInterrupted, train

    callbacks = RichCallbacks(quiet=json_output)
    try:
        from fmcli.cli import STARTED

        result = train(
            overrides,
            config_file=config,
            resume=resume,
            allow_change=allow_change,
            callbacks=callbacks,
            started=STARTED,
        )
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
