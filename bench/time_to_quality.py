"""Time to quality: train for fixed wall-clock budgets, then score class-conditional samples with `fm eval`.

Our side trains fm's default conditional MNIST model; when `torchcfm` is importable, the
TorchCFM class-conditional MNIST recipe trains in the same process and run, on the same
data held on the same device, and is scored by the same `fm eval` code:

    UNetModel(dim=(1, 28, 28), num_channels=32, num_res_blocks=1, class_cond=True, num_classes=10)
    ConditionalFlowMatcher(sigma=0), Adam at its default learning rate, batch 128, fp32,
    sampled with dopri5 at atol = rtol = 1e-4 (and Euler, for the few-step comparison)

TorchCFM's time runs the other way (t = 0 noise, t = 1 data); its velocity is wrapped as
v_fm(x, t) = -v_cfm(x, 1 - t), so fm's solvers and scoring apply unchanged.

Install the reference with `pip install torchcfm==1.0.7` (not a dependency of fm). torchcfm
imports POT (`ot`) at import time although only its OT variants use it; with
`--stub-pot` the script installs an empty stand-in module `ot` before importing torchcfm
(we use ConditionalFlowMatcher only, which never calls it).

Example (one GPU, about 6 minutes with compilation):
    python bench/time_to_quality.py --data mnist --data-dir $FM_DATA_DIR --budgets 30,120 \
        --reference-budget 240 --solvers heun:10,euler:10,heun:5,dopri5@1e-4 --num 5000 --out bench/results
Two CPU cores, equal wall time, each side as its user would run it (`fm train --max-time` with fm's
defaults for the README's first data set; TorchCFM's recipe as written, made for a GPU), both on the
10,000 mnist-mini digits, scored against the full MNIST test split:
    python bench/time_to_quality.py --data mnist-mini --eval-data mnist --data-dir $FM_DATA_DIR --device cpu \
        --ours-as-user \
        --budgets 240 --reference-budget 240 --solvers heun:20,euler:10 --reference-solvers dopri5@1e-4,euler:10 \
        --num 1000 --out bench/results/ttq_cpu
CPU smoke run (what CI does, no timing asserted):
    python bench/time_to_quality.py --data mnist-mini --budgets 2 --reference-budget 2 --num 200 \
        --solvers euler:2 --device cpu --out /tmp/ttq
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmcli import __version__, registry  # noqa: E402
from fmcli.data.base import to_model_space  # noqa: E402
from fmcli.device import resolve_device  # noqa: E402
from fmcli.eval.run import EvalOptions, evaluate_checkpoint  # noqa: E402
from fmcli.hookspecs import hookimpl  # noqa: E402
from fmcli.io.checkpoint import FORMAT_VERSION, CheckpointMeta, read_checkpoint, save_checkpoint  # noqa: E402
from fmcli.models import ModelSpec  # noqa: E402
from fmcli.plugins import pm  # noqa: E402
from fmcli.sampling.options import SamplingOptions  # noqa: E402
from fmcli.training.config import TrainConfig, validate  # noqa: E402
from fmcli.training.events import Callbacks  # noqa: E402
from fmcli.training.loop import Trainer  # noqa: E402  (the bench drives the loop itself, by wall clock)


def parse_solvers(text: str) -> list[tuple[str, int, float]]:
    """'heun:10,dopri5@1e-4' -> [('heun', 10, 1e-5), ('dopri5', 20, 1e-4)]."""
    runs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, tol = (item.split("@") + ["1e-5"])[:2]
        name, steps = (name.split(":") + ["20"])[:2]
        runs.append((name, int(steps), float(tol)))
    return runs


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- our side


def train_ours_as_user(args, out: Path) -> list[dict]:
    """`fm train DATA --max-time B` in its own process, with fm's defaults: one snapshot, its last checkpoint."""
    import subprocess

    (budget,) = args.budgets
    run = out / "ours-user"
    command = [sys.executable, "-m", "fmcli", "train", args.data, "--max-time", f"{budget:g}s", "--out", str(run),
               "--sample-every", "0", *(["--data-dir", args.data_dir] if args.data_dir else [])]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    batch = json.loads((run / "config.json").read_text())["batch_size"]
    parameters = sum(
        t.numel() for name, t in read_checkpoint(run / "last.safetensors")[0].items() if name[:4] == "ema."
    )
    return [{"side": "fm", "budget_s": budget, "checkpoint": str(run / "last.safetensors"), "steps": last["step"],
             "train_images_per_s": last["step"] * batch / last["time"], "parameters": parameters}]  # fmt: skip


def train_ours(args, out: Path) -> list[dict]:
    """One run; a checkpoint each time training wall time passes a budget (checkpointing not timed)."""
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    config = TrainConfig(
        data=args.data,
        data_dir=args.data_dir,
        steps=10**9,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule="constant",
        warmup_steps=args.warmup,
        ema_decay=args.ema_decay,
        time_sampling=args.time_sampling,
        coupling=args.coupling,
        label_dropout=args.label_dropout,
        device=str(device),
        precision="bf16" if cuda and not args.fp32 else "fp32",
        compile=cuda and not args.no_compile,
        seed=args.seed,
        out=str(out / "ours"),
        model=json.loads(args.model) if args.model else {},
    )
    validate(config)
    from fmcli.training.distributed import DistInfo

    trainer = Trainer(config, out / "ours", Callbacks(), None, DistInfo(), device)
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    trainer.stop_flag = {"signum": 0}
    snapshots, budgets = [], sorted(args.budgets)
    # Warm-up (compilation, cuDNN autotuning) is not training time: run a few steps first, then restore.
    state = {k: v.clone() for k, v in trainer.state.model.state_dict().items()}
    for _ in range(3):
        trainer.train_step()
    synchronize(device)
    trainer.state.model.load_state_dict(state)
    trainer.state.ema.load_state_dict(state)
    trainer.state.optimizer.state.clear()
    trainer.state.step = trainer.state.images_seen = 0
    elapsed, start = 0.0, time.perf_counter()
    while budgets:
        trainer.train_step()
        if trainer.state.step % 10 == 0:
            synchronize(device)
            elapsed = time.perf_counter() - start
        if elapsed >= budgets[0]:
            budget = budgets.pop(0)
            pause = time.perf_counter()
            path = trainer.save()
            snapshots.append(
                {
                    "side": "fm",
                    "budget_s": budget,
                    "checkpoint": str(path),
                    "steps": trainer.state.step,
                    "train_images_per_s": trainer.state.images_seen / elapsed,
                }
            )
            start += time.perf_counter() - pause  # saving is not training time
    params = sum(p.numel() for p in trainer.state.model.parameters())
    for snap in snapshots:
        snap["parameters"] = params
    return snapshots


# ----------------------------------------------------------------------------- the reference


class TorchCFMVelocity(nn.Module):
    """TorchCFM's UNetModel seen through fm's convention: v_fm(x, t, y) = -v_cfm(1 - t, x, y)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        from torchcfm.models.unet import UNetModel

        self.net = UNetModel(
            dim=(1, 28, 28), num_channels=32, num_res_blocks=1, class_cond=True, num_classes=num_classes
        )
        self.config = {"name": "torchcfm-unet", "num_classes": num_classes}

    def forward(self, x, t, y=None):
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        return -self.net(1 - t, x, y)


class ReferencePlugin:
    """Registers the wrapped reference model so fm can rebuild it from a checkpoint."""

    @hookimpl
    def fm_register_models(self, register):
        register(
            ModelSpec(
                name="torchcfm-unet",
                description="TorchCFM's MNIST UNetModel (benchmark only)",
                build=lambda num_classes=10, **_: TorchCFMVelocity(num_classes),
            )
        )


def import_torchcfm(stub_pot: bool) -> bool:
    if stub_pot and "ot" not in sys.modules:
        import types

        sys.modules["ot"] = types.ModuleType("ot")  # stand-in: ConditionalFlowMatcher never calls POT
    try:
        import torchcfm  # noqa: F401
    except ImportError as error:
        print(
            f"torchcfm not importable ({error}); running fm's side only. pip install torchcfm==1.0.7", file=sys.stderr
        )
        return False
    return True


def train_reference(args, out: Path, data, labels) -> list[dict]:
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = TorchCFMVelocity().to(device)
    optimizer = torch.optim.Adam(model.net.parameters())
    matcher = ConditionalFlowMatcher(sigma=0.0)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    (out / "reference").mkdir(parents=True, exist_ok=True)
    snapshots, budgets, steps = [], [args.reference_budget], 0
    elapsed, start = 0.0, time.perf_counter()
    while budgets:
        index = torch.randint(0, data.shape[0], (128,), generator=generator, device=device)
        x1 = to_model_space(data[index])  # TorchCFM: x1 is data, x0 noise
        y = labels[index]
        x0 = torch.randn(x1.shape, generator=generator, device=device)
        t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
        loss = torch.mean((model.net(t, xt, y) - ut) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        if steps % 10 == 0:
            synchronize(device)
            elapsed = time.perf_counter() - start
        if elapsed >= budgets[0]:
            budget = budgets.pop(0)
            path = out / "reference" / f"budget-{budget:g}s.safetensors"
            meta = CheckpointMeta(
                format_version=FORMAT_VERSION,
                model_config=model.config,
                data={
                    "name": args.data,
                    "split": "train",
                    "kind": "image",
                    "shape": [1, 28, 28],
                    "num_classes": 10,
                    "class_names": [str(i) for i in range(10)],
                },
                step=steps,
                label_dropout=0.0,
                train_config={"data": args.data, "data_dir": args.data_dir},
            )
            tensors = {f"ema.{k}": v for k, v in model.state_dict().items()}  # the recipe has no EMA
            save_checkpoint(path, tensors, meta)
            snapshots.append(
                {
                    "side": "torchcfm",
                    "budget_s": budget,
                    "checkpoint": str(path),
                    "steps": steps,
                    "train_images_per_s": steps * 128 / elapsed,
                    "parameters": sum(p.numel() for p in model.parameters()),
                }
            )
    return snapshots


# ----------------------------------------------------------------------------- scoring


def score(snapshot: dict, solver: str, steps: int, tol: float, args) -> dict:
    sampling = SamplingOptions(
        solver=solver, steps=steps, rtol=tol, atol=tol, cfg=1.0, seed=args.seed, batch_size=args.sample_batch
    )
    options = EvalOptions(
        num_samples=args.num,
        sampling=sampling,
        device=args.device,
        data=args.eval_data or args.data,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        metrics=("fid", "kid"),
    )
    report = evaluate_checkpoint(Path(snapshot["checkpoint"]), options)
    metrics = report["metrics"]
    return {
        **{k: v for k, v in snapshot.items() if k != "checkpoint"},
        "solver": solver,
        "steps": None if registry.get_solver(solver).adaptive else steps,
        "tol": tol if registry.get_solver(solver).adaptive else None,
        "nfe": report["sampling"]["nfe"],
        "fid": metrics["fid"]["value"],
        "kid": metrics["kid"]["value"],
        "conditional_accuracy": (report.get("conditional") or {}).get("accuracy"),
        "sample_images_per_s": report["sampling"]["samples_per_second"],
        "num_samples": args.num,
    }


def markdown(rows: list[dict], header: dict) -> str:
    lines = [
        f"Device: {header['device']}; torch {header['torch']}; fm {header['fm']}; {header['date']}; "
        f"{rows[0]['num_samples'] if rows else 0} samples (equal per class), FID/KID from fm eval's "
        f"'{header['extractor']}' features.",
        "",
        "| side | train budget (s) | steps | train img/s | solver | NFE | FID | KID | cond. acc. | sample img/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        solver = r["solver"] + (f" {r['steps']} steps" if r["steps"] else f" tol {r['tol']:g}")
        acc = f"{r['conditional_accuracy']:.3f}" if r["conditional_accuracy"] is not None else "-"
        lines.append(
            f"| {r['side']} | {r['budget_s']:g} | {r['steps_trained']} | "
            f"{r['train_images_per_s']:.0f} | {solver} | {r['nfe']} | {r['fid']:.2f} | {r['kid']:.4f} | {acc} | "
            f"{r['sample_images_per_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--eval-data", default=None, help="score against this data set's test split (default: --data)")
    parser.add_argument("--budgets", default="30,120", help="training wall-clock budgets of fm's side, seconds")
    parser.add_argument("--reference-budget", type=float, default=240.0, help="budget of the TorchCFM side, seconds")
    parser.add_argument("--solvers", default="heun:10,euler:10,heun:5,dopri5@1e-4")
    parser.add_argument("--reference-solvers", default="dopri5@1e-4,euler:10")
    parser.add_argument("--num", type=int, default=5000)
    parser.add_argument("--sample-batch", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--label-dropout", type=float, default=0.1)
    parser.add_argument("--time-sampling", default="logit-normal")
    parser.add_argument("--coupling", default="independent")
    parser.add_argument("--model", default=None, help="JSON model overrides, e.g. '{\"base_channels\": 48}'")
    parser.add_argument("--fp32", action="store_true")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--ours-as-user", action="store_true",
                        help="fm's side is `fm train --max-time BUDGET` with fm's defaults (one budget)")  # fmt: skip
    parser.add_argument("--stub-pot", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    args.budgets = [float(b) for b in args.budgets.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    args.device = str(device)

    from fmcli.data.base import LoadOptions
    from fmcli.data.resolve import load_data

    train = load_data(args.data, LoadOptions(split="train", data_dir=Path(args.data_dir) if args.data_dir else None))
    snapshots = train_ours_as_user(args, out) if args.ours_as_user else train_ours(args, out)
    with_reference = not args.no_reference and import_torchcfm(args.stub_pot)
    if with_reference:
        pm.register(ReferencePlugin(), name="bench-reference")
        registry.reset()
        snapshots += train_reference(args, out, train.data.to(device), train.labels.to(device))
    rows = []
    for snap in snapshots:
        solvers = args.solvers if snap["side"] == "fm" else args.reference_solvers
        for solver, steps, tol in parse_solvers(solvers):
            row = score(snap, solver, steps, tol, args)
            row["steps_trained"] = snap["steps"]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    header = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "fm": __version__,
        "date": time.strftime("%Y-%m-%d"),
        "extractor": "classifier",
        "reference": with_reference,
        "args": vars(args),
    }
    (out / "time_to_quality.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2, default=str))
    (out / "time_to_quality.md").write_text(markdown(rows, header))
    print(markdown(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
