"""``fm sample``: draw samples from a checkpoint with any registered solver."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmcli import registry
from fmcli.checkpoint import load_checkpoint
from fmcli.cli._common import cli_errors, err_console, print_json, progress_bar, solver_help
from fmcli.data.base import to_uint8
from fmcli.errors import FMError
from fmcli.images import output_format, write_samples
from fmcli.sampling import default_cfg, generate, parse_classes, resolve_device
from fmcli.solvers.grids import TIME_GRIDS

SOLVER_HELP = solver_help()
CFG_HELP = ("Classifier-free guidance scale S: v_uncond + S (v_cond - v_uncond). 1 is plain conditional sampling; "
            "larger S gives more class-typical samples at the cost of diversity (and doubles the model batch). "
            "[default: 2 with --class on a model trained with label dropout, else 1]")


@cli_errors
def sample_command(
    checkpoint: Annotated[Path, typer.Argument(help="A .safetensors checkpoint or a run folder (uses its last.safetensors).")],
    out: Annotated[Path, typer.Option(help="Output: grid.png, samples.npz, or a folder of PNGs.")] = Path("samples.png"),
    num: Annotated[int, typer.Option(help="Number of samples.")] = 64,
    class_: Annotated[Optional[str], typer.Option("--class", help="Class index, class name, or 'all' (an equal number per class).")] = None,
    solver: Annotated[str, typer.Option(help=SOLVER_HELP, autocompletion=registry.completer(registry.solvers))] = "heun",
    steps: Annotated[int, typer.Option(help="Steps of a fixed-step solver (NFE = steps x evaluations per step).")] = 20,
    time_grid: Annotated[str, typer.Option(help=f"Time grid of fixed-step solvers: {', '.join(TIME_GRIDS)} (the last two are dense near t = 0, the data end).")] = "uniform",
    rtol: Annotated[float, typer.Option(help="Relative tolerance of adaptive solvers.")] = 1e-5,
    atol: Annotated[float, typer.Option(help="Absolute tolerance of adaptive solvers.")] = 1e-5,
    cfg: Annotated[Optional[float], typer.Option(help=CFG_HELP, show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the noise: same checkpoint, seed and options give the same samples.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Samples per solver call.")] = 500,
    weights: Annotated[str, typer.Option(help="ema (default) or raw weights.")] = "ema",
    format: Annotated[Optional[str], typer.Option(help="png, folder or npz (default: from --out).")] = None,
    nrow: Annotated[Optional[int], typer.Option(help="Images per row of the PNG grid.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Sample from a trained model by integrating its velocity from t = 1 (noise) to t = 0 (data).

    Examples:

      fm sample runs/demo/last.safetensors --class 6 --solver heun --steps 20 --num 64 --out six.png

      fm sample runs/demo --class all --num 100 --nrow 10 --out grid.png

      fm sample runs/demo --class 3 --cfg 2 --solver dopri5 --out three.npz
    """
    fmt = output_format(out, format)
    if fmt == "folder" and out.exists() and any(out.iterdir()):
        raise FMError(f"output folder {out} is not empty; choose another --out")
    if batch_size < 1:
        raise FMError("--batch-size must be at least 1")
    registry.get_solver(solver)  # unknown names fail before the model loads
    loaded = load_checkpoint(checkpoint, device=resolve_device(device), weights=weights)
    classes = parse_classes(class_, num, loaded.meta.class_names)
    cfg = default_cfg(loaded, classes) if cfg is None else cfg
    if fmt == "folder":
        out.mkdir(parents=True, exist_ok=True)
    with progress_bar() as bar:
        task = bar.add_task("sample", total=num)
        result = generate(loaded, num=num, classes=classes, solver=solver, steps=steps, time_grid=time_grid,
                          rtol=rtol, atol=atol, cfg=cfg, seed=seed, batch_size=batch_size,
                          progress=lambda done, total: bar.update(task, completed=done))
    if loaded.meta.data["kind"] == "image":
        written = write_samples(out, to_uint8(result.samples), result.labels, fmt, nrow=nrow)
    else:
        written = write_samples(out, None, result.labels, fmt, points=result.samples)
    summary = {"out": str(out), "files": len(written), "num": num, "solver": solver, "steps": steps, "nfe": result.nfe,
               "seconds": round(result.seconds, 3), "images_per_s": round(num / max(result.seconds, 1e-9), 1),
               "device": str(next(loaded.model.parameters()).device), "class": class_, "cfg": cfg, "seed": seed}
    if json_output:
        print_json(summary)
    else:
        err_console.print(f"wrote {out} ({num} samples, {solver}, NFE {result.nfe}, {result.seconds:.2f} s)", highlight=False)
