"""Choose defaults by sample quality after the same wall time, not by loss.

    FM_DATA_DIR=/path/to/mnist python bench/demo_search.py --budget 200s --out bench/results/demo_search
    python bench/demo_search.py --rgb --budget 10m --protocol steps --jobs 2 --out bench/results/rgb_search

Each candidate is `fm train DATA` with its own options, given the same wall time on this machine whatever its
speed per step, as a user's laptop would give it. Then `fm eval` scores it without guidance (cfg 1: the model
itself; heun 20; N samples, equal per class, the same seed): FID and KID in the classifier's features, and
conditional accuracy (does --class K give a K?). Results: results.json and results.md, best FID first, with
steps reached and images/s.

Two protocols give a candidate its wall time:

    wall   `fm train --max-time BUDGET`, one candidate after the other, on an otherwise idle machine.
    steps  first every candidate's speed is measured (`fm train --steps 40`, seconds per step after the first
           ten, and the seconds before the first step), one after the other on an idle machine; then each trains
           exactly the steps BUDGET gives it at that speed (what --max-time would plan), with --steps. Training
           no longer needs the machine to itself: several candidates may train at once (--jobs, one thread
           each), since what a candidate learns is fixed by its steps, not by the clock. On 2 shared cores this
           is the only way to give each candidate the same wall time: another process on the other core slows a
           2-thread run by 2-7x (measured), which --max-time would turn into fewer steps.

MNIST mode trains on mnist-mini (the README's first command) and scores against the real MNIST test split.
RGB mode writes a procedural folder of coloured shapes (bench/procedural.py: 5,000 train and 1,000 test
images of 32x32 in 5 classes), trains on it as a user would (`fm train FOLDER --image-size 32`) and scores
against its test images, registered as a data set for fm eval, with the classifier extractor trained on
its train split (Inception needs downloaded weights).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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
# RGB: 0.2's defaults for a 32 px folder on a CPU ("0.2 default": its preset, batch 128, a fixed 200-step
# warm-up), then one change at a time from the new baseline (the warm-up as 10% of the planned steps).
PRESET_32 = "--base-channels 32 --channel-mults 1,2,2,2 --res-blocks 1 --attention 8"
BASE_16 = "--base-channels 16 --channel-mults 1,2,2,2 --res-blocks 1 --attention 8"
RGB_CANDIDATES = {
    # round 1
    "0.2 default (batch 128, warm-up 200)": f"{PRESET_32} --batch-size 128 --lr 2e-3 --warmup-steps 200".split(),
    "batch 128": f"{PRESET_32} --batch-size 128".split(),
    "batch 64": f"{PRESET_32} --batch-size 64".split(),
    "batch 32": f"{PRESET_32} --batch-size 32".split(),
    "batch 16": f"{PRESET_32} --batch-size 16".split(),
    "batch 8": f"{PRESET_32} --batch-size 8".split(),
    "batch 32, base 16": f"{BASE_16} --batch-size 32".split(),
    "batch 32, base 48": "--base-channels 48 --channel-mults 1,2,2,2 --res-blocks 1 --attention 8 --batch-size 32".split(),  # noqa: E501
    "batch 32, 3 levels 1,2,4": "--base-channels 32 --channel-mults 1,2,4 --res-blocks 1 --attention 8 --batch-size 32".split(),  # noqa: E501
    "batch 32, 2 res blocks": "--base-channels 32 --channel-mults 1,2,2,2 --res-blocks 2 --attention 8 --batch-size 32".split(),  # noqa: E501
    "batch 32, no attention": f"{PRESET_32} --attention none --batch-size 32".split(),
    "batch 32, lr 1e-3": f"{PRESET_32} --batch-size 32 --lr 1e-3".split(),
    "batch 32, lr 5e-4": f"{PRESET_32} --batch-size 32 --lr 5e-4".split(),
    "batch 32, lr 4e-3": f"{PRESET_32} --batch-size 32 --lr 4e-3".split(),
    "batch 32, EMA 0.99": f"{PRESET_32} --batch-size 32 --ema-decay 0.99".split(),
    "batch 32, logit-normal t": f"{PRESET_32} --batch-size 32 --time-sampling logit-normal".split(),
    "batch 32, no hflip": f"{PRESET_32} --batch-size 32 --no-hflip".split(),
    # round 2: lower learning rates won round 1 at batch 32; the batch again at a lower rate, and a narrower net
    "batch 128, lr 1e-3": f"{PRESET_32} --batch-size 128 --lr 1e-3".split(),
    "batch 32, base 16, lr 1e-3": f"{BASE_16} --batch-size 32 --lr 1e-3".split(),
    "batch 32, lr 5e-4, logit-normal t": f"{PRESET_32} --batch-size 32 --lr 5e-4 --time-sampling logit-normal".split(),
    # round 3: around the winner of round 2 (16 channels at the top: 2.4x the images per second)
    "batch 32, base 16, lr 1e-3, logit-normal t": f"{BASE_16} --batch-size 32 --lr 1e-3 --time-sampling logit-normal".split(),  # noqa: E501
    "batch 32, base 16, lr 1e-3, EMA 0.99": f"{BASE_16} --batch-size 32 --lr 1e-3 --ema-decay 0.99".split(),
    "batch 32, base 16, lr 1e-3, no hflip": f"{BASE_16} --batch-size 32 --lr 1e-3 --no-hflip".split(),
    "batch 32, base 16, lr 1e-3, no attention": f"{BASE_16} --batch-size 32 --lr 1e-3 --attention none".split(),
    "batch 32, base 16, lr 1e-3, 2 res blocks": "--base-channels 16 --channel-mults 1,2,2,2 --res-blocks 2 --attention 8 --batch-size 32 --lr 1e-3".split(),  # noqa: E501
}


def fm(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmcli", *args], capture_output=True, text=True, env=env)


def register_shapes(folder: Path, image_size: int = 32) -> str:
    """The procedural folder's train/ and test/ as the data set "shapes-folder" with two splits (at ``image_size``),
    for fm eval."""
    from dataclasses import replace

    from fmcli import hookimpl
    from fmcli.data.folder import load_folder
    from fmcli.plugins import pm
    from fmcli.specs import DatasetSpec

    def load(options):
        data = load_folder(folder / options.split, replace(options, image_size=image_size))
        data.split = options.split
        return data

    class Shapes:
        @hookimpl
        def fm_register_datasets(self, register):
            register(DatasetSpec(name="shapes-folder", description="procedural shapes folder", kind="image",
                                 splits=("train", "test"), load=load))  # fmt: skip

    pm.register(Shapes(), name="bench-shapes")
    return "shapes-folder"  # not "shapes": that is fm's built-in captioned data set


def score(run: Path, data: str, num: int, data_dir: str | None, extractor: str | None, cfg: float | None = 1.0) -> dict:
    """fm eval's FID, KID and conditional accuracy of heun 20 samples; cfg None: fm sample's default guidance."""
    from fmcli.eval.run import EvalOptions, evaluate_checkpoint
    from fmcli.sampling.options import SamplingOptions

    # fm's own batch (memory- and speed-aware): a fixed 250 took 23 GB at 128 px with guidance and was killed for it.
    # The noise of sample i depends on the seed alone, so the batches do not change the samples.
    sampling = SamplingOptions(solver="heun", steps=20, cfg=cfg, seed=0)
    options = EvalOptions(num_samples=num, metrics=("fid", "kid"), data=data, kid_subsets=20, sampling=sampling,
                          extractor=extractor, data_dir=Path(data_dir) if data_dir else None)  # fmt: skip
    report = evaluate_checkpoint(run / "last.safetensors", options)
    return {"fid": report["metrics"]["fid"]["value"], "kid": report["metrics"]["kid"]["value"],
            "accuracy": report["conditional"]["accuracy"], "per_class": report["conditional"]["per_class"],
            "classifier_test_accuracy": report["conditional"]["classifier_test_accuracy"],
            "cfg": report["conditional"].get("cfg"), "sample_seconds": report["sampling"]["seconds"],
            "samples_per_second": report["sampling"].get("samples_per_second")}  # fmt: skip


def measure_speed(name: str, train_data: str, extra: list, options: list, out: Path) -> dict:
    """Seconds per step (after the first ten) and seconds before the first step, from a 40-step run."""
    run = out / "speed" / slug(name)
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    done = fm("train", train_data, *extra, "--steps", "40", "--log-every", "1", "--out", str(run), "--sample-every",
              "0", "--checkpoint-every", "1000000", *options)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"{name}: fm train failed: {done.stderr[-500:]}")
    whole = time.perf_counter() - start
    times = {r["step"]: r["time"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    per_step = (times[40] - times[10]) / 30
    return {"seconds_per_step": per_step, "startup": max(0.0, whole - times[40] - 1.0)}


def slug(name: str) -> str:
    return name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")


def train_candidate(name, train_data, extra, options, length, out, threads) -> tuple[str, float, str]:
    run = out / "runs" / slug(name)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    start = time.perf_counter()
    if (run / "config.json").exists():  # interrupted before: continue it exactly, to the steps it planned
        done = fm("train", "--resume", str(run), env=env)
    else:
        done = fm("train", train_data, *extra, *length, "--out", str(run), "--sample-every", "0", *options, env=env)
    return name, time.perf_counter() - start, done.stderr[-500:] if done.returncode else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/demo_search"))
    parser.add_argument("--budget", default="200s", help="wall time of each candidate's fm train")
    parser.add_argument("--num", type=int, default=1000, help="samples per score")
    parser.add_argument("--rgb", action="store_true", help="the procedural RGB folder at 32 px instead of MNIST")
    parser.add_argument("--only", default=None, help="candidate names separated by semicolons")
    parser.add_argument("--data-dir", default=None, help="full MNIST (else $FM_DATA_DIR)")
    parser.add_argument("--protocol", choices=("wall", "steps"), default="wall")
    parser.add_argument("--jobs", type=int, default=1, help="steps protocol: candidates training at once")
    parser.add_argument("--phase", choices=("all", "speed", "train", "score"), default="all")
    args = parser.parse_args()
    from fmcli.cli.memory import keep_freed_memory
    from fmcli.training.budget import parse_duration

    keep_freed_memory()
    args.out.mkdir(parents=True, exist_ok=True)
    budget = parse_duration(args.budget)
    if args.rgb:
        folder = args.out / "shapes"
        if not folder.exists():
            subprocess.run([sys.executable, str(Path(__file__).with_name("procedural.py")), str(folder)], check=True)
        train_data, extra, eval_data, extractor = str(folder / "train"), ["--image-size", "32"], None, "classifier"
        candidates = RGB_CANDIDATES
    else:
        train_data, extra, eval_data, extractor = "mnist-mini", DEFAULT_0_1_0.split(), "mnist", None
        candidates = MNIST_CANDIDATES
    if args.only:
        candidates = {name: candidates[name] for name in args.only.split(";")}
    results_path, speeds_path = args.out / "results.json", args.out / "speeds.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    speeds = json.loads(speeds_path.read_text()) if speeds_path.exists() else {}
    todo = {name: options for name, options in candidates.items() if name not in results}
    lengths = {name: ["--max-time", args.budget] for name in todo}
    if args.protocol == "steps":
        for name, options in todo.items():  # one after the other, on an idle machine
            if name not in speeds and args.phase in ("all", "speed"):
                speeds[name] = measure_speed(name, train_data, extra, options, args.out)
                speeds_path.write_text(json.dumps(speeds, indent=2))
                print(f"{name}: {speeds[name]['seconds_per_step']:.3f} s/step", flush=True)
        if args.phase == "speed":
            return 0
        for name in todo:
            speed = speeds[name]
            steps = int((budget - speed["startup"]) / speed["seconds_per_step"])
            lengths[name] = ["--steps", str(steps)]
    trained = {name for name in todo if finished(args.out / "runs" / slug(name))}
    if args.phase in ("all", "train"):
        threads = 1 if args.jobs > 1 else None
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            jobs = [pool.submit(train_candidate, name, train_data, extra, options, lengths[name], args.out, threads)
                    for name, options in todo.items() if name not in trained]  # fmt: skip
            for job in jobs:
                name, seconds, failure = job.result()
                print(f"{name}: {'failed: ' + failure if failure else f'trained in {seconds:.0f} s'}", flush=True)
    if args.phase == "train":
        return 0
    for name, options in todo.items():
        run = args.out / "runs" / slug(name)
        if not (run / "last.safetensors").exists():
            continue
        if args.rgb and eval_data is None:
            eval_data = register_shapes(folder)
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        planned = json.loads((run / "config.json").read_text())["steps"]
        if metrics[-1]["step"] != planned:  # still training (its periodic checkpoints are not the result)
            print(f"{name}: at step {metrics[-1]['step']} of {planned}, not scored yet", flush=True)
            continue
        speed = speeds.get(name, {}).get("seconds_per_step") or metrics[-1]["time"] / metrics[-1]["step"]
        entry = {"options": options, "protocol": args.protocol, "length": lengths[name], "steps": metrics[-1]["step"],
                 "seconds_per_step": round(speed, 4), "images_per_s": round(_batch(run) / speed, 1),
                 **score(run, eval_data, args.num, args.data_dir, extractor)}  # fmt: skip
        (run / "score.json").write_text(json.dumps(entry, indent=2))  # the run's own copy
        # Several scorers may run at once: merge with what the others wrote meanwhile.
        results = {**(json.loads(results_path.read_text()) if results_path.exists() else {}), name: entry}
        results_path.write_text(json.dumps(results, indent=2))
        print(f"{name}: FID {entry['fid']:.1f}, accuracy {entry['accuracy']:.3f}, {entry['steps']} steps", flush=True)
    write_markdown(results, args)
    return 0


def finished(run: Path) -> bool:
    """Whether a run reached the steps it planned (its periodic checkpoints are not the result)."""
    if not (run / "last.safetensors").exists():
        return False
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return last["step"] == json.loads((run / "config.json").read_text())["steps"]


def _batch(run: Path) -> int:
    return json.loads((run / "config.json").read_text())["batch_size"]


def write_markdown(results: dict, args) -> None:
    how = "`--max-time`" if args.protocol == "wall" else "the steps it makes in that time on 2 idle cores, measured"
    lines = [f"Each candidate: `fm train` for {args.budget} of wall time ({how}), then `fm eval` without "
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
