"""Which built-in autoencoder? Train candidates (downsampling factor x latent channels) for an equal wall-clock
budget each on procedural coloured shapes, then score each on the held-out tenth: PSNR, FID of reconstructions
(the ``classifier`` extractor, trained on the folder's classes, since Inception needs a download), and encode +
decode images/s on this machine.

    python bench/autoencoder_choice.py --out /tmp/ae_choice --size 128 --count 1500 --budget 90
    python bench/autoencoder_choice.py --out /tmp/ae_choice --candidates 4x4,8x4 --budget 20 --no-fid   # smoke

The folder is drawn by ``bench/procedural.py`` (five shape classes, random colours) once under OUT/data. Each
candidate trains with ``fm autoencoder train``'s own code and options (``--max-time BUDGET``), so what it
measures is what a user gets for that much CPU. Prints a table and writes OUT/autoencoder_choice.json.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procedural import write_folder  # noqa: E402

from fmcli.eval.autoencoder import AutoencoderEvalOptions, evaluate_autoencoder  # noqa: E402
from fmcli.training.autoencoder import train_autoencoder  # noqa: E402


def candidate(text: str) -> tuple[int, int]:
    factor, _, channels = text.partition("x")
    return int(factor), int(channels)


def run_one(args, data: Path, factor: int, channels: int) -> dict:
    out = args.out / f"f{factor}-c{channels}"
    options = {"data": str(data), "image_size": args.size, "factor": factor, "latent_channels": channels,
               "width": args.width, "max_time": float(args.budget), "batch_size": args.batch_size,
               "device": "cpu", "checkpoint_every": 10**9, "log_every": 10**9}  # fmt: skip
    began = time.perf_counter()
    result = train_autoencoder(options, out=str(out))
    trained_s = time.perf_counter() - began
    evaluated = AutoencoderEvalOptions(fid=args.fid, extractor="classifier", device="cpu", batch_size=16)
    report = evaluate_autoencoder(str(out), evaluated)
    return {
        "factor": factor,
        "latent_channels": channels,
        "latent_shape": report["latent_shape"],
        "steps": result.step,
        "train_seconds": round(trained_s, 1),
        "loss": result.loss,
        "psnr_db": round(report["psnr"]["mean"], 2),
        "fid": round(report["fid"]["value"], 3) if "fid" in report else None,
        "encode_images_per_s": round(report["encode_images_per_s"], 1),
        "decode_images_per_s": round(report["decode_images_per_s"], 1),
        "held_out_images": report["num_images"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--count", type=int, default=1500, help="images in the folder (a tenth held out)")
    parser.add_argument("--budget", type=float, default=90, help="seconds of training per candidate")
    parser.add_argument("--candidates", default="4x3,4x4,4x8,8x3,8x4,8x8", help="FACTORxCHANNELS,...")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fid", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    data = args.out / "data"
    if not data.exists():
        write_folder(data, args.count, args.size, seed=0)
    rows = []
    for factor, channels in map(candidate, args.candidates.split(",")):
        rows.append(run_one(args, data, factor, channels))
        print(json.dumps(rows[-1]), flush=True)
    summary = {"machine": platform.processor() or platform.machine(), "size": args.size, "count": args.count,
               "budget_s": args.budget, "batch_size": args.batch_size, "width": args.width, "rows": rows}  # fmt: skip
    (args.out / "autoencoder_choice.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| factor | latent ch | latent | steps | PSNR dB | FID (classifier) | encode img/s | decode img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['factor']} | {r['latent_channels']} | {r['latent_shape']} | {r['steps']} | {r['psnr_db']} | "
              f"{r['fid']} | {r['encode_images_per_s']} | {r['decode_images_per_s']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
