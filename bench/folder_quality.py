"""A colour folder as a user trains it: `fm train FOLDER` with fm's defaults for a wall time, then scored.

    python bench/folder_quality.py --size 32 --budget 10m --out bench/results/folder32
    python bench/folder_quality.py --size 64 --budget 20m --protocol steps --out bench/results/folder64
    python bench/folder_quality.py --size 32 --budget 10m --name "0.2 default" --out ... -- --batch-size 128 ...

Writes the procedural folder of coloured shapes (bench/procedural.py, 5,000 train and 1,000 test images in 5
classes) at --size, trains `fm train FOLDER/train --image-size SIZE` with fm's defaults plus any options after
`--`, and scores the model with fm eval against the test split (heun 20, 1,000 samples, equal per class, the
same seed; features and accuracy from fm's classifier extractor trained on the train split): once without
guidance (cfg 1) and once with `fm sample --class K`'s default guidance, or at the scales --scores names
(cfg:1.5). Results: OUT/results.json, one entry per --name.

The wall time reaches the run in one of two ways, as in bench/demo_search.py:

    wall   `fm train --max-time BUDGET` on an otherwise idle machine, exactly as a user types it.
    steps  the speed is measured first (40 steps, idle), then the run trains the steps BUDGET gives at that
           speed with --steps, which needs no idle machine (other work may run beside it).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_search import measure_speed, register_shapes, score, slug  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/folder_quality"))
    parser.add_argument("--size", type=int, default=32, help="image size (the folder is written at this size)")
    parser.add_argument("--budget", default="10m", help="wall time of fm train")
    parser.add_argument("--protocol", choices=("wall", "steps"), default="wall")
    parser.add_argument("--threads", type=int, default=None, help="steps protocol: OMP threads of the run")
    parser.add_argument("--name", default="defaults", help="the entry's name in results.json")
    parser.add_argument("--num", type=int, default=1000, help="samples per score")
    parser.add_argument("--phase", choices=("all", "train", "score"), default="all",
                        help="train only (alone on the machine), score only, or both")  # fmt: skip
    parser.add_argument("--scores", default="unguided,guided",
                        help="unguided (cfg 1), guided (fm sample's default), cfg:X (guidance scale X)")  # fmt: skip
    parser.add_argument("train_options", nargs="*", help="extra fm train options (after --)")
    args = parser.parse_args()
    scores = args.scores.split(",")
    try:
        scales = {how: guidance_scale(how) for how in scores}
    except ValueError:
        parser.error(f"--scores takes unguided, guided and cfg:X (X a number), not {args.scores!r}")
    from fmcli.cli.memory import keep_freed_memory
    from fmcli.training.budget import parse_duration

    keep_freed_memory()
    args.out.mkdir(parents=True, exist_ok=True)
    folder = args.out / f"shapes{args.size}"
    if not folder.exists():
        script = Path(__file__).with_name("procedural.py")
        subprocess.run([sys.executable, str(script), str(folder), "--size", str(args.size)], check=True)
    train, extra = str(folder / "train"), ["--image-size", str(args.size), *args.train_options]
    run = args.out / "runs" / slug(args.name)
    entry: dict = {"options": args.train_options, "protocol": args.protocol, "budget": args.budget}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else None
    timing = run / "train_seconds.json"
    if not (run / "last.safetensors").exists():
        if args.phase == "score":
            parser.error(f"--phase score: no trained run at {run}")
        length = ["--max-time", args.budget]
        if args.protocol == "steps":  # the speed only matters to a run still to train
            speed = measure_speed(args.name, train, extra, [], args.out)
            entry["speed"] = speed
            steps = int((parse_duration(args.budget) - speed["startup"]) / speed["seconds_per_step"])
            length = ["--steps", str(steps)]
        start = time.perf_counter()
        command = (
            ["train", "--resume", str(run)]
            if (run / "config.json").exists()
            else ["train", train, *extra, *length, "--out", str(run)]
        )
        subprocess.run([sys.executable, "-m", "fmcli", *command], check=True, env=env)
        timing.write_text(json.dumps({"train_seconds": round(time.perf_counter() - start, 1), **entry}))
    if args.phase == "train":
        return 0
    entry.update(json.loads(timing.read_text()) if timing.exists() else {})
    config = json.loads((run / "config.json").read_text())
    entry.update(steps=config["steps"], batch_size=config["batch_size"], lr=config["lr"],
                 warmup_steps=config["warmup_steps"], decisions=config.get("decisions"))  # fmt: skip
    data = register_shapes(folder, args.size)
    for how in scores:
        entry[how] = score(run, data, args.num, None, "classifier", cfg=scales[how])
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[args.name] = results.get(args.name, {}) | entry
    path.write_text(json.dumps(results, indent=2))
    for how in scores:
        got = entry[how]
        print(f"{args.name}, {how} (cfg {got['cfg']}): FID {got['fid']:.1f}, KID {got['kid']:.2f}, "
              f"accuracy {got['accuracy']:.3f}, per class {got['per_class']}")  # fmt: skip
    return 0


def guidance_scale(how: str) -> float | None:
    """The cfg a --scores item asks for: unguided 1, guided None (fm sample's default), cfg:X X."""
    if how in ("unguided", "guided"):
        return 1.0 if how == "unguided" else None
    name, _, value = how.partition(":")
    if name != "cfg" or not math.isfinite(float(value)):
        raise ValueError(how)
    return float(value)


if __name__ == "__main__":
    raise SystemExit(main())
