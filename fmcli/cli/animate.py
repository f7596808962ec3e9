"""``fm animate``: a GIF (or PNG filmstrip) of one sampling solve, from noise to data."""

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

SHOW_HELP = (
    "x: the state x_t; x0: the model's current guess of the final image, x̂0 = x_t - t v(x_t, t), sharp "
    "long before x_t is (one extra model evaluation per frame); both: the two side by side."
)


@cli_errors
@sampling_options()
def animate_command(
    checkpoint: CheckpointArgument,
    out: Annotated[
        Path,
        typer.Option(
            help="Output: name.gif (an animation) or name.png (a filmstrip of frames side by "
            "side). Its folder must exist; the file is written only when complete."
        ),
    ] = Path("animation.gif"),
    class_: Annotated[
        Optional[str], typer.Option("--class", help="Class index, class name, or 'all' (one grid row per class).")
    ] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Text models: what to draw, e.g. 'a red triangle'.")] = None,
    prompts: Annotated[
        Optional[Path], typer.Option(help="Text models: a file of prompts, one a line (one grid row per prompt).")
    ] = None,
    negative_prompt: Annotated[
        Optional[str], typer.Option(help="Text models: what guidance steers away from, in place of the empty prompt.")
    ] = None,
    num: Annotated[
        Optional[int],
        typer.Option(
            help="Images in the grid (default 16); with --class all, images PER "
            "CLASS (default 8). 2-D data: particles (default 512)."
        ),
    ] = None,
    frames: Annotated[
        Optional[int],
        typer.Option(
            help="Frames, evenly spaced in t from 1 (noise) to 0 (data), "
            "2..1000 (default 40 for a GIF, 8 for a filmstrip)."
        ),
    ] = None,
    fps: Annotated[int, typer.Option(help="Frames per second, 1..50 (GIF delays are whole centiseconds).")] = 12,
    hold: Annotated[float, typer.Option(help="Extra seconds on the final frame (0..60).")] = 1.5,
    loop: Annotated[bool, typer.Option("--loop/--no-loop", help="Repeat forever, or play once.")] = True,
    scale: Annotated[
        int,
        typer.Option(
            help="Integer nearest-neighbour magnification of images, 1..16; a 2-D plot is 128 x scale pixels square."
        ),
    ] = 4,
    show: Annotated[str, typer.Option(help=SHOW_HELP)] = "x",
    nrow: Annotated[
        Optional[int],
        typer.Option(
            help="Images per grid row (default: one row per class with --class all, else near square, as in fm sample)."
        ),
    ] = None,
    sampling=None,
    weights: WeightsOption = "ema",
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Animate sampling: frames of ONE solve from t = 1 (noise) to t = 0 (data), as a GIF or a PNG filmstrip.

    The frames are read from the solver's trajectory, so the last frame is exactly what
    `fm sample` draws with the same seed, solver and steps (enlarged by --scale). Each frame is
    captioned with its t; grayscale data stays gray. Long animations are bounded in memory:
    about frames x num x pixels x 4 bytes for the trajectory, then uint8 frames.
    For 2-D data, particles move over arrows of -v, the direction they travel while sampling.

    Examples:

      fm animate runs/demo/last.safetensors --class 9 --out nine.gif

      fm animate runs/demo/last.safetensors --class all --num 8 --out all.gif

      fm animate runs/demo --class 3 --show both --frames 8 --out three.png

      fm animate runs/toy/last.safetensors --out flow.gif

      fm animate runs/shapes --prompt "a blue ring on a white background" --out ring.gif
    """
    from fmcli.device import resolve_device
    from fmcli.io.checkpoint import load_checkpoint
    from fmcli.sampling.animate import (
        DEFAULT_FRAMES,
        AnimationSettings,
        check_settings,
        output_kind,
        render_animation,
        write_animation,
    )
    from fmcli.sampling.guidance import parse_classes
    from fmcli.sampling.prompts import check_condition_kind, negative_condition, prompt_condition, read_prompts

    wanted = read_prompts(prompt, prompts)
    kind = output_kind(out)
    settings = AnimationSettings(
        frames=frames if frames is not None else DEFAULT_FRAMES[kind],
        fps=fps,
        hold=hold,
        loop=loop,
        scale=scale,
        show=show,
        nrow=nrow,
    )
    check_settings(settings)
    machine = use_threads(threads, quiet=json_output)
    loaded = load_checkpoint(checkpoint, device=resolve_device(device), weights=weights)
    sampling = sampling.for_model(loaded.meta)  # the checkpoint's own solver and steps where none were given
    points = loaded.meta.data["kind"] == "points"
    check_condition_kind(loaded, wanted, class_ is not None)
    if wanted is not None and len(wanted) > 1:  # a file of prompts: one row each, like --class all
        per_class = num if num is not None else 8
        total, settings.nrow = per_class * len(wanted), settings.nrow or per_class
    elif class_ == "all":
        per_class = num if num is not None else 8
        total = per_class * max(1, loaded.meta.num_classes)
        if settings.nrow is None and not points:
            settings.nrow = per_class  # one row per class
    else:
        total = num if num is not None else (512 if points else 16)
    if total < 1:
        raise FMError(f"--num must be at least 1 (got {total})")
    reference, notes = negative_condition(loaded, negative_prompt, wanted, total)
    if wanted is not None:
        classes, more = prompt_condition(loaded, [p for p in wanted for _ in range(total // len(wanted))])
        for note in dict.fromkeys(more + notes):
            err_console.print(f"note: {note}", highlight=False, markup=False)
    else:
        classes = parse_classes(class_, total, loaded.meta.class_names)
    with progress_bar() as bar:
        tasks = {"solve": bar.add_task("solve", total=total), "render": bar.add_task("render", total=settings.frames)}
        animation = render_animation(
            loaded,
            sampling,
            num=total,
            classes=classes,
            settings=settings,
            reference=reference,
            progress=lambda stage, done, count: bar.update(tasks[stage], completed=done, total=count),
        )
    size = write_animation(out, animation, settings)
    width, height = animation.frames[0].size
    summary = {
        "out": str(out),
        "format": kind,
        "frames": len(animation.frames),
        "fps": fps if kind == "gif" else None,
        "width": width,
        "height": height,
        "bytes": size,
        "num": total,
        "class": class_,
        "prompts": wanted,
        "show": show,
        "solver": sampling.solver,
        "steps": sampling.steps,
        "time_grid": animation.result.time_grid,
        "nfe": animation.nfe,
        "extra_nfe": animation.extra_nfe,
        "passes": animation.result.passes,
        "seed": sampling.seed,
        "seconds": round(animation.seconds, 3),
        **machine,
    }
    if json_output:
        print_json(summary)
    else:
        err_console.print(
            f"wrote {out} ({len(animation.frames)} frames of {width}x{height}, {size / 1024:.0f} KB; "
            f"{sampling.solver}{_grid_note(animation.result.time_grid)}, NFE {animation.nfe} + {animation.extra_nfe} "
            "for the pictures)",
            highlight=False,
        )


def _grid_note(label: str) -> str:
    return ", tuned grid" if label == "tuned" else ""
