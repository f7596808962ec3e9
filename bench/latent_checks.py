"""Where a latent run's misses come from (docs/measured/latent.md): its guidance settings and its learning curve.

    python bench/latent_checks.py guidance latent128            # cfg 1-4, the interval [0.2, 0.8], the run's guide
    python bench/latent_checks.py guidance latent128-lognorm --short   # cfg 1 and 2 only
    python bench/latent_checks.py curve latent128                # its step checkpoints at cfg 1 and 2

Each setting is fm eval of 250 samples (heun 20, seed 0) against the 1,000 test pictures of the folder
bench/folder_quality.py wrote (OUT/shapes128), in the classifier extractor's features: FID, recall and precision
(k = 3) and class accuracy. Rows are appended to OUT/guidance_RUN.jsonl or OUT/curve_RUN.jsonl. Not timed.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_search import register_shapes  # noqa: E402


def settings(run: Path, short: bool) -> list[dict]:
    plain = [{"cfg": 1.0}, {"cfg": 2.0}]
    if short:
        return plain
    guide = str(run / "guide.safetensors")
    return plain + [{"cfg": 3.0}, {"cfg": 4.0}, {"cfg": 2.0, "guidance_interval": (0.2, 0.8)},
                    {"cfg": 3.0, "guidance_interval": (0.2, 0.8)}, {"cfg": 2.0, "guide": guide},
                    {"cfg": 3.0, "guide": guide}]  # fmt: skip


def scored(checkpoint: Path, data: str, setting: dict) -> dict:
    from fmcli.eval.run import EvalOptions, evaluate_checkpoint
    from fmcli.sampling.options import SamplingOptions

    sampling = SamplingOptions(solver="heun", steps=20, seed=0, **setting)
    options = EvalOptions(num_samples=250, metrics=("fid", "kid", "pr"), data=data, kid_subsets=20,
                          sampling=sampling, extractor="classifier")  # fmt: skip
    report = evaluate_checkpoint(checkpoint, options)
    metrics = report["metrics"]
    return {"fid": metrics["fid"]["value"], "recall": metrics["recall"]["value"],
            "precision": metrics["precision"]["value"], "accuracy": report["conditional"]["accuracy"],
            "per_class": report["conditional"]["per_class"]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("guidance", "curve"))
    parser.add_argument("run", help="a run's name under OUT/runs")
    parser.add_argument("--out", type=Path, default=Path("bench/results/side128"))
    parser.add_argument("--short", action="store_true", help="guidance: cfg 1 and 2 only")
    args = parser.parse_args()
    run = args.out / "runs" / args.run
    data = register_shapes(args.out / "shapes128", 128)
    if args.what == "guidance":
        jobs = [(run / "last.safetensors", setting) for setting in settings(run, args.short)]
    else:
        steps = sorted(run.glob("step-*.safetensors"))[:-1]  # the last one is last.safetensors
        jobs = [(path, {"cfg": cfg}) for path in steps for cfg in (1.0, 2.0)]
    for checkpoint, setting in jobs:
        row = {"checkpoint": checkpoint.stem, "setting": {k: ("guide.safetensors" if k == "guide" else v)
                                                          for k, v in setting.items()}}  # fmt: skip
        row |= scored(checkpoint, data, setting)
        print(json.dumps(row), flush=True)
        with open(args.out / f"{args.what}_{args.run}.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
