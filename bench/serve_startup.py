"""``fm serve``'s start-up: seconds from starting the process to its first page (HTTP 200 on /), median of N,
and, with --student, the sampling seconds of 16 images at a few-step model's default (meanflow, 4 steps).

    python bench/serve_startup.py runs/demo                                  # first page, median of 5
    python bench/serve_startup.py runs/demo --student runs/student          # + 16 images from the student

Run on an otherwise idle machine: the figure is mostly Python importing Gradio, and a busy CPU stretches it.
Also reported: the CPU seconds the server process had used when its first page answered (from /proc; Linux).
Start-up is one thread, so on an idle machine the wall time is about that figure; on a busy machine it is the
honest part of a stretched wall time. The student's figure is likewise given as wall and CPU seconds.
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def first_page(fm: str, runs: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the server) from the start of ``fm serve`` to its first page."""
    port = free_port()
    start = time.perf_counter()
    server = subprocess.Popen([fm, "serve", runs, "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - start, cpu_seconds(server.pid)
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("fm serve exited") from None
                time.sleep(0.02)
    finally:
        server.terminate()
        server.wait(timeout=60)


def student_seconds(checkpoint: str, repeat: int) -> tuple[list[float], list[float]]:
    """(wall, CPU) seconds of the solve alone (what the page's caption reports) for 16 images at the default."""
    import fmcli

    model = fmcli.load(checkpoint, device="cpu")
    model.sample(16, classes="all")  # warm-up: first calls allocate
    walls, cpus = [], []
    for seed in range(repeat):
        cpu = time.process_time()
        walls.append(model.sample(16, classes="all", seed=seed).seconds)
        cpus.append(time.process_time() - cpu)
    return walls, cpus


def median_and_all(values) -> dict:
    return {"median": statistics.median(values), "all": list(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--student", default=None, help="a few-step checkpoint: time 16 images at its default")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the student (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/serve"))
    args = parser.parse_args()
    fm = shutil.which("fm") or str(Path(sys.executable).with_name("fm"))
    first_page(fm, args.runs)  # warm the file cache
    walls, cpus = zip(*(first_page(fm, args.runs) for _ in range(args.repeat)), strict=True)
    results = {"first_page_wall_s": median_and_all(walls), "first_page_cpu_s": median_and_all(cpus),
               "cpus": os.cpu_count(), "load_average": os.getloadavg()}  # fmt: skip
    print(f"fm serve {args.runs}: first page after {statistics.median(walls):.2f} s wall, "
          f"{statistics.median(cpus):.2f} s CPU (median of {args.repeat}; load {os.getloadavg()[0]:.1f})")  # fmt: skip
    if args.student:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        walls, cpus = student_seconds(args.student, args.repeat)
        results["student_16_images_wall_s"] = median_and_all(walls)
        results["student_16_images_cpu_s"] = median_and_all(cpus)
        print(f"16 images, the student's default sampler: {statistics.median(walls):.3f} s wall, "
              f"{statistics.median(cpus):.3f} s CPU sampling (median of {args.repeat})")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_startup.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
