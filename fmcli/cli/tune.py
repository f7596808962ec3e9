"""``fm tune``: fit a fixed-step solver's time grid (or, with --guidance, the guidance) to a checkpoint, stored beside
it for sampling to find."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from fmcli import registry
from fmcli.cli._common import (
    GUIDE_HELP,
    INTERVAL_HELP,
    CheckpointArgument,
    DeviceOption,
    JsonOption,
    StageProgress,
    ThreadsOption,
    WeightsOption,
    cli_errors,
    console,
    err_console,
    parse_guides,
    parse_int_list,
    parse_list,
    print_json,
    progress_bar,
    solver_help,
    use_threads,
)


@cli_errors
def tune_command(
    checkpoint: CheckpointArgument,
    solver: Annotated[
        Optional[str],
        typer.Option(
            help=f"Fixed-step {solver_help()} \\[default: euler; with --guidance the checkpoint's default sampler]",
            autocompletion=registry.completer(registry.solvers),
            show_default=False,
        ),
    ] = None,
    steps: Annotated[
        Optional[str],
        typer.Option(
            help="Step counts to tune, comma-separated (each at least 2); with --guidance one count. "
            "\\[default: 4,6,8; with --guidance the checkpoint's default sampler's]",
            show_default=False,
        ),
    ] = None,
    cfg: Annotated[
        Optional[float],
        typer.Option(
            help="Guidance scale the grid is for (grids are used only with the same cfg). "
            "\\[default: as fm sample --class (--prompt) guides: 2 for a model trained with label (caption) "
            "dropout, else 1]",
            show_default=False,
        ),
    ] = None,
    guidance_interval: Annotated[
        Optional[str], typer.Option(help=f"The grid's guidance interval. {INTERVAL_HELP}", metavar="LO,HI")
    ] = None,
    guide: Annotated[Optional[str], typer.Option(help=f"The grid's guide. {GUIDE_HELP}", metavar="CKPT")] = None,
    unconditional: Annotated[
        bool,
        typer.Option(
            "--unconditional",
            help="Tune for sampling without --class or --prompt (unlabelled draws, cfg 1) instead of per class "
            "(a text model: per training caption its checkpoint keeps).",
        ),
    ] = False,
    pool: Annotated[
        int,
        typer.Option(help="Noise draws in the calibration pool (rounded up to a multiple of the classes or captions)."),
    ] = 20,
    iterations: Annotated[int, typer.Option(help="Optimiser (Adam) iterations per step count.")] = 8,
    learning_rate: Annotated[float, typer.Option(help="Adam's learning rate on the grid's log step lengths.")] = 0.05,
    scales: Annotated[
        bool, typer.Option("--scales/--no-scales", help="Also fit one velocity scale per step, or the times alone.")
    ] = True,
    reference_steps: Annotated[int, typer.Option(help="rk4 steps of the reference solve (quadratic grid).")] = 20,
    pool_seed: Annotated[int, typer.Option(help="Which calibration pool (never a sampling seed's noise).")] = 0,
    guidance: Annotated[
        bool,
        typer.Option(
            "--guidance",
            help="Instead of a grid: search guidance scale x interval x guide with fm eval's scores (FID, recall, "
            "class accuracy; a text model: prompted with the test captions, and prompt following where the data "
            "names shape and colour, as shapes does) for the default sampler, and store the choice beside the "
            "checkpoint (NAME.guidance.json) for fm sample, fm serve, fm distill and the Python API.",
        ),
    ] = False,
    cfgs: Annotated[str, typer.Option(help="--guidance: the scales to try.")] = "2,3",
    intervals: Annotated[
        str, typer.Option(help='--guidance: the intervals to try, ";"-separated (t = 1 noise; full: everywhere).')
    ] = "full;0.2,0.8",
    guides: Annotated[
        Optional[str],
        typer.Option(
            help="--guidance: guides to try, comma-separated checkpoints or none. \\[default: none and the run's "
            "guide.safetensors, the early checkpoint fm train keeps]",
            show_default=False,
        ),
    ] = None,
    guide_labels: Annotated[
        str,
        typer.Option(
            help="--guidance: the guide's velocities to try: null (unconditional), same (the class or prompt)."
        ),
    ] = "null",
    num: Annotated[
        int,
        typer.Option(help="--guidance: samples per candidate (held-out noise, equal per class; test captions)."),
    ] = 500,
    screen: Annotated[
        float,
        typer.Option(
            help="--guidance: every candidate first samples this share of --num (at least the FID's "
            "minimum); 1: no screen."
        ),
    ] = 0.25,
    finalists: Annotated[
        int, typer.Option(help="--guidance: candidates the screen sends on to --num samples (with the unguided).")
    ] = 3,
    min_recall: Annotated[float, typer.Option(help="--guidance: keep at least this x the unguided recall.")] = 0.95,
    min_accuracy: Annotated[
        float, typer.Option(help="--guidance: the class accuracy (a text model: prompt following) to reach.")
    ] = 0.99,
    data: Annotated[
        Optional[str], typer.Option(help="--guidance: data set to score against (default: its own).")
    ] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Where data files live (else $FM_DATA_DIR).")] = None,
    extractor: Annotated[
        Optional[str], typer.Option(help="--guidance: fm eval's feature network (default: fm eval's for the data).")
    ] = None,
    weights: WeightsOption = "ema",
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Tune the time grid of a fixed-step solver to this checkpoint (t = 1 noise -> t = 0 data), or (--guidance)
    the guidance it samples with.

    Fits the K - 1 interior times (and one velocity scale per step) to minimise the error of the final samples
    against an accurate solve of the same noise, on a small calibration pool, and writes them to CKPT's
    NAME.grids.json. fm sample, fm animate and fm eval then use the tuned grid by default when they run with the
    same solver, steps and guidance (--time-grid uniform gives the plain grid; fm info lists the tuned ones).

    Examples:

      fm tune runs/demo --solver euler --steps 4,6,8

      fm tune runs/demo --steps 4 --cfg 1 --json

      fm sample runs/demo --class all --solver euler --steps 4 --out tuned.png

      fm tune runs/demo --guidance --data mnist   (then fm sample runs/demo --class 6 guides as stored)

      fm tune runs/text --guidance --data shapes   (then fm sample runs/text --prompt "a red circle")
    """
    machine = use_threads(threads, quiet=json_output)
    if guidance:
        from fmcli.eval.guidance_search import SearchOptions
        from fmcli.eval.run import EvalOptions
        from fmcli.sampling.stored_guidance import parse_intervals

        named = None if guides is None else parse_guides(guides)
        search = SearchOptions(
            scales=tuple(parse_list(cfgs, "--cfgs", float)),
            intervals=tuple(parse_intervals(intervals)),
            guides=None if named is None else tuple(named),
            guide_labels=tuple(parse_list(guide_labels, "--guide-labels")),
            min_recall=min_recall,
            min_accuracy=min_accuracy,
            screen=screen,
            finalists=finalists,
            solver=solver,
            steps=None if steps is None else parse_int_list(steps, "--steps")[0],
            eval=EvalOptions(num_samples=num, metrics=("fid", "pr"), data=data, data_dir=data_dir, weights=weights,
                             device=device, extractor=extractor),
        )  # fmt: skip
        _tune_guidance(checkpoint, search, json_output, machine)
        return
    solver, steps = solver or "euler", steps or "4,6,8"
    from fmcli.device import resolve_device
    from fmcli.io.checkpoint import load_checkpoint
    from fmcli.sampling.tuned import grid_file, read_grid_file, store_tuned
    from fmcli.sampling.tuning import TuneOptions, tune

    options = TuneOptions(
        solver=solver,
        steps=tuple(parse_int_list(steps, "--steps")),
        cfg=cfg,
        guidance_interval=guidance_interval,
        guide=guide,
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
        report = tune(loaded, options, StageProgress(bar))
    path = store_tuned(loaded.path, report.grids)
    payload = {
        "checkpoint": str(loaded.path),
        "file": str(path),
        **report.setting,
        "condition": loaded.meta.condition if report.setting["conditional"] else "none",  # what the pool draws for
        "reference_seconds": round(report.reference_seconds, 2),
        "seconds": round(report.seconds, 2),
        "grids": [grid.as_json() for grid in report.grids],
    }
    if json_output:
        print_json(payload)
        return
    _print_report(payload)
    err_console.print(f"wrote {path} ({report.seconds:.1f} s)", highlight=False)


def _tune_guidance(checkpoint, options, json_output: bool, machine: dict) -> None:
    from fmcli.eval.guidance_search import search_guidance
    from fmcli.sampling.stored_guidance import store

    with progress_bar() as bar:
        found = search_guidance(checkpoint, options, StageProgress(bar))
    path = store(checkpoint, found["stored"])
    search = found["search"]
    if json_output:
        print_json({"checkpoint": str(checkpoint), "file": str(path), **search, **machine})
        return
    _print_guidance(str(checkpoint), search)
    err_console.print(f"chose {search['chosen']} ({search['why']}); wrote {path} ({search['seconds']:.0f} s)",
                      highlight=False)  # fmt: skip


def _print_guidance(checkpoint: str, search: dict) -> None:
    from fmcli.sampling.stored_guidance import GuidanceSetting

    screen = search.get("screen")
    counts = f"{search['num_samples']} samples each" if not screen else (
        f"{screen['num_samples']} samples each, the {screen['finalists']} best and the unguided {search['num_samples']}"
    )  # fmt: skip
    table = Table(
        title=f"fm tune --guidance: {checkpoint} ({counts}, held-out noise, "
        f"{search['extractor']} features against {search['data']}; {search['rule']}; "
        f"accuracy: {search.get('accuracy') or 'none for this model and data'})",
        title_justify="left",
    )
    for column in ("guidance", "samples", "NFE", "passes", "FID", "recall", "precision", "accuracy", "seconds"):
        table.add_column(column, justify="left" if column == "guidance" else "right")
    for row in [search["baseline"], *search["rows"]]:
        setting = GuidanceSetting(
            row["cfg"], row["interval"] and tuple(row["interval"]), row["guide"], row["guide_label"]
        )
        accuracy = "-" if row.get("accuracy") is None else f"{row['accuracy']:.3f}"
        mark = " (chosen)" if setting.describe() == search["chosen"] else ""
        counted = [str(row[key]) for key in ("num_samples", "nfe", "passes")]
        table.add_row(setting.describe() + mark, *counted, f"{row['fid']:.2f}", f"{row['recall']:.3f}",
                      f"{row['precision']:.3f}", accuracy, f"{row['seconds']:.1f}")  # fmt: skip
    console.print(table)


def _print_report(payload: dict) -> None:
    pool = {"class": "per class", "text": "per training caption"}.get(payload["condition"], "unconditional")
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
