"""``fm sample``: draw samples from a checkpoint with any registered solver."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmcli.cli._common import (
    CheckpointArgument,
    DeviceOption,
    JsonOption,
    ThreadsOption,
    WeightsOption,
    cli_errors,
    err_console,
    print_json,
    progress_bar,
    sampling_options,
    use_threads,
)
from fmcli.errors import FMError


@cli_errors
@sampling_options()
def sample_command(
    checkpoint: CheckpointArgument,
    out: Annotated[Path, typer.Option(help="Output: grid.png, samples.npz, or a folder of PNGs.")] = Path(
        "samples.png"
    ),
    num: Annotated[
        Optional[int], typer.Option(help="Number of samples. \\[default: 64; with --prompts one per prompt]")
    ] = None,
    class_: Annotated[
        Optional[str], typer.Option("--class", help="Class index, class name, or 'all' (an equal number per class).")
    ] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Text models: what to draw, e.g. 'a red triangle'.")] = None,
    prompts: Annotated[
        Optional[Path],
        typer.Option(help="Text models: a file of prompts, one a line; samples in that order, the .npz keeps them."),
    ] = None,
    negative_prompt: Annotated[
        Optional[str],
        typer.Option(help="Text models: what guidance steers away from, in place of the empty prompt."),
    ] = None,
    sampling=None,
    weights: WeightsOption = "ema",
    format: Annotated[Optional[str], typer.Option(help="png, folder or npz (default: from --out).")] = None,
    nrow: Annotated[Optional[int], typer.Option(help="Images per row of the PNG grid.")] = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Sample from a trained model by integrating its velocity from t = 1 (noise) to t = 0 (data).

    Examples:

      fm sample runs/demo/last.safetensors --class 6 --solver heun --steps 20 --num 64 --out six.png

      fm sample runs/demo --class all --num 100 --nrow 10 --out grid.png

      fm sample runs/demo --class 3 --cfg 2 --solver dopri5 --out three.npz

      fm sample runs/demo --class all --cfg 2.5 --guidance-interval 0.2,0.8 --guide runs/demo/guide.safetensors

      fm sample runs/demo --class all --solver euler --steps 4 --time-grid tuned --out tuned.png  (after fm tune)

      fm sample runs/shapes --prompt "a red triangle on a black background" --num 16 --out triangle.png
    """
    from fmcli.data.base import to_uint8
    from fmcli.device import resolve_device
    from fmcli.io.checkpoint import load_checkpoint
    from fmcli.io.images import check_output_folder, output_format, write_samples
    from fmcli.sampling.generate import generate
    from fmcli.sampling.guidance import guidance_note, parse_classes
    from fmcli.sampling.prompts import check_condition_kind, negative_condition, prompt_condition, read_prompts, spread

    wanted = read_prompts(prompt, prompts)
    num = num if num is not None else (len(wanted) if prompts is not None else 64)
    fmt = output_format(out, format)
    if fmt == "folder" and out.exists() and any(out.iterdir()):
        raise FMError(f"output folder {out} is not empty; choose another --out")
    if fmt != "folder":  # a folder output is created below; a file's folder must exist, said before sampling
        check_output_folder(out, fmt)
    if num < 1:
        raise FMError(f"--num must be at least 1 (got {num})")
    machine = use_threads(threads, quiet=json_output)
    loaded = load_checkpoint(checkpoint, device=resolve_device(device), weights=weights)
    sampling = sampling.for_model(loaded.meta)  # the checkpoint's own solver and steps where none were given
    check_condition_kind(loaded, wanted, class_ is not None)
    reference, notes = negative_condition(loaded, negative_prompt, wanted, num)
    if wanted is not None:
        wanted = spread(wanted, num)
        classes, more = prompt_condition(loaded, wanted)
        for note in dict.fromkeys(more + notes):
            err_console.print(f"note: {note}", highlight=False, markup=False)
    else:
        classes = parse_classes(class_, num, loaded.meta.class_names)
    if fmt == "folder":
        out.mkdir(parents=True, exist_ok=True)
    with progress_bar() as bar:
        task = bar.add_task("sample", total=num)
        result = generate(
            loaded,
            sampling,
            num=num,
            condition=classes,
            reference=reference,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    if loaded.meta.data["kind"] != "points":  # images (a latent model's come decoded)
        labels = None if wanted is not None else result.labels
        written = write_samples(out, to_uint8(result.samples), labels, fmt, nrow=nrow, prompts=wanted)
    else:
        written = write_samples(out, None, result.labels, fmt, points=result.samples)
    summary = {
        "out": str(out),
        "files": len(written),
        "num": num,
        "solver": sampling.solver,
        "steps": sampling.steps,
        "time_grid": result.time_grid,
        "nfe": result.nfe,
        "passes": result.passes,
        "seconds": round(result.seconds, 3),
        "images_per_s": round(num / max(result.seconds, 1e-9), 1),
        "device": str(loaded.device),
        "class": class_,
        "prompts": None if wanted is None else list(dict.fromkeys(wanted)),
        "negative_prompt": negative_prompt,
        "cfg": result.cfg,
        "guidance": result.guidance.setting.as_json() | {"source": result.guidance.source},
        "seed": sampling.seed,
        "batch_size": result.batch_size,
        **machine,
    }
    if json_output:
        print_json(summary)
    else:
        err_console.print(
            f"wrote {out} ({num} samples, {sampling.solver}{', tuned grid' if result.time_grid == 'tuned' else ''}, "
            f"{guidance_note(result)}NFE {result.nfe}, {result.seconds:.2f} s)",
            highlight=False,
        )
