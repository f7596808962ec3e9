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
    from fmcli.sampling.info import checkpoint_info

    payload = checkpoint_info(checkpoint)  # the header alone: a few kB, whatever the file's size
    if json_output:
        print_json(payload)
        return
    table = Table(title=f"fm checkpoint {checkpoint}", show_header=False)
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key in ("format_version", "step", "parameters", "tensor_groups", "objective", "training_guidance",
                "teacher", "label_dropout"):  # fmt: skip
        table.add_row(key, str(payload[key]))
    sampler = payload["default_sampling"]
    table.add_row("default_sampling", f"{sampler['solver']}, {sampler['steps']} steps")
    for key, value in payload["data"].items():
        table.add_row(f"data.{key}", json.dumps(value) if not isinstance(value, str) else value)
    condition = payload["condition"]
    table.add_row("condition", ", ".join(f"{key} {value}" for key, value in condition.items()))
    for key, value in payload["model_config"].items():
        if key != "text":  # a text model's encoder (its vocabulary): summarised in "condition"
            table.add_row(f"model.{key}", json.dumps(value))
    for key, value in sorted(payload["train_config"].items()):
        table.add_row(f"train.{key}", json.dumps(value))
    tuned = payload["tuned_grids"]
    if tuned.get("error"):
        table.add_row("tuned grids", f"unusable: {tuned['error']}")
    for grid in tuned["grids"]:  # fm tune's grids, used by default with exactly these settings
        times = " ".join(f"{t:.3f}" for t in grid["times"])
        scales = "" if grid["scales"] is None else "; scales " + " ".join(f"{s:.3f}" for s in grid["scales"])
        error = grid["calibration"].get("error_tuned")
        what = f"{grid['solver']} {grid['steps']} steps, cfg {grid['cfg']:g}" + (
            "" if grid["conditional"] else ", unconditional"
        )
        note = f" (calibration error {error:.4f})" if isinstance(error, float) else ""
        table.add_row(f"tuned {what}", f"times {times}{scales}{note}")
    guidance = payload["tuned_guidance"]
    if guidance.get("error"):
        table.add_row("tuned guidance", f"unusable: {guidance['error']}")
    elif guidance.get("file"):
        sampler = guidance["sampler"]
        used = "--class sampling" if guidance["conditional"] else "unlabelled sampling"
        table.add_row(
            "tuned guidance",
            f"{guidance['describe']} (fm tune --guidance for {sampler.get('solver')} {sampler.get('steps')} steps; "
            f"used by default in {used}; flags win)",
        )
    console.print(table)
