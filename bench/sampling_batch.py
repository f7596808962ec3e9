"""How fast and how big one sampling call is at each batch size: what fm's default batch is chosen from.

    python bench/sampling_batch.py CHECKPOINT --batches 25,50,100,250,500,1000 [--num 1000] [--threads 2]

For each batch size: image-evaluations per second of `generate` (euler 4, guidance 1, --num samples), after a
warm-up call. Then, in a fresh process per size, the peak RSS one call of --memory-batch samples adds (heun 2),
beside the estimate fm uses (``fmcli.sampling.batching.bytes_per_sample``: the sum of the layers' outputs).
Run alone on an otherwise idle machine; prints one JSON line per measurement.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

MEMORY = """
import json, resource, sys, torch
from fmcli.cli.memory import keep_freed_memory
keep_freed_memory()
from fmcli.io.checkpoint import load_checkpoint
from fmcli.sampling.batching import bytes_per_sample
from fmcli.sampling.generate import generate
from fmcli.sampling.options import SamplingOptions
loaded = load_checkpoint(sys.argv[1], device=torch.device("cpu"))
batch, cfg = int(sys.argv[2]), float(sys.argv[3])
estimate = bytes_per_sample(loaded.model, loaded.meta.shape, loaded.meta.num_classes)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
classes = torch.zeros(batch, dtype=torch.long) if loaded.meta.num_classes else None
generate(loaded, SamplingOptions(solver="heun", steps=2, cfg=cfg, batch_size=batch), num=batch, condition=classes)
added = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
passes = 2 if cfg != 1 and classes is not None else 1
print(json.dumps({"batch": batch, "cfg": cfg, "estimate_mb": round(estimate / 1e6, 2),
                  "measured_mb_per_pass": round(added / batch / passes / 1e6, 2)}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--batches", default="25,50,100,250,500,1000")
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-batch", type=int, default=16)
    args = parser.parse_args()
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches takes a comma-separated list of numbers (got {args.batches!r})")
    if min(batches + [args.num, args.threads, args.memory_batch]) < 1:
        parser.error("--batches, --num, --threads and --memory-batch must be at least 1")

    import torch

    from fmcli.io.checkpoint import load_checkpoint
    from fmcli.sampling.generate import generate
    from fmcli.sampling.options import SamplingOptions

    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.checkpoint, device=torch.device("cpu"))
    classes = torch.zeros(args.num, dtype=torch.long) if loaded.meta.num_classes else None
    warm = SamplingOptions(solver="euler", steps=1, cfg=1.0, batch_size=batches[0])
    generate(loaded, warm, num=batches[0], condition=None if classes is None else classes[: batches[0]])
    for batch in batches:
        start = time.perf_counter()
        options = SamplingOptions(solver="euler", steps=4, cfg=1.0, batch_size=batch)
        generate(loaded, options, num=args.num, condition=classes)
        rate = args.num * 4 / (time.perf_counter() - start)
        print(json.dumps({"batch": batch, "image_evaluations_per_s": round(rate, 1)}), flush=True)
    for cfg in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", MEMORY, args.checkpoint, str(args.memory_batch), cfg],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode:
            raise SystemExit(done.stderr[-600:])
        print(done.stdout.strip(), flush=True)
    print(json.dumps({"max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
