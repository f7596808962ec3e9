"""``fm autoencoder train`` and ``fm autoencoder eval``: thin wrappers over ``fmcli.training.autoencoder`` and
``fmcli.eval.autoencoder`` (imported inside the commands, so ``--help`` never imports torch)."""

import signal
from typing import Annotated, Optional

import typer

from fmcli import registry
from fmcli.cli._common import cli_errors, dataset_help, err_console, print_json
from fmcli.errors import FMError

app = typer.Typer(
    name="autoencoder",
    help="Autoencoders for latent-space models: train fm's built-in one on your pictures, measure how well one "
    "reconstructs (PSNR, FID of reconstructions). `fm plugins` lists the kinds.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

Int = Optional[int]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
Device = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps. \\[default: auto]")]


@app.command("train")
@cli_errors
def train_command(
    data: Annotated[
        Optional[str], typer.Argument(help=dataset_help(), autocompletion=registry.completer(registry.datasets))
    ] = None,
    image_size: Annotated[Int, typer.Option(help="Resize and centre-crop to this; a multiple of --factor.")] = None,
    out: Annotated[Optional[str], typer.Option(help="The run folder. \\[default: runs/<data>-autoencoder]")] = None,
    factor: Annotated[Int, typer.Option(help="Downsampling factor: 2, 4, 8 or 16. \\[default: 4]")] = None,
    latent_channels: Annotated[Int, typer.Option(help="Channels of the latent grid. \\[default: 4]")] = None,
    width: Annotated[
        Int, typer.Option(help="Channels at full resolution (doubling per level). \\[default: 16]")
    ] = None,
    steps: Annotated[Int, typer.Option(help="Optimizer steps. \\[default: 3000]")] = None,
    max_time: Annotated[
        Optional[str],
        typer.Option(help="Train for this long instead (90s, 10m, 2h): the first steps are timed and fix the total."),
    ] = None,
    batch_size: Annotated[Int, typer.Option(help="Images per step. \\[default: 16]")] = None,
    lr: Annotated[
        Optional[float], typer.Option(help="Adam learning rate (warm-up, then cosine). \\[default: 0.001]")
    ] = None,
    channels: Annotated[Int, typer.Option(help="Force 1 (grayscale) or 3 (RGB). \\[default: from the images]")] = None,
    data_dir: Annotated[Optional[str], typer.Option(help="Where a data set's files live.")] = None,
    seed: Annotated[Int, typer.Option(help="Seed of the weights and the batch order. \\[default: 0]")] = None,
    checkpoint_every: Annotated[Int, typer.Option(help="Steps between checkpoints. \\[default: 500]")] = None,
    device: Device = None,
    resume: Annotated[
        Optional[str],
        typer.Option(help="Continue the run in this folder (to its planned steps, or --steps / --max-time)."),
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Train fm's built-in convolutional autoencoder on DATA's pictures.

    Writes autoencoder.safetensors (weights, config, the latents' measured mean and scale) and state.safetensors.

    Data without a test split keeps a seeded tenth out of training for `fm autoencoder eval`.

    Examples:

      fm autoencoder train ./photos --image-size 128 --max-time 30m --out runs/ae

      fm autoencoder train shapes --image-size 64 --factor 4 --latent-channels 4 --steps 2000

      fm autoencoder train --resume runs/ae --steps 6000

      fm autoencoder eval runs/ae
    """

    if data is None and resume is None:
        raise FMError("give the data to train on (a folder or a data set name), or --resume RUN")
    given = {"data": data, "image_size": image_size, "factor": factor, "latent_channels": latent_channels,
             "width": width, "steps": steps, "batch_size": batch_size, "lr": lr, "channels": channels,
             "data_dir": data_dir, "seed": seed, "checkpoint_every": checkpoint_every, "device": device,
             "max_time": max_time}  # fmt: skip
    run_training({key: value for key, value in given.items() if value is not None}, out, resume, json_output)


def run_training(given: dict, out: str | None, resume: str | None, json_output: bool) -> None:
    """Train with a progress bar; Ctrl-C/SIGTERM save the state and exit 128 + signal; print the summary."""
    from fmcli.cli import _common
    from fmcli.cli._training import RichCallbacks
    from fmcli.training.autoencoder import train_autoencoder
    from fmcli.training.budget import parse_duration
    from fmcli.training.events import TrainingInterrupted

    if "max_time" in given:
        given["max_time"] = parse_duration(given["max_time"])
    callbacks = RichCallbacks(quiet=json_output)
    try:
        result = train_autoencoder(given, out=out, resume=resume, callbacks=callbacks, started=_common.STARTED)
    except TrainingInterrupted as stop:
        callbacks.close()
        name = signal.Signals(stop.signum).name if stop.signum else "signal"
        typer.echo(f"{name}: stopped at step {stop.step}; saved {stop.checkpoint}. Resume with: "
                   f"fm autoencoder train --resume {stop.run_dir}", err=True)  # fmt: skip
        raise typer.Exit(128 + int(stop.signum or 2)) from None
    finally:
        callbacks.close()
    summary = {"run_dir": str(result.run_dir), "autoencoder": str(result.checkpoint), "step": result.step,
               "loss": result.loss, "seconds": round(result.seconds, 2)}  # fmt: skip
    if json_output:
        print_json(summary)
    else:
        err_console.print(f"done: step {result.step}, loss {result.loss:.4f}, {result.seconds:.0f} s -> "
                          f"{result.checkpoint}", highlight=False)  # fmt: skip


@app.command("eval")
@cli_errors
def eval_command(
    autoencoder: Annotated[
        str,
        typer.Argument(
            help="A run folder of `fm autoencoder train`, its autoencoder.safetensors, or diffusers:DIR "
            "(an AutoencoderKL saved with save_pretrained)."
        ),
    ],
    data: Annotated[
        Optional[str], typer.Option(help="Images to reconstruct. \\[default: what it was trained on]")
    ] = None,
    num: Annotated[Int, typer.Option(help="Held-out images to reconstruct. \\[default: all, up to 1000]")] = None,
    image_size: Annotated[Int, typer.Option(help="Resize the data to this. \\[default: the trained size]")] = None,
    extractor: Annotated[
        Optional[str],
        typer.Option(
            help="Feature extractor for FID (fm plugins lists them). \\[default: fm eval's for the images]",
            autocompletion=registry.completer(registry.feature_extractors),
        ),
    ] = None,
    fid: Annotated[bool, typer.Option("--fid/--no-fid", help="Also the FID of the reconstructions.")] = True,
    data_dir: Annotated[Optional[str], typer.Option(help="Where a data set's files live.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    device: Device = None,
    json_output: JsonOutput = False,
) -> None:
    """Measure how well an autoencoder reconstructs pictures it was not trained on: PSNR, FID, speed.

    Held out: the test split, or the tenth `fm autoencoder train` kept out of training.

    The FID of the reconstructions is the best a latent model decoded by this autoencoder can reach.

    Examples:

      fm autoencoder eval runs/ae

      fm autoencoder eval runs/ae --num 500 --json

      fm autoencoder eval diffusers:~/models/sd-vae --data ./photos --image-size 256 --extractor inception
    """
    from fmcli.cli._common import StageProgress, progress_bar
    from fmcli.eval.autoencoder import AutoencoderEvalOptions, evaluate_autoencoder

    options = AutoencoderEvalOptions(data=data, num=num, image_size=image_size, data_dir=data_dir, fid=fid,
                                     extractor=extractor, batch_size=batch_size, device=device or "auto")  # fmt: skip
    with progress_bar() as bar:
        report = evaluate_autoencoder(autoencoder, options, progress=StageProgress(bar))
    if json_output:
        print_json(report)
    else:
        print_report(report)


def print_report(report: dict) -> None:
    described = report["autoencoder"]
    lines = [
        f"autoencoder {described['kind']} {described['digest']}: factor {described['factor']}, "
        f"{described['latent_channels']} latent channels, latents {report['latent_shape']}",
        f"{report['num_images']} images of {report['data']['name']} ({report['data']['items']})",
        f"PSNR {report['psnr']['mean']:.2f} dB (lowest {report['psnr']['min']:.2f})",
    ]
    if "fid" in report:
        found = report["fid"]
        lines.append(f"FID of reconstructions {found['value']:.3f} ({found['extractor']['name']} features)")
    lines.append(f"encode {report['encode_images_per_s']:.1f} images/s, decode {report['decode_images_per_s']:.1f} "
                 f"images/s on {report['device']}")  # fmt: skip
    for line in lines:
        typer.echo(line)
