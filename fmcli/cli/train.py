"""``fm train``: the options (generated from ``TrainConfig``), then ``fmcli.training.loop.train``."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmcli import registry
from fmcli.cli._common import cli_errors, dataset_help
from fmcli.cli._training import run_training, train_options

Data = Annotated[
    Optional[str],
    typer.Argument(
        help=dataset_help(), autocompletion=registry.completer(registry.datasets), show_default="mnist-mini"
    ),
]
ConfigFile = Annotated[Optional[Path], typer.Option(help="TOML file of training options; the command line wins.")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@cli_errors
@train_options()
def train_command(
    data: Data = None,
    overrides: dict | None = None,
    config: ConfigFile = None,
    resume: Annotated[
        Optional[str], typer.Option(help="Continue a run: its folder, a checkpoint in it, or 'latest'.")
    ] = None,
    allow_change: Annotated[
        bool, typer.Option("--allow-change", help="On --resume, accept changed hyper-parameters (lr, batch size, ...).")
    ] = False,
    json_output: JsonOutput = False,
) -> None:
    """Train a flow-matching model and write checkpoints, sample grids and metrics.jsonl.

    Examples:

      fm train mnist-mini --out runs/demo

      fm train ./images --epochs 50 --image-size 32 --out runs/mine

      fm train ./images --max-time 10m

      fm train mnist-mini --objective meanflow --out runs/onestep

      fm train ./captioned --image-size 32   (captions in metadata.jsonl: a text model; then fm sample --prompt)

      fm train shapes --out runs/shapes   (the built-in captioned set)

      fm train ./images --log-to tensorboard   (then: tensorboard --logdir runs/)

      fm train moons --steps 3000 --out runs/toy

      fm train --resume runs/demo --steps 4000

      torchrun --nproc_per_node=4 -m fmcli train mnist --batch-size 512 --precision bf16
    """
    overrides = dict(overrides or {}, data=data)
    run_training(overrides, config=config, resume=resume, allow_change=allow_change, json_output=json_output)
