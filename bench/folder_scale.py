"""Image folders at scale: decoding rate (serial, threads, processes), first load (decode into the
cache) against later loads (map the cache), random batches read from the map, and training on it.

    python bench/folder_scale.py --num 200 --out /tmp/fs                    # smoke run
    python bench/folder_scale.py --num 100000 --classes 10 --image-size 64 --train-steps 30 --out bench/results

With --train-steps, `fm train FOLDER --image-size 64` runs three times as a user would, each in its own
process: on the cached folder (its second run: the cache exists), on the same folder with --no-cache
(today's in-memory path: every image decoded into RAM first), and on a 1,000-image folder (the baseline
memory of training itself). Each reports the process's peak resident memory from the OS (wait4's
ru_maxrss), the seconds until training starts, and training images/s (median over log windows).

The images are generated here (no download): N RGB JPEGs of --pixels x --pixels in K class
folders, smooth colour fields plus noise so the JPEG decoder has real work. They are kept in
--images (default: a folder under --out) and reused by later runs with the same N, K and size.
Every figure is the best of --repeat runs, since other work on the machine only slows a run down.
The cache goes to a fresh folder under --out, never to the user's own cache.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmcli import __version__  # noqa: E402
from fmcli.data import cache, decode  # noqa: E402
from fmcli.data.base import LoadOptions  # noqa: E402
from fmcli.data.folder import load_folder  # noqa: E402


def generate(folder: Path, num: int, classes: int, pixels: int, seed: int = 0) -> list[Path]:
    """``num`` JPEGs, round-robin over ``classes`` sub-folders; existing files are kept."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:pixels, 0:pixels] / pixels
    paths = []
    for i in range(num):
        path = folder / f"class{i % classes:03d}" / f"{i:07d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.random(3) * 6 + 1
        image = np.stack([np.sin(a * x + i) * 110 + 128, np.cos(b * y) * 110 + 128, (x * y * c % 1) * 255], -1)
        image += rng.normal(0, 8, image.shape)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return paths


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def train_process(folder: Path, run: Path, steps: int, *extra: str) -> dict:
    """`fm train FOLDER` in its own process: peak RSS (OS), seconds to the first step, training images/s."""
    shutil.rmtree(run, ignore_errors=True)
    command = [sys.executable, "-m", "fmcli", "train", str(folder), "--image-size", "64", "--steps", str(steps),
               "--batch-size", "64", "--log-every", "5", "--sample-every", "0", "--out", str(run), *extra]  # fmt: skip
    env = {**os.environ, "FM_PROGRESS": "0"}
    start = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    started = None
    for line in process.stderr:
        if started is None and line.startswith("training on"):
            started = time.perf_counter() - start
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"fm train failed ({status}): {' '.join(command)}")
    windows = [json.loads(line)["images_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024), "seconds_to_first_step": round(started, 1),
            "images_per_s": round(statistics.median(windows[1:] or windows), 1), "seconds": round(
                time.perf_counter() - start, 1)}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=200, help="images to generate")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--pixels", type=int, default=96, help="side of the generated JPEGs")
    parser.add_argument("--image-size", type=int, default=64, help="what the loader resizes and crops to")
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: the CPUs, up to 8)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256, help="rows per random batch read from the map")
    parser.add_argument("--images", default=None, help="where the generated images live (default: under --out)")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--train-steps", type=int, default=0, help="also train on the folder (see above); 0: no")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = Path(args.images or out / f"folder-scale-{args.num}x{args.pixels}-k{args.classes}")
    paths = generate(images, args.num, args.classes, args.pixels)
    for path in paths:  # warm the page cache: the figures are about decoding, not the disk
        path.read_bytes()
    os.environ["FM_CACHE_DIR"] = str(out / "folder-scale-cache")
    workers = args.workers or min(cache.MAX_WORKERS, cache.available_cpus())
    size = args.image_size

    rows = []

    def record(what: str, seconds: float, images_count: int, **extra) -> None:
        rows.append(
            {"what": what, "seconds": round(seconds, 4), "images_per_s": round(images_count / seconds, 1), **extra}
        )
        print(f"{what:34s} {seconds:8.3f} s  {images_count / seconds:9.0f} images/s", flush=True)

    for how in ("serial", "threads", "processes"):

        def decode_all(how=how):
            return sum(1 for _ in cache.decode_rows(paths, size, how=how, workers=workers))

        seconds = best(decode_all, args.repeat)
        record(f"decode, {how}" + ("" if how == "serial" else f" x{workers}"), seconds, len(paths), how=how)

    record(
        "load, in memory (cache=False)",
        best(lambda: load_folder(images, LoadOptions(image_size=size, cache=False)), args.repeat),
        len(paths),
    )

    def first_load() -> None:
        shutil.rmtree(cache.cache_dir(), ignore_errors=True)
        data = load_folder(images, LoadOptions(image_size=size))
        assert data.info["cache"]["status"] == "built", data.info

    record("load, first (decode into cache)", best(first_load, args.repeat), len(paths))
    data = load_folder(images, LoadOptions(image_size=size))
    record(
        "load, cached (map)",
        best(lambda: load_folder(images, LoadOptions(image_size=size)), args.repeat),
        len(paths),
        cache_bytes=Path(data.info["cache"]["path"]).stat().st_size,
    )

    import torch

    generator = torch.Generator().manual_seed(0)
    batch = min(args.batch_size, len(data))
    indices = [torch.randint(len(data), (batch,), generator=generator) for _ in range(20)]
    seconds = best(lambda: [data.data[index] for index in indices], args.repeat) / len(indices)
    record(f"random batch of {batch} from the map", seconds, batch)

    training = {}
    if args.train_steps:
        small = generate(Path(str(images) + "-first1000"), 1000, args.classes, args.pixels)[0].parents[1]
        runs = out / "folder-scale-runs"
        training = {
            f"cached ({args.num:,} images, second run)": train_process(images, runs / "cached", args.train_steps),
            f"in memory ({args.num:,} images, --no-cache)": train_process(
                images, runs / "memory", args.train_steps, "--no-cache"
            ),  # fmt: skip
            "cached (1,000 images: the baseline)": train_process(small, runs / "small", args.train_steps),
        }
        for what, row in training.items():
            print(f"{what:44s} {row}", flush=True)

    header = {
        "num": args.num,
        "classes": args.classes,
        "pixels": args.pixels,
        "image_size": size,
        "workers": workers,
        "cpus": cache.available_cpus(),
        "repeat": args.repeat,
        "fmcli": __version__,
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "machine": platform.machine(),
        "decoder": decode.DECODER_VERSION,
    }
    (out / "folder_scale.json").write_text(json.dumps({"header": header, "rows": rows, "training": training},
                                                      indent=2))  # fmt: skip
    lines = [
        f"# Image folder at scale: {args.num} JPEGs of {args.pixels} px -> {size} px, {workers} workers",
        "",
        "| what | seconds | images/s |",
        "|---|---:|---:|",
    ]
    lines += [f"| {row['what']} | {row['seconds']:.3f} | {row['images_per_s']:.0f} |" for row in rows]
    if training:
        lines += ["", f"`fm train FOLDER --image-size {size} --steps {args.train_steps} --batch-size 64`, one process "
                  "each:", "", "| run | peak RSS (MB) | seconds to the first step | training images/s |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {what} | {row['peak_rss_mb']} | {row['seconds_to_first_step']} | {row['images_per_s']:.0f} |"
                  for what, row in training.items()]  # fmt: skip
    (out / "folder_scale.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
