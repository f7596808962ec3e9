"""Tuned time grids on the demo model: fm tune's wall time, held-out error against dopri5, pool size, FID/recall.

    FM_DATA_DIR=/path/to/mnist python bench/tune.py --ckpt runs/demo --out bench/measured/tune.json [--parts ...]

Works on a COPY of the checkpoint in --workdir (fm tune writes NAME.grids.json beside it). Parts:

  timing   `fm tune COPY --solver euler --steps 4,6,8` (cfg 2, the default with --class), the whole process
           timed; then `--steps 4,8 --cfg 1` (no guidance) for the other rows. Run on an idle machine.
  errors   held-out noise (sampling seed 2000, 5 per class; the calibration pool's seeds are >= 2**63, so
           never these): RMSE of the 8-bit images in [0, 1] units against dopri5 at rtol = atol = 1e-6 on the
           same noise, for uniform, quadratic and tuned euler 4 and 8, cfg 2 and cfg 1. The dopri5 solves are
           cached in --cache (about 700 evaluations each).
  pool     euler 4 (cfg 2) tuned with calibration pools of 10, 20 and 50 draws: held-out error of each.
  optimiser  gradient (Adam through the solver, fm tune's choice) against derivative-free (scipy Nelder-Mead) on
           the same parameters, start and pool (euler, --optimiser-steps steps, cfg 2): calibration and held-out
           error per budget of forward solves (a backward pass costs one to two forward solves: Adam's n
           iterations are counted as 3n + 5, 4 starts and the final check included).
  fid      `fm eval COPY --cfg 2 --sweep euler --steps 4,8 --grids uniform,tuned --num 2000 --metrics fid,pr`
           against the MNIST test split (seed 0: held out); --fid-heun adds heun 20 for scale.

Every sample is drawn through fm's own sampling path (the registered solver, Integration with the stored
times and step scales), so these are the figures fm sample gives.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HELD_SEED, HELD_PER_CLASS, REFERENCE_TOL = 2000, 5, 1e-6


def fm(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fmcli", *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout


def held_out(loaded, cfg: float, cache: Path):
    """(noise, labels, dopri5 x0) of the held-out pool; the reference solve is cached per cfg."""
    import torch

    from fmcli.sampling.guidance import balanced_classes, guided_velocity
    from fmcli.sampling.solvers import get_solver
    from fmcli.sampling.solvers.base import Integration

    num = HELD_PER_CLASS * loaded.meta.num_classes
    x1 = torch.randn((num, *loaded.meta.shape), generator=torch.Generator().manual_seed(HELD_SEED))
    labels = balanced_classes(num, loaded.meta.num_classes)
    path = cache / f"held_cfg{cfg:g}_n{num}_seed{HELD_SEED}_tol{REFERENCE_TOL:g}.pt"
    if path.exists():
        stored = torch.load(path)
        assert torch.equal(stored["x1"], x1)
        return x1, labels, stored["x0"]
    velocity = guided_velocity(loaded.model, cfg, null_class=loaded.meta.num_classes)
    spec = Integration(rtol=REFERENCE_TOL, atol=REFERENCE_TOL)
    with torch.inference_mode():
        x0 = get_solver("dopri5").solve(velocity, x1, spec, {"y": labels}).x
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x1": x1, "x0": x0}, path)
    return x1, labels, x0


def held_out_error(
    loaded, cfg: float, cache: Path, time_grid, steps: int | None = None, scales=None, solver: str = "euler"
) -> float:
    import torch

    from fmcli.sampling.guidance import guided_velocity
    from fmcli.sampling.solvers import get_solver
    from fmcli.sampling.solvers.base import Integration
    from fmcli.sampling.tuning import final_error

    x1, labels, reference = held_out(loaded, cfg, cache)
    velocity = guided_velocity(loaded.model, cfg, null_class=loaded.meta.num_classes)
    spec = Integration(time_grid=time_grid, steps=steps or 20, step_scales=scales)
    with torch.inference_mode():
        x0 = get_solver(solver).solve(velocity, x1, spec, {"y": labels}).x
    return round(final_error(x0, reference, images=True), 5)


def tuned_grid(copy: Path, steps: int, cfg: float):
    from fmcli.sampling.tuned import TunedSetting, find_tuned

    return find_tuned(copy, TunedSetting("euler", steps, cfg, True), required=True)


def compare_optimisers(copy: Path, loaded, cache: Path, steps: int) -> list[dict]:
    import numpy as np
    import torch
    from scipy.optimize import minimize

    from fmcli.io.checkpoint import load_checkpoint
    from fmcli.sampling.tuning import (
        TuneOptions,
        calibrate,
        fit_grid,
        grid_from_logits,
        logits_from_grid,
        squared_error,
        trajectory_grid,
    )

    rows = []
    calibration, _ = calibrate(load_checkpoint(copy), TuneOptions(solver="euler", steps=(steps,)))
    for iterations in (8, 20):
        start = time.perf_counter()
        fit = fit_grid(calibration, steps, TuneOptions(solver="euler", steps=(steps,), iterations=iterations))
        held = held_out_error(loaded, 2.0, cache, tuple(fit.times.tolist()), scales=tuple(fit.scales.tolist()))
        rows.append({"steps": steps, "optimiser": f"adam {iterations}", "solves": 4 + 3 * iterations + 1,
                     "seconds": round(time.perf_counter() - start, 1), "calibration": round(fit.error_tuned, 5),
                     "held_out": held})  # fmt: skip
        print(rows[-1])
    times, scales = trajectory_grid(calibration.trajectory, steps)
    p0 = np.concatenate([logits_from_grid(times)[:-1].numpy(), scales.log().numpy()])

    def unpack(p):
        p = torch.as_tensor(p, dtype=torch.float64)
        return grid_from_logits(torch.cat([p[: steps - 1], p.new_zeros(1)])), p[steps - 1 :].exp()

    for budget in (25, 100):
        best, start = [np.inf, p0], time.perf_counter()

        def objective(p, best=best):
            loss = float(squared_error(calibration.final(*unpack(p)), calibration.reference, True))
            if loss < best[0]:
                best[0], best[1] = loss, p.copy()
            return loss

        simplex = np.vstack([p0] + [p0 + 0.2 * np.eye(p0.size)[i] for i in range(p0.size)])
        minimize(objective, p0, method="Nelder-Mead", options={"maxfev": budget, "initial_simplex": simplex})
        times, scales = unpack(best[1])
        held = held_out_error(loaded, 2.0, cache, tuple(times.tolist()), scales=tuple(scales.tolist()))
        rows.append({"steps": steps, "optimiser": f"nelder-mead {budget}", "solves": 4 + budget,
                     "seconds": round(time.perf_counter() - start, 1),
                     "calibration": round(calibration.error(times, scales), 5), "held_out": held})  # fmt: skip
        print(rows[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=Path("runs/demo"))
    parser.add_argument("--workdir", type=Path, default=Path("bench/results/tune"))
    parser.add_argument("--cache", type=Path, default=None, help="dopri5 references (default: WORKDIR/cache)")
    parser.add_argument("--out", type=Path, default=Path("bench/measured/tune.json"))
    parser.add_argument("--parts", default="timing,errors,pool,optimiser,fid")
    parser.add_argument("--fid-num", type=int, default=2000)
    parser.add_argument("--optimiser-steps", type=int, default=4, help="the step count the optimisers are compared at")
    parser.add_argument("--fid-heun", action="store_true", help="also score heun 20 (the default sampler)")
    args = parser.parse_args()
    parts = args.parts.split(",")

    from fmcli.io.checkpoint import checkpoint_file, load_checkpoint

    args.workdir.mkdir(parents=True, exist_ok=True)
    cache = args.cache or args.workdir / "cache"
    copy = args.workdir / "demo.safetensors"
    if not copy.exists():
        shutil.copy(checkpoint_file(args.ckpt).resolve(), copy)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["checkpoint"] = str(checkpoint_file(args.ckpt).resolve())

    if "timing" in parts:
        copy.with_suffix(".grids.json").unlink(missing_ok=True)
        seconds, out = fm("tune", str(copy), "--solver", "euler", "--steps", "4,6,8", "--json")
        report = json.loads(out)
        results["timing"] = {
            "command": "fm tune CKPT --solver euler --steps 4,6,8",
            "process_seconds": round(seconds, 1),
            "tune_seconds": report["seconds"],
            "reference_seconds": report["reference_seconds"],
            "calibration": {g["steps"]: g["calibration"] for g in report["grids"]},
        }
        seconds, out = fm("tune", str(copy), "--solver", "euler", "--steps", "4,8", "--cfg", "1", "--json")
        results["timing_cfg1"] = {"command": "fm tune CKPT --steps 4,8 --cfg 1", "process_seconds": round(seconds, 1)}
        print(json.dumps(results["timing"], indent=1))

    loaded = load_checkpoint(copy) if {"errors", "pool", "optimiser"} & set(parts) else None
    if "errors" in parts:
        rows = []
        for cfg in (2.0, 1.0):
            for steps in (4, 8):
                tuned = tuned_grid(copy, steps, cfg)
                row = {"cfg": cfg, "steps": steps}
                row["uniform"] = held_out_error(loaded, cfg, cache, "uniform", steps)
                row["quadratic"] = held_out_error(loaded, cfg, cache, "quadratic", steps)
                row["tuned"] = held_out_error(loaded, cfg, cache, tuned.times, scales=tuned.scales)
                row["tuned_times_only"] = held_out_error(loaded, cfg, cache, tuned.times)
                row["calibration"] = tuned.calibration
                rows.append(row)
                print(row)
        results["errors"] = rows
        results["reference_error"] = {  # fm tune's own reference (rk4 20, quadratic) against dopri5 1e-6
            f"cfg {cfg:g}": held_out_error(loaded, cfg, cache, "quadratic", 20, solver="rk4") for cfg in (2.0, 1.0)
        }
        print(results["reference_error"])

    if "pool" in parts:
        from fmcli.sampling.tuning import TuneOptions, tune

        rows = []
        for pool in (10, 20, 50):
            start = time.perf_counter()
            report = tune(load_checkpoint(copy), TuneOptions(solver="euler", steps=(4,), pool=pool))
            grid = report.grids[0]
            error = held_out_error(loaded, 2.0, cache, grid.times, scales=grid.scales)
            rows.append({"pool": pool, "seconds": round(time.perf_counter() - start, 1), "held_out": error,
                         "calibration": grid.calibration["error_tuned"]})  # fmt: skip
            print(rows[-1])
        results["pool"] = rows

    if "optimiser" in parts:
        results["optimiser"] = compare_optimisers(copy, loaded, cache, args.optimiser_steps)

    if "fid" in parts:
        common = ["--cfg", "2", "--num", str(args.fid_num), "--metrics", "fid,pr", "--data", "mnist", "--json"]
        _, out = fm("eval", str(copy), "--sweep", "euler", "--steps", "4,8", "--grids", "uniform,tuned", *common,
                    "--out", str(args.workdir / "sweep"))  # fmt: skip
        runs = json.loads(out)["runs"]
        if args.fid_heun:  # the default sampler, for scale (40 evaluations per sample: slow on a CPU)
            _, out = fm("eval", str(copy), "--sweep", "heun", "--steps", "20", "--grids", "uniform", *common,
                        "--out", str(args.workdir / "sweep_heun"))  # fmt: skip
            runs += json.loads(out)["runs"]
        results["fid"] = [
            {k: run.get(k) for k in ("solver", "steps", "time_grid", "nfe", "fid", "precision", "recall", "seconds")}
            for run in runs
        ]
        for run in results["fid"]:
            print(run)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
