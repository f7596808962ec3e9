"""``fm serve``'s start-up: seconds from starting the process to its first page (HTTP 200 on /), median of N,
and, with --student, the sampling seconds of 16 images at a few-step model's default (meanflow, 4 steps).

    python bench/serve_startup.py runs/demo                                  # first page, median of 5
    python bench/serve_startup.py runs/demo --student runs/student          # + 16 images from the student

Run on an otherwise idle machine: the figure is mostly Python importing Gradio, and a busy CPU stretches it.
Writes serve_startup.json to --out.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_page(fm: str, runs: str) -> float:
    port = free_port()
    start = time.perf_counter()
    server = subprocess.Popen([fm, "serve", runs, "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - start
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("fm serve exited") from None
                time.sleep(0.02)
    finally:
        server.terminate()
        server.wait(timeout=60)


def student_seconds(checkpoint: str, repeat: int) -> list[float]:
    """Sampling seconds (the solve alone, as the page's caption reports it) of 16 images, the default sampler."""
    import fmcli

    model = fmcli.load(checkpoint, device="cpu")
    model.sample(16, classes="all")  # warm-up: first calls allocate
    return [model.sample(16, classes="all", seed=seed).seconds for seed in range(repeat)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--student", default=None, help="a few-step checkpoint: time 16 images at its default")
    parser.add_argument("--out", type=Path, default=Path("bench/results/serve"))
    args = parser.parse_args()
    fm = shutil.which("fm") or str(Path(sys.executable).with_name("fm"))
    first_page(fm, args.runs)  # warm the file cache
    times = [first_page(fm, args.runs) for _ in range(args.repeat)]
    results = {"first_page_s": {"median": statistics.median(times), "times": times}, "cpus": os.cpu_count()}
    print(f"fm serve {args.runs}: first page after {statistics.median(times):.2f} s (median of {args.repeat})")
    if args.student:
        seconds = student_seconds(args.student, args.repeat)
        results["student_16_images_s"] = {"median": statistics.median(seconds), "times": seconds}
        print(f"16 images, meanflow 4 steps: {statistics.median(seconds):.3f} s sampling (median of {args.repeat})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_startup.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
