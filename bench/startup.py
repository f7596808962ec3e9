"""Whole-process start-up times of the fm command, median of N runs, against torch's own import.

    python bench/startup.py                                   # --help, COMMAND --help, a completion request
    python bench/startup.py --checkpoint runs/demo-4step      # + `fm sample CKPT --steps 1 --num 64`

A completion request is what the shell runs on every TAB (Typer's protocol, as set up by
`fm --install-completion`), here completing the solver names after `fm sample --solver `.
Run on an otherwise idle machine. Writes startup.json and startup.md to --out.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def seconds(command: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-400:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--checkpoint", default=None, help="a few-step checkpoint to time `fm sample --steps 1` on")
    parser.add_argument("--out", type=Path, default=Path("bench/results/startup"))
    args = parser.parse_args()
    fm = shutil.which("fm") or str(Path(sys.executable).with_name("fm"))
    completion = dict(os.environ, _FM_COMPLETE="complete_bash", COMP_WORDS="fm sample --solver ", COMP_CWORD="3")
    plans = {
        'python -c "import torch"': ([sys.executable, "-c", "import torch"], None),
        "fm --help": ([fm, "--help"], None),
        "fm train --help": ([fm, "train", "--help"], None),
        "completion: fm sample --solver <TAB>": ([fm], completion),
    }
    if args.checkpoint:
        out_png = Path(tempfile.mkdtemp()) / "six.png"
        plans["fm sample CKPT --class 6 --steps 1 --num 64"] = (
            [fm, "sample", args.checkpoint, "--class", "6", "--steps", "1", "--num", "64", "--out", str(out_png)],
            None,
        )
    results = {}
    for name, (command, env) in plans.items():
        seconds(command, env)  # warm the file cache
        times = [seconds(command, env) for _ in range(args.repeat)]
        results[name] = {"median_s": statistics.median(times), "times_s": times}
        print(f"{name:48s} {results[name]['median_s']:.2f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps({"repeat": args.repeat, "results": results}, indent=2))
    lines = [f"| command (whole process, median of {args.repeat}) | seconds |", "|---|---|"]
    lines += [f"| `{name}` | {entry['median_s']:.2f} |" for name, entry in results.items()]
    (args.out / "startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
