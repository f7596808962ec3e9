"""``fm eval --sweep``: the speed-quality frontier of the solvers, with the same seeds for every run.

Fixed-step solvers run at every step count on every time grid asked for (``grids``; by default the
uniform grid, plus the grid ``fm tune`` fitted wherever one exists for the solver, steps and guidance: its
own line, measured on the sweep's seeds, which are never the calibration pool's); adaptive solvers ignore
step counts and grids and run once per tolerance (they appear in the plot as points). Writes ``sweep.json``
and ``sweep.png`` (the metric against NFE, one line per solver and grid).
"""

import json
from dataclasses import replace
from pathlib import Path

from fmcli import registry
from fmcli.errors import FMError
from fmcli.eval.features import Progress
from fmcli.eval.plot import plot_metric_vs_nfe
from fmcli.eval.run import EvalContext, EvalOptions, extractor_report, prepare
from fmcli.io.files import atomic_write_bytes
from fmcli.sampling.guidance import resolve_guidance
from fmcli.sampling.tuned import find_tuned


def sweep(
    checkpoint: Path,
    options: EvalOptions,
    solvers: list[str],
    steps: list[int],
    *,
    rtols: list[float] | None = None,
    out_dir: Path | None = None,
    progress: Progress | None = None,
    grids: list[str] | None = None,
    guidances: list[dict] | None = None,
) -> dict:
    """FID (and the other metrics) for every solver x step count x grid (adaptive: x tolerance) x guidance,
    same seeds.

    ``grids``: time grid names, "tuned" included (None: the sampling options' --time-grid if given, else
    uniform plus tuned where fm tune made a grid). A tuned line appears where a grid exists for its setting.
    ``guidances``: settings as SamplingOptions fields (cfg, guidance_interval, guide; None: the options' own)."""
    if not steps or min(steps) < 1:
        raise FMError("--steps values must be at least 1")
    chosen = grids or ([options.sampling.time_grid] if options.sampling.time_grid is not None else None)
    for grid in chosen or []:
        replace(options.sampling, time_grid=grid)  # unknown names fail now, before any work
    plans = []  # (adaptive, options): all validated before any work
    for name in solvers:
        if getattr(registry.get_solver(name), "adaptive", False):
            tolerances = rtols or [options.sampling.rtol]
            plans += [(True, replace(options.sampling, solver=name, rtol=rtol)) for rtol in tolerances]
        else:
            names = chosen or ["uniform", "tuned"]
            plans += [
                (False, replace(options.sampling, solver=name, steps=n, time_grid=g)) for n in steps for g in names
            ]
    if guidances:
        plans = [(adaptive, replace(sampling, **g)) for adaptive, sampling in plans for g in guidances]
    ctx = prepare(checkpoint, options, progress)
    plans = [(adaptive, sampling) for adaptive, sampling in plans if adaptive or _has_grid(ctx, sampling)]
    if chosen and "tuned" in chosen and not any(s.time_grid == "tuned" for _, s in plans):
        raise FMError(f"--grids tuned: {checkpoint} has no tuned grid for these solvers, steps and cfg; run fm tune")
    runs = []
    for adaptive, sampling in plans:
        row = ctx.row(sampling)
        runs.append(
            row
            | {
                "adaptive": adaptive,
                "steps": None if adaptive else sampling.steps,
                "time_grid": None if adaptive else row["time_grid"],
                "rtol": sampling.rtol if adaptive else None,
            }
        )
    report = {
        "checkpoint": str(checkpoint),
        "data": ctx.data.name,
        "device": str(ctx.device),
        "num_samples": options.num_samples,
        "num_reference": ctx.reference.features.shape[0],
        "extractor": extractor_report(ctx.extractor),
        "runs": runs,
        "options": options.as_dict(),
    }
    if out_dir is not None:
        report["files"] = write_sweep(report, Path(out_dir))
    return report


def _has_grid(ctx: EvalContext, sampling) -> bool:
    """Whether a sweep line can run: always, except a tuned line without a tuned grid for its setting."""
    if sampling.time_grid != "tuned":
        return True
    classes = ctx.requested_classes()
    guidance = resolve_guidance(ctx.loaded, sampling, classes)
    setting = guidance.grid_key(sampling.solver_name, sampling.steps, classes is not None, ctx.loaded.weights)
    return find_tuned(ctx.loaded.path, setting, required=False) is not None


def write_sweep(report: dict, out_dir: Path) -> list[str]:
    """sweep.json (everything) and sweep.png (the metric against NFE), both written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "sweep.json"
    atomic_write_bytes(json_path, json.dumps(report, indent=2, default=str).encode())
    files = [str(json_path)]
    metric = "fid" if any("fid" in run for run in report["runs"]) else "kid"
    if any(metric in run for run in report["runs"]):
        plot_path = out_dir / "sweep.png"
        lines = [  # one line per solver and grid: "euler (tuned)" beside "euler"
            run | {"solver": f"{run['solver']} ({run['time_grid']})"}
            if run.get("time_grid") not in (None, "uniform")
            else run
            for run in report["runs"]
        ]
        plot_metric_vs_nfe(
            lines,
            plot_path,
            metric=metric,
            title=f"{metric.upper()} vs NFE ({report['num_samples']} samples, {report['data']})",
        )
        files.append(str(plot_path))
    return files
