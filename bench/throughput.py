"""Throughput of the default MNIST model: training images/s, sampling images/s at 10 and 20 NFE,
model FLOPs per image and the fraction of the device's peak that this reaches.

    python bench/throughput.py --device cuda --batch-size 512 --out bench/results     # GPU
    python bench/throughput.py --device cpu --batch-size 64 --seconds 5 --out /tmp/tp  # CPU
    python bench/throughput.py --device cpu --batch-size 64 --malloc default --out /tmp/tp-before

The last row samples as `fm sample --class K` does by default: heun 20 steps with guidance 2
(two evaluations per step) in batches of 500. ``--malloc default`` leaves glibc's malloc as it is,
which is how fm 0.1.0 ran (the fm command now calls ``fmcli.cli.memory.keep_freed_memory``).

FLOPs come from PyTorch's FlopCounterMode (matrix products, convolutions, attention; a
multiply-add counts 2); one training step costs about 3x the forward FLOPs. The peak is
dense bf16 matrix throughput (--peak-tflops, or a known value for the device name); on the
CPU no peak is assumed and only achieved GFLOP/s are reported.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmcli import __version__  # noqa: E402
from fmcli.device import resolve_device  # noqa: E402
from fmcli.io.checkpoint import FORMAT_VERSION, CheckpointMeta, LoadedModel  # noqa: E402
from fmcli.models import build_model  # noqa: E402
from fmcli.models.presets import count_flops, default_model_config  # noqa: E402
from fmcli.sampling.generate import generate  # noqa: E402
from fmcli.sampling.options import SamplingOptions  # noqa: E402
from fmcli.training.objectives import Batch, FlowMatching  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s). H200/H100 SXM: 989 on paper; measured ~790 on the H200 here.
KNOWN_PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, seconds: float, min_iters: int = 3) -> tuple[float, int]:
    """Run fn repeatedly for about ``seconds`` after one warm-up call; returns (elapsed, iterations)."""
    fn()
    synchronize(device)
    iters, start = 0, time.perf_counter()
    while iters < min_iters or time.perf_counter() - start < seconds:
        fn()
        iters += 1
        if device.type == "cuda" and iters % 5 == 0:
            synchronize(device)
    synchronize(device)
    return time.perf_counter() - start, iters


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--sample-batch", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per figure")
    parser.add_argument("--precision", default=None, help="fp32 or bf16 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--model", default=None, help="JSON model overrides")
    parser.add_argument("--peak-tflops", type=float, default=None)
    malloc_help = "tuned: keep freed memory for reuse, as the fm command does; default: glibc's own"
    parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned", help=malloc_help)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    if args.malloc == "tuned":
        from fmcli.cli.memory import keep_freed_memory

        keep_freed_memory()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    precision = args.precision or ("bf16" if cuda else "fp32")
    compile_model = cuda if args.compile is None else args.compile

    config = default_model_config("image", (1, 28, 28), 10, device_type=device.type)
    config.update(json.loads(args.model) if args.model else {})
    model = build_model(config).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(
        model,
        torch.randn(1, 1, 28, 28, device=device),
        torch.rand(1, device=device),
        torch.zeros(1, dtype=torch.long, device=device),
    )
    forward = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda or None)
    b = args.batch_size
    x0 = torch.randn(b, 1, 28, 28, device=device).clamp(-1, 1)
    x1, t, y = torch.randn_like(x0), torch.rand(b, device=device), torch.randint(0, 10, (b,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def train_step():
        with autocast:
            loss = FlowMatching()(forward, Batch(x0, x1, t, y)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    elapsed, iters = timed(train_step, device, args.seconds)
    train_ips = iters * b / elapsed
    rows = [
        {
            "what": f"training (batch {b}, {precision}{', compiled' if compile_model else ''})",
            "images_per_s": train_ips,
            "tflops": train_ips * 3 * flops / 1e12,
        }
    ]

    meta = CheckpointMeta(
        format_version=FORMAT_VERSION,
        model_config=config,
        label_dropout=0.1,  # as trained models have it: guidance is allowed
        data={"shape": [1, 28, 28], "num_classes": 10, "kind": "image"},
        step=0,
    )
    model.eval()
    loaded = LoadedModel(model=forward, meta=meta)
    classes = torch.arange(args.sample_batch) % 10
    plans = [(solver, steps, 1.0, args.sample_batch) for solver, steps in (("euler", 10), ("heun", 5), ("euler", 20),
                                                                            ("heun", 10))]  # fmt: skip
    plans.append(("heun", 20, 2.0, 500))  # fm sample --class K's defaults
    for solver, steps, cfg, batch in plans:
        options = SamplingOptions(solver=solver, steps=steps, cfg=cfg, batch_size=batch)

        def sample(options=options):
            with autocast:
                generate(loaded, options, num=args.sample_batch, condition=classes)

        elapsed, iters = timed(sample, device, args.seconds, min_iters=2)
        nfe = steps * (1 if solver == "euler" else 2)
        passes = nfe * (2 if cfg != 1 else 1)  # guidance evaluates a doubled batch
        ips = iters * args.sample_batch / elapsed
        guidance = f", guidance {cfg:g}" if cfg != 1 else ""
        rows.append(
            {
                "what": f"sampling {solver} {steps} steps (NFE {nfe}{guidance}, batch {batch})",
                "images_per_s": ips,
                "tflops": ips * passes * flops / 1e12,
            }
        )
    name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or "cpu")
    peak = args.peak_tflops or next((v for k, v in KNOWN_PEAKS.items() if k in name), None)
    for row in rows:
        row["fraction_of_peak"] = row["tflops"] / peak if peak else None
    header = {
        "device": name,
        "torch": torch.__version__,
        "fm": __version__,
        "date": time.strftime("%Y-%m-%d"),
        "model": config,
        "parameters": params,
        "forward_flops_per_image": flops,
        "peak_tflops": peak,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    lines = [
        f"Device: {name}; torch {torch.__version__}; fm {__version__}; {header['date']}; "
        f"{params / 1e6:.2f} M parameters, {flops / 1e6:.0f} MFLOP per image per forward.",
        "",
        "| measurement | images/s | achieved TFLOP/s | fraction of peak |",
        "|---|---|---|---|",
    ]
    for row in rows:
        frac = f"{row['fraction_of_peak']:.1%}" if row["fraction_of_peak"] is not None else "-"
        lines.append(f"| {row['what']} | {row['images_per_s']:.0f} | {row['tflops']:.3f} | {frac} |")
    (out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
