"""``fm tune``: fit a fixed-step solver's time grid to a checkpoint, stored beside it for sampling to find."""

from typing import Annotated, Optional

import typer
from rich.table import Table

from fmcli import registry
from fmcli.cli._common import (
    CheckpointArgument,
    DeviceOption,
    JsonOption,
    WeightsOption,
    cli_errors,
    console,
    err_console,
    parse_int_list,
    print_json,
    progress_bar,
    solver_help,
)


@cli_errors
def tune_command(
    checkpoint: CheckpointArgument,
    solver: Annotated[
        str, typer.Option(help=f"Fixed-step {solver_help()}", autocompletion=registry.completer(registry.solvers))
    ] = "euler",
    steps: Annotated[str, typer.Option(help="Step counts to tune, comma-separated (each at least 2).")] = "4,6,8",
    cfg: Annotated[
        Optional[float],
        typer.Option(
            help="Guidance scale the grid is for (grids are used only with the same cfg). "
            "\\[default: as fm sample --class guides: 2 for a model trained with label dropout, else 1]",
            show_default=False,
        ),
    ] = None,
    unconditional: Annotated[
        bool,
        typer.Option(
            "--unconditional", help="Tune for sampling without --class (unlabelled draws, cfg 1) instead of per class."
        ),
    ] = False,
    pool: Annotated[
        int, typer.Option(help="Noise draws in the calibration pool (rounded up to a multiple of the classes).")
    ] = 20,
    iterations: Annotated[int, typer.Option(help="Optimiser (Adam) iterations per step count.")] = 8,
    learning_rate: Annotated[float, typer.Option(help="Adam's learning rate on the grid's log step lengths.")] = 0.05,
    scales: Annotated[
        bool, typer.Option("--scales/--no-scales", help="Also fit one velocity scale per step, or the times alone.")
    ] = True,
    reference_steps: Annotated[int, typer.Option(help="rk4 steps of the reference solve (quadratic grid).")] = 20,
    pool_seed: Annotated[int, typer.Option(help="Which calibration pool (never a sampling seed's noise).")] = 0,
    weights: WeightsOption = "ema",
    device: DeviceOption = "auto",
    json_output: JsonOption = False,
) -> None:
    """Tune the time grid of a fixed-step solver to this checkpoint (t = 1 noise -> t = 0 data).

    Fits the K - 1 interior times (and one velocity scale per step) to minimise the error of the final samples
    against an accurate solve of the same noise, on a small calibration pool, and writes them to CKPT's
    NAME.grids.json. fm sample, fm animate and fm eval then use the tuned grid by default when they run with the
    same solver, steps and guidance (--time-grid uniform gives the plain grid; fm info lists the tuned ones).

    Examples:

      fm tune runs/demo --solver euler --steps 4,6,8

      fm tune runs/demo --steps 4 --cfg 1 --json

      fm sample runs/demo --class all --solver euler --steps 4 --out tuned.png
    """
    from fmcli.device import resolve_device
    from fmcli.io.checkpoint import load_checkpoint
    from fmcli.sampling.tuned import grid_file, read_grid_file, store_tuned
    from fmcli.sampling.tuning import TuneOptions, tune

    options = TuneOptions(
        solver=solver,
        steps=tuple(parse_int_list(steps, "--steps")),
        cfg=cfg,
        conditional=not unconditional,
        pool=pool,
        iterations=iterations,
        learning_rate=learning_rate,
        scales=scales,
        reference_steps=reference_steps,
        pool_seed=pool_seed,
    )  # every option is checked here, before the checkpoint is read
    if grid_file(checkpoint).exists():
        read_grid_file(grid_file(checkpoint))  # a damaged file is refused now, not after the fit
    loaded = load_checkpoint(checkpoint, device=resolve_device(device), weights=weights)
    with progress_bar() as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        report = tune(loaded, options, progress)
    path = store_tuned(loaded.path, report.grids)
    payload = {
        "checkpoint": str(loaded.path),
        "file": str(path),
        **report.setting,
        "reference_seconds": round(report.reference_seconds, 2),
        "seconds": round(report.seconds, 2),
        "grids": [grid.as_json() for grid in report.grids],
    }
    if json_output:
        print_json(payload)
        return
    _print_report(payload)
    err_console.print(f"wrote {path} ({report.seconds:.1f} s)", highlight=False)


def _print_report(payload: dict) -> None:
    pool = "per class" if payload["conditional"] else "unconditional"
    table = Table(
        title=f"fm tune: {payload['checkpoint']} ({payload['solver']}, cfg {payload['cfg']:g}, pool of "
        f"{payload['pool']} draws {pool}; error = {payload['error']} against {payload['reference']})",
        title_justify="left",
    )
    for column in ("steps", "uniform error", "tuned error", "seconds", "times (1 -> 0)", "scales"):
        table.add_column(column, justify="left" if column in ("times (1 -> 0)", "scales") else "right")
    for grid in payload["grids"]:
        notes = grid["calibration"]
        times = " ".join(f"{t:.3f}" for t in grid["times"])
        scales = "-" if grid["scales"] is None else " ".join(f"{s:.3f}" for s in grid["scales"])
        table.add_row(
            str(grid["steps"]),
            f"{notes['error_uniform']:.4f}",
            f"{notes['error_tuned']:.4f}",
            f"{notes['seconds']:.1f}",
            times,
            scales,
        )
    console.print(table)
