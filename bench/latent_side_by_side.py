"""Pixel or latent at 128 px: three `fm train` runs at the same wall time, side by side (README "Pixel or latent").

Each run is bench/folder_quality.py on the procedural coloured shapes (5,000 train, 1,000 test images, 5 classes),
trained alone on the machine with `--max-time 20m`, exactly as a user types it, then scored by fm eval against the
test split at the run's own size (heun 20, the classifier extractor trained on that size's training images):

    python bench/folder_quality.py --size 64  --budget 20m --phase train --name pixel64  --out bench/results/side128
    python bench/folder_quality.py --size 128 --budget 20m --phase train --name pixel128 --out bench/results/side128 \
        -- --autoencoder none
    python bench/folder_quality.py --size 128 --budget 20m --phase train --name latent128 --out bench/results/side128
    python bench/folder_quality.py --size SIZE --phase score --num 250 --name NAME --out bench/results/side128
    python bench/latent_side_by_side.py bench/results/side128 --ceiling  # the autoencoder's reconstructions
    python bench/latent_side_by_side.py bench/results/side128 --sampling # fm sample timed, alone on the machine
    python bench/latent_side_by_side.py bench/results/side128            # this script: the table

(latent128 is fm's default at 128 px on a CPU: it trains the built-in autoencoder for a quarter of the budget,
encodes the folder, and trains the flow on the latents in the rest.) This script reads results.json and the runs'
config.json and metrics.jsonl, and prints the README table: FID and conditional accuracy without guidance and at
fm sample's default guidance, the training images/s of the flow (and its steps), and sampling images/s. With
--ceiling it first scores the latent run's autoencoder (fm autoencoder eval on the 1,000 test images, same
classifier features): the FID of its reconstructions is the best a latent model decoded by it can reach. With
--sampling it first times `fm sample RUN --num 25 --json` of each run as a user runs it (a fresh process, heun 20 at
the default guidance, one class, decoding and the PNG included), twice, alone on the machine: images/s are 25 over
the solve's seconds (decoding included) of the faster try; the wall time of the whole process is kept beside it.
The sampling speeds fm eval reports while scoring are not used (other work may share the machine then).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ORDER = ("pixel64", "pixel128", "latent128")


def training_speed(run: Path) -> float | None:
    """Median images/s of the flow's logged training windows."""
    metrics = run / "metrics.jsonl"
    if not metrics.exists():
        return None
    rates = [json.loads(line).get("images_per_s") for line in metrics.read_text().splitlines() if line.strip()]
    rates = [rate for rate in rates if rate]
    return statistics.median(rates) if rates else None


def row(name: str, entry: dict, run: Path) -> str:
    config = json.loads((run / "config.json").read_text())
    space = "latent" if config.get("autoencoder", "none") not in ("none", "auto") else "pixels"
    unguided, guided = entry.get("unguided", {}), entry.get("guided", {})
    speed = training_speed(run)
    sampling = entry.get("sampling", {}).get("images_per_s")
    cells = [
        name, space, f"{entry.get('train_seconds', float('nan')):.0f} s", f"{config['steps']:,}",
        f"{speed:.0f}" if speed else "-",
        f"{unguided.get('fid', float('nan')):.1f}", f"{unguided.get('accuracy', float('nan')):.3f}",
        f"{guided.get('fid', float('nan')):.1f}", f"{guided.get('accuracy', float('nan')):.3f}",
        f"{sampling:.1f}" if sampling else "-",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def ceiling(out: Path) -> dict:
    """fm autoencoder eval of the latent run's autoencoder on the test split, in the classifier's features."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from demo_search import register_shapes

    from fmcli.eval.autoencoder import AutoencoderEvalOptions, evaluate_autoencoder

    data = register_shapes(out / "shapes128", 128)
    options = AutoencoderEvalOptions(data=data, extractor="classifier")
    return evaluate_autoencoder(out / "runs" / "latent128" / "autoencoder", options)


def sampling_speed(run: Path, num: int = 25, tries: int = 2) -> dict:
    """`fm sample RUN --num NUM` in fresh processes: images/s of the solve (decoding included) and wall seconds."""
    found = []
    for attempt in range(tries):
        out = run.parent.parent / f"sampled-{run.name}-{attempt}.png"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "fmcli", "sample", str(run), "--class", "0", "--num", str(num),
                               "--out", str(out), "--json"], capture_output=True, text=True)  # fmt: skip
        if done.returncode:
            raise SystemExit(f"fm sample {run} failed:\n{done.stderr[-2000:]}")
        report = json.loads(done.stdout[done.stdout.find("{") :])
        found.append({"solve_seconds": report["seconds"], "wall_seconds": round(time.perf_counter() - start, 2)})
    best = min(found, key=lambda item: item["solve_seconds"])
    return {"num": num, "tries": found, "images_per_s": round(num / best["solve_seconds"], 2)} | best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the --out of the folder_quality.py runs")
    parser.add_argument("--ceiling", action="store_true", help="score the latent run's autoencoder first")
    parser.add_argument("--sampling", action="store_true", help="time fm sample of each run first (alone)")
    args = parser.parse_args()
    results = json.loads((args.out / "results.json").read_text())
    if args.ceiling:
        results["latent128"]["reconstruction"] = ceiling(args.out)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    if args.sampling:
        for name in [n for n in ORDER if n in results]:
            results[name]["sampling"] = sampling_speed(args.out / "runs" / name)
            print(f"{name}: {results[name]['sampling']}")
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    reconstruction = results.get("latent128", {}).get("reconstruction")
    if reconstruction:
        print(f"autoencoder of latent128: PSNR {reconstruction['psnr']['mean']:.2f} dB, reconstruction FID "
              f"{reconstruction['fid']['value']:.1f} ({reconstruction['num_images']} test images)\n")  # fmt: skip
    print("| run | space | wall time | flow steps | flow train img/s | FID cfg 1 | accuracy cfg 1 | FID guided | "
          "accuracy guided | sampling img/s (guided, heun 20) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in [n for n in ORDER if n in results] + [n for n in results if n not in ORDER]:
        print(row(name, results[name], args.out / "runs" / name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
