"""``fm eval --sweep``: the speed-quality frontier of the solvers, with the same seeds for every run.

Fixed-step solvers run at every step count; adaptive solvers ignore step counts and run once per
tolerance (they appear in the plot as points). Writes ``sweep.json`` and ``sweep.png`` (the
metric against NFE, one line per solver).
"""

import json
from dataclasses import replace
from pathlib import Path

from fmcli import registry
from fmcli.errors import FMError
from fmcli.eval.features import Progress
from fmcli.eval.plot import plot_metric_vs_nfe
from fmcli.eval.run import EvalOptions, extractor_report, prepare
from fmcli.io.files import atomic_write_bytes


def sweep(
    checkpoint: Path,
    options: EvalOptions,
    solvers: list[str],
    steps: list[int],
    *,
    rtols: list[float] | None = None,
    out_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict:
    """FID (and the other metrics) for every solver x step count (adaptive: x tolerance), same seeds."""
    if not steps or min(steps) < 1:
        raise FMError("--steps values must be at least 1")
    plans = []  # (adaptive, options): all validated before any work
    for name in solvers:
        if getattr(registry.get_solver(name), "adaptive", False):
            tolerances = rtols or [options.sampling.rtol]
            plans += [(True, replace(options.sampling, solver=name, rtol=rtol)) for rtol in tolerances]
        else:
            plans += [(False, replace(options.sampling, solver=name, steps=count)) for count in steps]
    ctx = prepare(checkpoint, options, progress)
    runs = []
    for adaptive, sampling in plans:
        _, _, summary, metrics = ctx.sample_and_score(sampling)
        runs.append(
            {
                "solver": sampling.solver_name,
                "adaptive": adaptive,
                "steps": None if adaptive else sampling.steps,
                "rtol": sampling.rtol if adaptive else None,
                "nfe": summary["nfe"],
                "seconds": summary["seconds"],
                **{metric: entry["value"] for metric, entry in metrics.items()},
                **({"kid_std": metrics["kid"]["std"]} if "kid" in metrics else {}),
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


def write_sweep(report: dict, out_dir: Path) -> list[str]:
    """sweep.json (everything) and sweep.png (the metric against NFE), both written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "sweep.json"
    atomic_write_bytes(json_path, json.dumps(report, indent=2, default=str).encode())
    files = [str(json_path)]
    metric = "fid" if any("fid" in run for run in report["runs"]) else "kid"
    if any(metric in run for run in report["runs"]):
        plot_path = out_dir / "sweep.png"
        plot_metric_vs_nfe(
            report["runs"],
            plot_path,
            metric=metric,
            title=f"{metric.upper()} vs NFE ({report['num_samples']} samples, {report['data']})",
        )
        files.append(str(plot_path))
    return files
