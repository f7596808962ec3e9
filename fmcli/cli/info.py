"""``fm info``: what a checkpoint holds."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fmcli.cli._common import cli_errors, console, print_json


@cli_errors
def info_command(
    checkpoint: Annotated[Path, typer.Argument(help="A .safetensors checkpoint or a run folder.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False,
) -> None:
    """Show a checkpoint's metadata: format, step, data, model and the resolved training config.

    Example:

      fm info runs/demo/last.safetensors
    """
    import math

    from fmcli.io.checkpoint import read_header
    from fmcli.sampling.options import default_sampler

    shapes, meta = read_header(checkpoint)  # the header alone: a few kB, whatever the file's size
    groups = sorted({name.split(".", 1)[0] for name in shapes})
    parameters = sum(math.prod(shape) for name, shape in shapes.items() if name.startswith("ema."))
    trained = meta.train_config or {}
    solver, steps = default_sampler(meta)
    payload = {
        "path": str(checkpoint),
        "format_version": meta.format_version,
        "step": meta.step,
        "parameters": parameters,
        "tensor_groups": groups,
        "objective": trained.get("objective", "fm"),
        "training_guidance": trained.get("train_cfg", 1.0),
        "teacher": trained.get("teacher"),
        "default_sampling": {"solver": solver, "steps": steps},
        "data": meta.data,
        "model_config": meta.model_config,
        "label_dropout": meta.label_dropout,
        "train_config": meta.train_config,
    }
    if json_output:
        print_json(payload)
        return
    table = Table(title=f"fm checkpoint {checkpoint}", show_header=False)
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key in ("format_version", "step", "parameters", "tensor_groups", "objective", "training_guidance",
                "teacher", "label_dropout"):  # fmt: skip
        table.add_row(key, str(payload[key]))
    table.add_row("default_sampling", f"{solver}, {steps} steps")
    for key, value in meta.data.items():
        table.add_row(f"data.{key}", json.dumps(value) if not isinstance(value, str) else value)
    for key, value in meta.model_config.items():
        table.add_row(f"model.{key}", json.dumps(value))
    for key, value in sorted(meta.train_config.items()):
        table.add_row(f"train.{key}", json.dumps(value))
    console.print(table)
