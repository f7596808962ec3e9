"""fm on a machine that is doing something else too (issue 30's table), and what sampling holds in memory.

    python bench/busy_machine.py --out DIR [--baseline CHECKOUT] [--phase speed|memory|all] [--steps 200]
                                 [--repeat N] [--timeout SECONDS]

speed: the wall time a user waits for `fm train mnist-mini --steps N` and for `fm sample` of 64 digits (heun 20,
--class 6, from a checkpoint this script trains first), each
    alone;
    beside one busy Python thread (`python -c 'while 1: pass'`), fm choosing its threads; and with the user's
    override OMP_NUM_THREADS=1;
    beside a second copy of the same command started at the same moment (each one's time);
and, with --baseline (a checkout of an earlier fm, run from the same venv with PYTHONPATH), the same rows for it:
alone (fm must be no slower) and beside the busy thread / a second copy (fm 0.2 set no thread count).
A run longer than --timeout is stopped and reported as "> timeout". --repeat runs every case N times: how much
a busy machine costs depends on where the scheduler puts the threads, and varies from run to run.

memory: `fm sample --class all --num 500` of a 128 px model (the 128 px CPU preset, 1 training step: the cost of
a sample does not depend on the weights), peak RSS and seconds, with the batch fm chooses against --batch-size
500 (fm 0.2's fixed default), at --cfg 1 and at the default guidance; and a 256 px model at the default guidance
with the batch fm chooses. heun 2 steps (euler 1 at 256 px): the peak is per solver call, the step count only
multiplies the time.

Every program starts in its own session (a browser, a second terminal), which the kernel's autogroup
scheduling treats as a group of its own; --same-session starts them all in this script's session.
Time alone: anything else running poisons the figures. Writes busy_machine.json and busy_machine.md to --out.
"""

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAME_SESSION = [False]  # --same-session
FM = [sys.executable, "-m", "fmcli"]
BUSY = [sys.executable, "-c", "while 1: pass"]
PEAK = (  # runs a command and prints its peak RSS (the max over this wrapper's children: the one command)
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(done.returncode)"
)


def environment(baseline: Path | None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PYTHONPATH")}
    if baseline is not None:
        env["PYTHONPATH"] = str(baseline)
    return env | {"FM_PROGRESS": "0"} | extra


def timed(commands: list[list[str]], env: dict, timeout: float, beside: list[str] | None = None) -> list[float | None]:
    """Start ``commands`` together (and ``beside`` first, killed at the end); each one's wall seconds (None: it
    ran past ``timeout`` and was stopped)."""
    # Each program in its own session, as a browser or a second terminal's run would be: with the kernel's
    # autogroup scheduling (on by default on desktop Linux) a session shares the CPUs with other sessions as
    # a whole, which is where torch's waiting threads collapse. --same-session measures them as one group.
    own_session = not SAME_SESSION[0]
    neighbour = subprocess.Popen(beside, start_new_session=own_session) if beside else None
    try:
        if neighbour:
            time.sleep(2.0)  # the neighbour is running before fm starts, as a browser would be
        start = time.perf_counter()
        running = [
            subprocess.Popen(
                c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=own_session
            )
            for c in commands
        ]
        seconds: list[float | None] = [None] * len(running)
        while any(s is None for s in seconds) and time.perf_counter() - start < timeout:
            for i, process in enumerate(running):
                if seconds[i] is None and process.poll() is not None:
                    if process.returncode:
                        raise SystemExit(f"{' '.join(commands[i])} failed: {process.stderr.read()[-600:]}")
                    seconds[i] = time.perf_counter() - start
            time.sleep(0.05)
        for process in running:
            if process.poll() is None:
                process.kill()
                process.wait()
        return seconds
    finally:
        if neighbour:
            neighbour.kill()
            neighbour.wait()


def speed_rows(args: argparse.Namespace, work: Path) -> list[dict]:
    checkpoint = work / "demo"
    subprocess.run([*FM, "train", "mnist-mini", "--steps", "50", "--out", str(checkpoint), "--sample-every", "0"],
                   env=environment(None), check=True, capture_output=True)  # fmt: skip
    versions = [("fm", None)] + ([("fm 0.2 (baseline)", args.baseline)] if args.baseline else [])
    rows, counter = [], itertools.count()
    for task in ("train", "sample"):
        for version, checkout in versions:

            def command(n: int, task=task) -> list[str]:
                if task == "train":
                    out = work / f"train-{n}"
                    return [*FM, "train", "mnist-mini", "--steps", str(args.steps), "--out", str(out),
                            "--sample-every", "0"]  # fmt: skip
                return [*FM, "sample", str(checkpoint), "--class", "6", "--num", "64", "--solver", "heun", "--steps",
                        "20", "--out", str(work / f"six-{n}.png")]  # fmt: skip

            env = environment(checkout)
            cases = [("alone", env, 1, None)]
            cases += [("one busy thread beside", env, 1, BUSY)]
            if checkout is None:
                cases += [("one busy thread beside, OMP_NUM_THREADS=1", env | {"OMP_NUM_THREADS": "1"}, 1, BUSY)]
            cases += [("a second copy beside", env, 2, None)]
            alone = None
            for case, case_env, copies, beside in cases:
                for _ in range(args.repeat):  # the scheduler's luck varies from run to run: each run is a row
                    seconds = timed([command(next(counter)) for _ in range(copies)], case_env, args.timeout, beside)
                    alone = seconds[0] if case == "alone" and alone is None else alone
                    rows.append({"task": task, "version": version, "case": case, "seconds": seconds,
                                 "ratio": [None if s is None else round(s / alone, 2) for s in seconds]})  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def peak(command: list[str], env: dict, timeout: float) -> dict:
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", PEAK, *command], env=env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"seconds": None, "peak_rss_gb": None, "killed": False, "timeout": True}
    seconds = time.perf_counter() - start
    killed = done.returncode != 0
    rss = int(done.stderr.strip().splitlines()[-1]) * 1024 / 1e9
    summary = json.loads(done.stdout) if not killed else {}
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(rss, 2), "killed": killed,
            "batch_size": summary.get("batch_size"), "nfe": summary.get("nfe")}  # fmt: skip


def memory_rows(args: argparse.Namespace, work: Path) -> list[dict]:
    rows = []
    env = environment(None)
    for size in (128, 256):
        folder = work / f"shapes{size}"
        subprocess.run([sys.executable, str(HERE / "procedural.py"), str(folder), "--train", "20", "--test", "5",
                        "--size", str(size)], check=True, capture_output=True)  # fmt: skip
        run = work / f"model{size}"
        subprocess.run([*FM, "train", str(folder / "train"), "--image-size", str(size), "--steps", "1", "--out",
                        str(run), "--sample-every", "0"], env=env, check=True, capture_output=True)  # fmt: skip
        solver = ["--solver", "heun", "--steps", "2"] if size == 128 else ["--solver", "euler", "--steps", "1"]
        cases = [("chosen", [], "1"), ("500 (fm 0.2)", ["--batch-size", "500"], "1"), ("chosen", [], None)]
        for batch, flags, cfg in cases if size == 128 else cases[2:]:
            command = [*FM, "sample", str(run), "--class", "all", "--num", "500", *solver, *flags,
                       "--out", str(work / f"s{size}.npz"), "--json"] + (["--cfg", cfg] if cfg else [])  # fmt: skip
            row = {"size": size, "batch": batch, "cfg": cfg or "default (2)", **peak(command, env, args.timeout)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = []
    if result.get("speed"):
        lines += ["| task | version | what runs beside it | seconds | × alone |", "|---|---|---|---|---|"]
        for row in result["speed"]:
            seconds = ", ".join("> timeout" if s is None else f"{s:.1f}" for s in row["seconds"])
            ratio = ", ".join("-" if r is None else f"{r:.2f}" for r in row["ratio"])
            lines.append(f"| {row['task']} | {row['version']} | {row['case']} | {seconds} | {ratio} |")
    if result.get("memory"):
        lines += ["", "| size | batch | cfg | batch used | peak RSS (GB) | seconds |", "|---|---|---|---|---|---|"]
        for row in result["memory"]:
            used = "killed" if row["killed"] else row.get("batch_size")
            lines.append(f"| {row['size']} px | {row['batch']} | {row['cfg']} | {used} | {row['peak_rss_gb']} | "
                         f"{row['seconds']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier fm to compare with, same venv")
    parser.add_argument("--phase", choices=("speed", "memory", "all"), default="all")
    parser.add_argument("--steps", type=int, default=200, help="fm train --steps")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a run is stopped")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case (ratios: to the first alone run)")
    parser.add_argument("--same-session", action="store_true", help="start everything in this script's session")
    args = parser.parse_args()
    if args.steps < 1 or args.timeout <= 0 or args.repeat < 1:
        parser.error("--steps, --timeout and --repeat must be positive")
    if args.baseline is not None and not (args.baseline / "fmcli" / "__init__.py").exists():
        parser.error(f"--baseline {args.baseline} is not a checkout of fm (no fmcli/__init__.py)")
    args.out.mkdir(parents=True, exist_ok=True)
    SAME_SESSION[0] = args.same_session
    result = {"cores": len(os.sched_getaffinity(0)), "steps": args.steps, "load_before": os.getloadavg()[0],
              "sessions": "same" if args.same_session else "separate", "repeat": args.repeat}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if args.phase in ("speed", "all"):
            result["speed"] = speed_rows(args, Path(tmp))
        if args.phase in ("memory", "all"):
            result["memory"] = memory_rows(args, Path(tmp))
    result["max_rss_gb_of_children"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
    (args.out / "busy_machine.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "busy_machine.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
