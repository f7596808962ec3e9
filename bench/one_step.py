"""One and two steps: distillation variants of the demo model, each given the same wall time, scored at 1, 2, 4 steps.

    FM_DATA_DIR=/path/to/mnist python bench/one_step.py --teacher runs/demo --budget 250s --out bench/results/one_step

Every variant is `fm distill TEACHER` with its options (the list is VARIANTS below), given the same wall time: first
its speed is measured (`fm distill --steps 30` on an idle machine: seconds per step after the first ten, and the
seconds before the first step, which include solving a --pool), then it trains the steps that BUDGET gives it at
that speed (what `--max-time` would plan), with --steps; several variants may train at once (--jobs, one thread
each) since what a variant learns is fixed by its steps. Every student, and the teacher (heun 20, the reference;
Euler at 1, 2, 4 steps), is scored by fm eval against the MNIST test split with the same seeds: FID, KID, precision
and recall (diversity: the failure to fix is one image per class) in the classifier's features, conditional
accuracy; each with `fm sample`'s default guidance (cfg 2 for the teacher, folded into the students). The jump
diagnostics of each student's last step (metrics.jsonl) are reported beside. Writes one_step.json and one_step.md.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {  # name -> fm distill options (0.2's distill options before the pool became the default: --pool 0)
    "0.2 default (interval scale 1000)": "--pool 0 --interval-scale 1000",
    "unit interval scale": "--pool 0 --interval-scale 1",
    "pool 1000, half of each batch": "--pool 1000 --pool-fraction 0.5",
    "pool 1000 alone": "--pool 1000 --pool-fraction 1.0",
    "pool 2000 alone": "--pool 2000 --pool-fraction 1.0",
}


def fm(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmcli", *args], capture_output=True, text=True, env=env)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def measure_speed(teacher: Path, options: list[str], out: Path) -> dict:
    run = out / "speed"
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    done = fm("distill", str(teacher), *options, "--steps", "30", "--log-every", "1", "--diagnose-every", "0",
              "--checkpoint-every", "1000000", "--out", str(run))  # fmt: skip
    if done.returncode:
        raise RuntimeError(done.stderr[-800:])
    whole = time.perf_counter() - start
    times = {r["step"]: r["time"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    return {"seconds_per_step": (times[30] - times[10]) / 20, "startup": max(0.0, whole - times[30] - 1.0)}


def score(checkpoint: Path, solver: str, steps: int, num: int) -> dict:
    from fmcli.eval.run import EvalOptions, evaluate_checkpoint
    from fmcli.sampling.options import SamplingOptions

    sampling = SamplingOptions(solver=solver, steps=steps, cfg=None, seed=0, batch_size=250)
    options = EvalOptions(num_samples=num, metrics=("fid", "kid", "pr"), data="mnist", kid_subsets=50,
                          sampling=sampling)  # fmt: skip
    report = evaluate_checkpoint(checkpoint, options)
    metrics = report["metrics"]
    return {"fid": metrics["fid"]["value"], "kid": metrics["kid"]["value"], "precision": metrics["precision"]["value"],
            "recall": metrics["recall"]["value"], "accuracy": report["conditional"]["accuracy"],
            "cfg": report["conditional"]["cfg"], "nfe": report["sampling"]["nfe"]}  # fmt: skip


def last_jumps(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    jumps = [r for r in records if "jumps/jump_0" in r]
    return {k.split("/")[1]: round(v, 4) for k, v in jumps[-1].items() if k.startswith("jumps/")} if jumps else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results/one_step"))
    parser.add_argument("--budget", default="250s", help="wall time of every variant's fm distill")
    parser.add_argument("--num", type=int, default=2000, help="samples per score (equal per class)")
    parser.add_argument("--only", default=None, help="variant names separated by semicolons")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--phase", choices=("all", "speed", "train", "score"), default="all")
    args = parser.parse_args()
    from fmcli.cli.memory import keep_freed_memory
    from fmcli.training.budget import parse_duration

    keep_freed_memory()
    args.out.mkdir(parents=True, exist_ok=True)
    variants = {name: VARIANTS[name] for name in args.only.split(";")} if args.only else VARIANTS
    speeds_path, rows_path = args.out / "speeds.json", args.out / "rows.json"
    speeds = json.loads(speeds_path.read_text()) if speeds_path.exists() else {}
    if args.phase in ("all", "speed"):
        for name, options in variants.items():  # one after the other, on an idle machine
            if name not in speeds:
                speeds[name] = measure_speed(args.teacher, options.split(), args.out)
                speeds_path.write_text(json.dumps(speeds, indent=2))
                print(f"{name}: {speeds[name]}", flush=True)
    if args.phase == "speed":
        return 0
    budget = parse_duration(args.budget)

    def train(name: str) -> str:
        run = args.out / "runs" / slug(name)
        if (run / "last.safetensors").exists():
            return f"{name}: trained before"
        steps = int((budget - speeds[name]["startup"]) / speeds[name]["seconds_per_step"])
        env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.jobs > 1 else None
        done = fm("distill", str(args.teacher), *variants[name].split(), "--steps", str(steps), "--out", str(run),
                  env=env)  # fmt: skip
        return f"{name}: {steps} steps" + (f", failed: {done.stderr[-300:]}" if done.returncode else "")

    if args.phase in ("all", "train"):
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for message in pool.map(train, variants):
                print(message, flush=True)
    if args.phase == "train":
        return 0
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else []
    done = {(row["model"], row["solver"], row["steps"]) for row in rows}
    plans = [("teacher", args.teacher, "heun", 20)] + [("teacher", args.teacher, "euler", k) for k in (1, 2, 4)]
    plans += [(name, args.out / "runs" / slug(name), "meanflow", k) for name in variants for k in (1, 2, 4)]
    for name, run, solver, steps in plans:
        if (name, solver, steps) in done or not (run / "last.safetensors").exists():
            continue
        trained = json.loads((run / "config.json").read_text()) if name != "teacher" else {}
        rows.append({"model": name, "solver": solver, "steps": steps, "options": VARIANTS.get(name, ""),
                     "train_steps": trained.get("steps"), **score(run / "last.safetensors", solver, steps, args.num),
                     "jumps": last_jumps(run) if name != "teacher" else {}})  # fmt: skip
        rows_path.write_text(json.dumps(rows, indent=2))
        print(json.dumps(rows[-1]), flush=True)
    write_markdown(rows, speeds, args)
    return 0


def write_markdown(rows: list, speeds: dict, args) -> None:
    reference = next(row for row in rows if row["model"] == "teacher" and row["solver"] == "heun")
    header = ["model", "sampler", "NFE", "FID", "/ teacher", "KID", "precision", "recall", "/ teacher", "accuracy",
              "train steps", "jump 0 / euler 0"]  # fmt: skip
    lines = [
        f"Each student: `fm distill` for {args.budget} of wall time (the steps it makes in that time on 2 idle cores); "
        f"{args.num} samples per row, default guidance; FID/KID/precision/recall in the MNIST classifier's features. "
        "jump 0 / euler 0: RMSE of the one-step jump from t = 1 to 0 against the teacher's accurate solve, and of "
        "one Euler step of the teacher.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        jumps = row.get("jumps") or {}
        jump = f"{jumps['jump_0']:.3f} / {jumps['euler_0']:.3f}" if "jump_0" in jumps else "-"
        lines.append(
            f"| {row['model']} | {row['solver']} {row['steps']} | {row['nfe']} | {row['fid']:.1f} | "
            f"{row['fid'] / reference['fid']:.2f}x | {row['kid']:.2f} | {row['precision']:.2f} | {row['recall']:.2f} | "
            f"{row['recall'] / reference['recall']:.2f}x | {row['accuracy']:.3f} | {row.get('train_steps') or '-'} | "
            f"{jump} |"
        )
    (args.out / "one_step.md").write_text("\n".join(lines) + "\n")
    (args.out / "one_step.json").write_text(json.dumps({"rows": rows, "speeds": speeds}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
