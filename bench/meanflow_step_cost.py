"""Cost of a MeanFlow training step against a flow-matching step: CPU time and peak memory.

    python bench/meanflow_step_cost.py [--batch 64] [--rounds 6] [--threads 1]

One step = loss forward + backward (no optimizer) for the default 28x28 U-Net
(``default_model_config("image", (1, 28, 28), 10, "cpu")``, class-conditional; the MeanFlow model adds
``interval=True``). MeanFlow's jvp computes the tangent alongside the forward pass, so the target is
at most one extra forward and backward per step (ratio <= ~2). Rows:

    flow-matching              ``FlowMatching``
    meanflow r<t               ``MeanFlow`` with every sample through the jvp (equal_fraction 0)
    meanflow 75% r=t           the paper's share of plain samples, which skip the jvp
    meanflow r<t, builtin jvp  PyTorch's own forward-mode conv / group norm (``fmcli.models.forward_ad`` off)

Time: CPU time per step (process_time; with one thread it is far less disturbed by other work on
the machine than wall time), the minimum over ``rounds`` rounds that run the rows in turn, in one
process. Memory: each row in its own subprocess, the rise of the maximum resident set size
(ru_maxrss) from just before the first step to the end of the second.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

ROWS = {
    "flow-matching": ("flow-matching", 0.0, False),
    "meanflow r<t": ("meanflow", 0.0, False),
    "meanflow 75% r=t": ("meanflow", 0.75, False),
    "meanflow r<t, builtin jvp": ("meanflow", 0.0, True),
}


def make_steps(batch: int) -> dict:
    """Row name -> a function running one training step of that row."""
    from fmcli.flow.meanflow import sample_interval
    from fmcli.models import build_model, forward_ad
    from fmcli.models.presets import default_model_config
    from fmcli.training.objectives import Batch, FlowMatching, MeanFlow, TimeDistribution

    torch.manual_seed(0)
    config = default_model_config("image", (1, 28, 28), 10, "cpu")
    models = {
        "flow-matching": build_model(config).train(),
        "meanflow": build_model(config | {"interval": True}).train(),
    }
    x0, x1 = torch.rand(batch, 1, 28, 28) * 2 - 1, torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    cheap_jvp = forward_ad.in_forward_ad

    def step_fn(objective: str, equal_fraction: float, builtin_jvp: bool):
        model = models[objective]
        r, t = sample_interval(batch, equal_fraction=equal_fraction, generator=torch.Generator().manual_seed(0))

        def step() -> None:
            model.zero_grad(set_to_none=True)
            # Conv2d / GroupNorm fall back to PyTorch's formulas when they see no forward-mode pass.
            forward_ad.in_forward_ad = (lambda x: False) if builtin_jvp else cheap_jvp
            try:
                if objective == "meanflow":
                    loss = MeanFlow(TimeDistribution())(model, Batch(x0, x1, t, y, r)).loss
                else:
                    loss = FlowMatching()(model, Batch(x0, x1, t, y)).loss
                loss.backward()
            finally:
                forward_ad.in_forward_ad = cheap_jvp

        return step

    return {row: step_fn(*spec) for row, spec in ROWS.items()}


def peak_memory_rise_mib(row: str, batch: int) -> float:
    step = make_steps(batch)[row]
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-of", choices=list(ROWS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_of:  # the child: one row's memory, JSON on stdout
        print(json.dumps(peak_memory_rise_mib(args.memory_of, args.batch)))
        return
    memory = {}
    for row in ROWS:
        command = [
            sys.executable,
            __file__,
            "--memory-of",
            row,
            "--batch",
            str(args.batch),
            "--threads",
            str(args.threads),
        ]
        memory[row] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    steps = make_steps(args.batch)
    cpu = {row: [] for row in ROWS}
    for step in steps.values():  # warm-up: allocations, oneDNN kernel selection
        step()
    for _ in range(args.rounds):
        for row, step in steps.items():
            start = time.process_time()
            step()
            cpu[row].append(time.process_time() - start)
    print(
        f"batch {args.batch}, {args.threads} thread(s), min CPU time over {args.rounds} rounds; ratios to flow-matching"
    )
    base_time, base_memory = min(cpu["flow-matching"]), memory["flow-matching"]
    for row in ROWS:
        print(
            f"{row:25s}  CPU {min(cpu[row]) * 1000:5.0f} ms/step (x{min(cpu[row]) / base_time:.2f})   "
            f"peak memory rise {memory[row]:5.0f} MiB (x{memory[row] / base_memory:.2f})"
        )


if __name__ == "__main__":
    main()
