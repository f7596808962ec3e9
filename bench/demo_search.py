"""Choose a default model by sample quality after the same wall time, not by loss.

    FM_DATA_DIR=/path/to/mnist python bench/demo_search.py --budget 200 --out bench/results/demo_search
    python bench/demo_search.py --rgb --budget 300 --out bench/results/rgb_search

Each candidate is `fm train DATA --max-time BUDGET` with its own options, so every candidate gets the
same wall time on this machine whatever its speed per step, as a user's laptop would give it. Then
`fm eval` scores it without guidance (cfg 1: the model itself; heun 20; N samples, equal per class,
the same seed): FID and KID in the classifier's features, and conditional accuracy (does --class K give
a K?). Results: results.json and results.md, best FID first, with steps reached and images/s.

MNIST mode trains on mnist-mini (the README's first command) and scores against the real MNIST test
split. RGB mode writes a procedural folder of coloured shapes (bench/procedural.py: 5,000 train and
1,000 test images of 32x32 in 5 classes), trains on it as a user would (`fm train FOLDER --image-size
32`) and scores against its test images, registered as a data set for fm eval.
Run on an otherwise idle machine: candidates share nothing but the CPU.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The search started from fm 0.1.0's mnist-mini default; every MNIST candidate is that plus its own options
# (the last value of an option wins), so the table stays reproducible now that the default is the winner.
DEFAULT_0_1_0 = (
    "--base-channels 24 --channel-mults 1,2,2 --res-blocks 1 --attention 7 --batch-size 64 --warmup-steps 50"
)
SMALL = "--base-channels 16 --channel-mults 1,2,4"  # 16/32/64 channels: the winner of round 1's widths
MNIST_CANDIDATES = {  # name -> fm train options (differences from the default of 0.1.0)
    "current default": [],
    "logit-normal t": "--time-sampling logit-normal".split(),
    "no attention": "--attention none".split(),
    "base 32": "--base-channels 32".split(),
    "base 16, mults 1,2,4": SMALL.split(),
    "lr 1e-3": "--lr 1e-3".split(),
    "lr 4e-3": "--lr 4e-3".split(),
    "batch 32": "--batch-size 32 --warmup-steps 100".split(),
    "batch 128": "--batch-size 128 --warmup-steps 25".split(),
    "EMA 0.95": "--ema-decay 0.95".split(),
    "label dropout 0.2": "--label-dropout 0.2".split(),
    # round 2: the best of round 1 together
    "base 16, mults 1,2,4, batch 32": f"{SMALL} --batch-size 32 --warmup-steps 100".split(),
    "current default (again)": [],
    # round 3: around the winner of round 2
    "base 16, mults 1,2,4, batch 16": f"{SMALL} --batch-size 16 --warmup-steps 200".split(),
    "base 16, mults 1,2,4, batch 32, lr 3e-3": f"{SMALL} --batch-size 32 --warmup-steps 100 --lr 3e-3".split(),
    "base 24, mults 1,2,4, batch 32": "--base-channels 24 --channel-mults 1,2,4 --batch-size 32 --warmup-steps 100".split(),  # noqa: E501
}
RGB_CANDIDATES = {  # the generic 32 px preset, and what won on MNIST carried over
    "current default (32, 1,2,2,2, attn 8, batch 128)": [],
    "batch 32": "--batch-size 32 --warmup-steps 100".split(),
    "base 16, mults 1,2,4, batch 32": f"{SMALL} --attention 8 --batch-size 32 --warmup-steps 100".split(),
}


def fm(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmcli", *args], capture_output=True, text=True, env=env)


def register_shapes(folder: Path) -> str:
    """The procedural folder's train/ and test/ as one data set with two splits, for fm eval."""
    from fmcli import hookimpl
    from fmcli.data.folder import load_folder
    from fmcli.plugins import pm
    from fmcli.specs import DatasetSpec

    def load(options):
        data = load_folder(folder / options.split, options)
        data.split = options.split
        return data

    class Shapes:
        @hookimpl
        def fm_register_datasets(self, register):
            register(DatasetSpec(name="shapes", description="procedural shapes", kind="image",
                                 splits=("train", "test"), load=load))  # fmt: skip

    pm.register(Shapes(), name="bench-shapes")
    return "shapes"


def score(run: Path, data: str, num: int, data_dir: str | None) -> dict:
    from fmcli.eval.run import EvalOptions, evaluate_checkpoint
    from fmcli.sampling.options import SamplingOptions

    sampling = SamplingOptions(solver="heun", steps=20, cfg=1.0, seed=0, batch_size=250)
    options = EvalOptions(num_samples=num, metrics=("fid", "kid"), data=data, kid_subsets=20, sampling=sampling,
                          data_dir=Path(data_dir) if data_dir else None)  # fmt: skip
    report = evaluate_checkpoint(run / "last.safetensors", options)
    return {"fid": report["metrics"]["fid"]["value"], "kid": report["metrics"]["kid"]["value"],
            "accuracy": report["conditional"]["accuracy"], "per_class": report["conditional"]["per_class"],
            "classifier_test_accuracy": report["conditional"]["classifier_test_accuracy"]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/demo_search"))
    parser.add_argument("--budget", default="200s", help="wall time of each candidate's fm train")
    parser.add_argument("--num", type=int, default=1000, help="samples per score")
    parser.add_argument("--rgb", action="store_true", help="the procedural RGB folder at 32 px instead of MNIST")
    parser.add_argument("--only", default=None, help="candidate names separated by semicolons")
    parser.add_argument("--data-dir", default=None, help="full MNIST (else $FM_DATA_DIR)")
    args = parser.parse_args()
    from fmcli.cli.memory import keep_freed_memory

    keep_freed_memory()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.rgb:
        folder = args.out / "shapes"
        if not folder.exists():
            subprocess.run([sys.executable, str(Path(__file__).with_name("procedural.py")), str(folder)], check=True)
        train_data, extra, eval_data = str(folder / "train"), ["--image-size", "32", "--no-hflip"], None
        candidates = RGB_CANDIDATES
    else:
        train_data, extra, eval_data, candidates = "mnist-mini", DEFAULT_0_1_0.split(), "mnist", MNIST_CANDIDATES
    if args.only:
        candidates = {name: candidates[name] for name in args.only.split(";")}
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name, options in candidates.items():
        if name in results:
            continue
        run = args.out / "runs" / name.replace(" ", "_").replace(",", "")
        start = time.perf_counter()
        done = fm("train", train_data, *extra, "--max-time", args.budget, "--out", str(run), "--sample-every", "0",
                  *options)  # fmt: skip
        seconds = time.perf_counter() - start
        if done.returncode:
            print(f"{name}: fm train failed: {done.stderr[-500:]}", flush=True)
            continue
        if args.rgb and eval_data is None:
            eval_data = register_shapes(folder)
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        entry = {"options": options, "train_seconds": round(seconds, 1), "steps": metrics[-1]["step"],
                 "images_per_s": round(metrics[-1]["step"] * _batch(run) / metrics[-1]["time"], 1),
                 **score(run, eval_data, args.num, args.data_dir)}  # fmt: skip
        results[name] = entry
        results_path.write_text(json.dumps(results, indent=2))
        print(f"{name}: FID {entry['fid']:.1f}, accuracy {entry['accuracy']:.3f}, {entry['steps']} steps "
              f"in {seconds:.0f} s", flush=True)  # fmt: skip
    write_markdown(results, args)
    return 0


def _batch(run: Path) -> int:
    return json.loads((run / "config.json").read_text())["batch_size"]


def write_markdown(results: dict, args) -> None:
    lines = [f"Each candidate: `fm train` for {args.budget} of wall time (`--max-time`), then `fm eval` without "
             f"guidance (heun 20, {args.num} samples, classifier features). Best FID first.", "",
             "| candidate | steps | images/s | FID | KID | conditional accuracy | worst class |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, entry in sorted(results.items(), key=lambda item: item[1]["fid"]):
        worst = min(entry["per_class"].items(), key=lambda item: item[1])
        lines.append(f"| {name} | {entry['steps']} | {entry['images_per_s']:.0f} | {entry['fid']:.1f} | "
                     f"{entry['kid']:.2f} | {entry['accuracy']:.3f} | {worst[0]}: {worst[1]:.2f} |")  # fmt: skip
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
