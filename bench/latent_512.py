"""What a 512 px latent model costs to sample on this machine: the path runs end to end, timed (issue 29).

    python bench/latent_512.py --out bench/results/latent512

Writes a folder of 512 px pictures (two classes of procedural shapes, 16 each), trains the built-in autoencoder at
fm's 512 px preset (factor 8, 4 latent channels: 64x64 latents) for a few steps, then `fm train FOLDER --image-size
512 --autoencoder AE` for a few steps with fm's default model for those latents (untrained quality: the point is
the path and its cost), then times `fm sample RUN --num 4` as a user runs it (a fresh process: start-up, loading,
the heun 20 solve at the default guidance, decoding, writing the PNG), three times, and reports the median wall time
next to the solve's own seconds. Time it alone on the machine.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 512


def write_folder(root: Path, per_class: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for name in ("square", "disc"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.full((SIZE, SIZE, 3), rng.integers(0, 255, 3), np.uint8)
            y, x = np.mgrid[:SIZE, :SIZE]
            cy, cx, r = rng.integers(150, 360, 2).tolist() + [int(rng.integers(60, 140))]
            inside = (abs(y - cy) < r) & (abs(x - cx) < r) if name == "square" else (y - cy) ** 2 + (x - cx) ** 2 < r**2
            pixels[inside] = rng.integers(0, 255, 3)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


def fm(*args: str) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fmcli", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"fm {' '.join(map(str, args))} failed:\n{done.stderr[-2000:]}")
    output = done.stdout[done.stdout.find("{") :] if "--json" in args else ""
    return (json.loads(output) if output else {}) | {"wall": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/latent512"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from fmcli.training.latent import autoencoder_preset

    preset = autoencoder_preset(SIZE)
    folder = args.out / "pictures"
    if not folder.exists():
        write_folder(folder)
    ae, run = args.out / "ae", args.out / "run"
    if not (ae / "autoencoder.safetensors").exists():
        shape = [
            "--factor",
            preset["factor"],
            "--latent-channels",
            preset["latent_channels"],
            "--width",
            preset["width"],
        ]
        fm("autoencoder", "train", folder, "--image-size", SIZE, *shape, "--steps", 4, "--batch-size", 2, "--out", ae)
    if not (run / "last.safetensors").exists():
        fm("train", folder, "--image-size", SIZE, "--autoencoder", ae, "--steps", 2, "--batch-size", 4,
           "--sample-every", 0, "--out", run)  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    times = []
    for repeat in range(args.repeats):
        result = fm("sample", run, "--class", "square", "--num", 4, "--out", args.out / f"four-{repeat}.png", "--json")
        times.append(result)
        print(f"fm sample --num 4: {result['wall']:.1f} s wall, of which solve and decode {result['seconds']:.1f} s")
    summary = {
        "image_size": SIZE,
        "autoencoder": preset,
        "latent_shape": [preset["latent_channels"], SIZE // preset["factor"], SIZE // preset["factor"]],
        "model": config.get("decisions", {}).get("model"),
        "wall_seconds": [round(t["wall"], 2) for t in times],
        "median_wall_seconds": round(statistics.median(t["wall"] for t in times), 2),
        "solve_and_decode_seconds": [t["seconds"] for t in times],
        "sample_summaries": times,
    }
    (args.out / "latent512.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "sample_summaries"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
