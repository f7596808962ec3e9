"""Few-step generation on the demo: a teacher, its distilled student, and a MeanFlow model from scratch.

    FM_DATA_DIR=/path/to/mnist python bench/few_step.py --out bench/results/few_step

One run, on an otherwise idle machine:
  1. the teacher: `fm train mnist-mini` with its defaults (the README's first command), timed;
  2. the student: `fm distill TEACHER` with its defaults, timed;
  3. `fm train mnist-mini --objective meanflow --max-time T`, T = the teacher's training time;
then every row is scored by fm eval against the real MNIST test split with the same seeds: FID and
KID in the MNIST classifier's features (N samples, equal per class), conditional accuracy with and
without guidance, NFE, sampling images/s. "With guidance" is what `fm sample --class K` gives by
default: cfg 2 for the flow teacher (two evaluations per step), the folded guidance for the
student (cfg 1, one evaluation). Finally the whole `fm sample STUDENT --steps 1 --num 64` process is
timed against `python -c "import torch"`. Writes few_step.json and few_step.md.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def fm(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fmcli", *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def median_seconds(command: list[str], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def score(checkpoint: Path, solver: str, steps: int, cfg: float | None, num: int) -> dict:
    from fmcli.eval.run import EvalOptions, evaluate_checkpoint
    from fmcli.sampling.options import SamplingOptions

    sampling = SamplingOptions(solver=solver, steps=steps, cfg=cfg, seed=0, batch_size=250)
    report = evaluate_checkpoint(checkpoint, EvalOptions(num_samples=num, metrics=("fid", "kid"), data="mnist",
                                                         kid_subsets=50, sampling=sampling))  # fmt: skip
    return {"fid": report["metrics"]["fid"]["value"], "kid": report["metrics"]["kid"]["value"],
            "accuracy": report["conditional"]["accuracy"], "cfg": report["conditional"]["cfg"],
            "nfe": report["sampling"]["nfe"], "images_per_s": report["sampling"]["samples_per_second"]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/few_step"))
    parser.add_argument("--num", type=int, default=2000, help="samples per score (equal per class)")
    parser.add_argument("--teacher", type=Path, default=None, help="an existing teacher run instead of training one")
    args = parser.parse_args()
    from fmcli.cli.memory import keep_freed_memory

    keep_freed_memory()
    args.out.mkdir(parents=True, exist_ok=True)
    teacher, student, scratch = args.teacher or args.out / "teacher", args.out / "student", args.out / "meanflow"
    seconds_path = args.out / "train_seconds.json"
    seconds = json.loads(seconds_path.read_text()) if seconds_path.exists() else {}
    if "teacher" not in seconds and args.teacher is None:
        seconds["teacher"] = fm("train", "mnist-mini", "--out", str(teacher))
    teacher_seconds = seconds.get("teacher") or json.loads((teacher / "metrics.jsonl").read_text().splitlines()[-1])[
        "time"]  # fmt: skip
    if "student" not in seconds:
        seconds["student"] = fm("distill", str(teacher), "--out", str(student))
    if "meanflow" not in seconds:
        seconds["meanflow"] = fm("train", "mnist-mini", "--objective", "meanflow", "--out", str(scratch),
                                 "--max-time", f"{teacher_seconds:.0f}s")  # fmt: skip
    seconds_path.write_text(json.dumps(seconds, indent=2))

    plans = [("teacher", teacher, "heun", 20), ("teacher", teacher, "euler", 1), ("teacher", teacher, "euler", 2),
             ("teacher", teacher, "euler", 4)]  # fmt: skip
    plans += [
        (name, path, "meanflow", k) for name, path in (("student", student), ("meanflow", scratch)) for k in (1, 2, 4)
    ]
    rows_path = args.out / "rows.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else []
    done = {(row["model"], row["solver"], row["steps"]) for row in rows}
    for name, path, solver, steps in plans:
        if (name, solver, steps) in done:
            continue
        guided = score(path / "last.safetensors", solver, steps, None, args.num)  # fm sample's default guidance
        plain = score(path / "last.safetensors", solver, steps, 1.0, args.num) if guided["cfg"] != 1 else None
        rows.append({"model": name, "solver": solver, "steps": steps, "train_seconds": round(seconds.get(name,
                     teacher_seconds), 1), "guided": guided, "unguided": plain})  # fmt: skip
        rows_path.write_text(json.dumps(rows, indent=2))
        print(json.dumps(rows[-1]), flush=True)

    torch_import = median_seconds([sys.executable, "-c", "import torch"])
    one_step = median_seconds([sys.executable, "-m", "fmcli", "sample", str(student / "last.safetensors"), "--class",
                               "6", "--steps", "1", "--num", "64", "--out", str(args.out / "six.png")])  # fmt: skip
    summary = {"rows": rows, "train_seconds": seconds, "num_samples": args.num,
               "process_seconds": {"import torch": torch_import, "fm sample --steps 1 --num 64": one_step}}  # fmt: skip
    (args.out / "few_step.json").write_text(json.dumps(summary, indent=2))
    write_markdown(summary, args.out / "few_step.md")
    return 0


def write_markdown(summary: dict, path: Path) -> None:
    rows = summary["rows"]
    reference = next(row for row in rows if row["model"] == "teacher" and row["solver"] == "heun")
    lines = ["| model | sampler | NFE | FID | FID / teacher | KID | cond. acc. (default guidance) | cond. acc. "
             "(no guidance) | images/s | training |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        guided, plain = row["guided"], row["unguided"]
        ratio = guided["fid"] / reference["guided"]["fid"]
        with_guidance = f"{guided['accuracy']:.3f} (" + (f"cfg {guided['cfg']:g})" if plain else "folded)")
        without = f"{plain['accuracy']:.3f}" if plain else "-"
        lines.append(
            f"| {row['model']} | {row['solver']} {row['steps']} | {guided['nfe']} | {guided['fid']:.1f} | "
            f"{ratio:.2f}x | {guided['kid']:.2f} | {with_guidance} | {without} | {guided['images_per_s']:.0f} | "
            f"{row['train_seconds']:.0f} s |"
        )
    process = summary["process_seconds"]
    lines += ["", f"{summary['num_samples']} samples per row. Whole process, median of 5: `python -c \"import torch\"` "
              f"{process['import torch']:.2f} s; `fm sample STUDENT --steps 1 --num 64` "
              f"{process['fm sample --steps 1 --num 64']:.2f} s."]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
