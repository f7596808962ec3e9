"""Guidance settings side by side on one model: the table the README shows, from fm eval's own scores.

    FM_DATA_DIR=/path/to/mnist python bench/guidance.py runs/demo --data mnist --num 1000 \\
        --rows "1;2;2@0.2,0.8;3@0.2,0.8;2+guide;tuned" --out bench/measured/guidance_demo.json
    python bench/guidance.py runs/shapes32 --shapes runs/shapes32data --rows "1;2;tuned" --out ...

Every row samples the same noise (seed 0, equal per class) with the checkpoint's default sampler and is scored
by fm eval's extractor against the test split: FID, precision, recall, class accuracy, with the NFE and the
network passes each sample cost. A row is CFG[@LO,HI][+GUIDE]: the scale, the interval (t = 1 noise) and the
guide (a checkpoint path, or "guide" for the run's guide.safetensors, or "step-N" for its step-N checkpoint; a
":same" suffix takes its velocity for the sample's class, else its unconditional velocity);
"tuned" is the setting fm tune --guidance stored beside the checkpoint. --shapes FOLDER registers a procedural
folder's train/ and test/ (bench/procedural.py) as the data set "shapes-folder", as bench/folder_quality.py does.
"""

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_row(text: str, run: Path) -> dict:
    """'2@0.2,0.8+guide' -> SamplingOptions fields (cfg, guidance_interval, guide); 'tuned' -> {} (the stored)."""
    if text == "tuned":
        return {}
    text, _, guide = text.partition("+")
    guide, _, label = guide.partition(":")  # "+guide:same": the guide's velocity for the same class
    scale, _, interval = text.partition("@")
    if guide in ("guide",) or guide.startswith("step-"):
        guide = str(run / (f"{guide}.safetensors" if guide.startswith("step-") else "guide.safetensors"))
    return {"cfg": float(scale), "guidance_interval": interval or "full", "guide": guide or "none",
            "guide_label": label or "null"}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder (its last.safetensors is scored)")
    parser.add_argument("--data", default=None, help="data set to score against (default: the checkpoint's)")
    parser.add_argument(
        "--shapes", type=Path, default=None, help="a procedural folder (train/, test/) to score against"
    )
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--rows", default="1;2;tuned", help='";"-separated rows, e.g. "1;2;2@0.2,0.8;2+guide"')
    parser.add_argument("--out", type=Path, required=True, help="JSON file the table is written to (and .md beside)")
    args = parser.parse_args()

    from fmcli.eval.run import EvalOptions, prepare
    from fmcli.sampling.options import SamplingOptions
    from fmcli.sampling.stored_guidance import GuidanceSetting

    data = args.data
    if args.shapes is not None:
        from demo_search import register_shapes

        data = register_shapes(args.shapes, 32)
    options = EvalOptions(num_samples=args.num, metrics=("fid", "pr"), data=data, extractor="classifier")
    ctx = prepare(args.run, options, None)
    rows = []
    for text in args.rows.split(";"):
        started = time.perf_counter()
        row = ctx.row(replace(SamplingOptions(seed=0), **parse_row(text, args.run)))
        setting = GuidanceSetting(
            row["cfg"], row["interval"] and tuple(row["interval"]), row["guide"], row["guide_label"]
        )
        row |= {"row": text, "guidance": setting.describe(), "wall_seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(
            f"{text:>24}: {setting.describe():45} NFE {row['nfe']:3} passes {row['passes']:3}  FID {row['fid']:6.2f}"
            f"  recall {row['recall']:.3f}  precision {row['precision']:.3f}  accuracy {row['accuracy']}",
            flush=True,
        )
    report = {"run": str(args.run), "data": ctx.data.name, "num_samples": args.num, "seed": 0, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    lines = [
        "| guidance | NFE | network passes | FID | recall | precision | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = row["guidance"] + (" (tuned)" if row["row"] == "tuned" else "")
        lines.append(f"| {name} | {row['nfe']} | {row['passes']} | {row['fid']:.1f} | {row['recall']:.3f} | "
                     f"{row['precision']:.3f} | {row['accuracy']:.3f} |")  # fmt: skip
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
