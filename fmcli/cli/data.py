"""``fm data``: build the decoded cache of an image folder ahead of time, and show what is cached."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from fmcli.cli._common import cli_errors, console, err_console, print_json, progress_bar
from fmcli.data import DEFAULT_IMAGE_SIZE

app = typer.Typer(
    name="data",
    help="Image folders: decode once into a memory-mapped cache ($FM_CACHE_DIR/folders), list what is cached.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@app.command("prepare")
@cli_errors
def prepare_command(
    folder: Annotated[Path, typer.Argument(help="A folder of images (sub-folders = classes).")],
    image_size: Annotated[
        int,
        typer.Option(
            help="Resize the shorter side to this and centre-crop; use the same value as `fm train --image-size`."
        ),
    ] = DEFAULT_IMAGE_SIZE,
    channels: Annotated[
        Optional[int],
        typer.Option(help="Force 1 (grayscale) or 3 (RGB); default: from the images, as `fm train` does."),
    ] = None,
) -> None:
    """Decode every image of FOLDER once into the cache, so `fm train` maps it instead of decoding.

    Training builds the same cache on first use; preparing it ahead shows progress and the size on disk.

    Examples:

      fm data prepare ~/data/flowers --image-size 64

      FM_CACHE_DIR=/scratch/fm fm data prepare ./faces --image-size 128 --channels 3
    """
    from fmcli.data.base import LoadOptions
    from fmcli.data.cache import format_bytes, prepare_folder

    with progress_bar() as bar:
        task = bar.add_task("decoding", total=None)
        info = prepare_folder(
            folder,
            LoadOptions(image_size=image_size, channels=channels),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if info.skipped:
        examples = ", ".join(info.skipped_examples or [])
        err_console.print(
            f"warning: skipped {info.skipped} unreadable file(s), e.g. {examples}", markup=False, highlight=False
        )
    shape = "x".join(str(n) for n in info.shape)
    what = "already cached" if info.already_cached else "cached"
    classes = f", {len(info.class_names)} classes" if info.class_names else ""
    console.print(
        f"{what} {info.count} images of {shape}{classes}: {format_bytes(info.size_bytes)} at {info.path}",
        soft_wrap=True,
        highlight=False,
    )


@app.command("info")
@cli_errors
def info_command(
    folder: Annotated[
        Optional[Path],
        typer.Argument(
            help="Only this folder's entries (and whether they still match its files). Default: every cached folder."
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the entries as a JSON list.")] = False,
) -> None:
    """List cached image folders: images, shape, classes, size on disk, and whether each is current.

    Examples:

      fm data info

      fm data info ~/data/flowers --json
    """
    from fmcli.data.cache import cache_dir, cached_folders, format_bytes

    entries = cached_folders(folder)
    if json_output:
        print_json([entry.to_json() for entry in entries])
        return
    if not entries:
        where = f"for {folder}" if folder is not None else f"in {cache_dir()}"
        console.print(f"nothing cached {where}; `fm data prepare DIR` builds it")
        return
    table = Table(title=f"fm data cache ({cache_dir()}); --json for files and dates", title_justify="left")
    table.add_column("folder", overflow="fold", ratio=1)  # long paths wrap instead of losing their end
    for column in ("images", "shape", "classes", "skipped", "size"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("state", overflow="fold")
    for entry in entries:
        if entry.problem:
            state = f"damaged ({entry.problem}): rebuilt on next load"
        else:
            state = {True: "current", False: "stale: files changed", None: "-"}[entry.current]
        table.add_row(
            entry.source or entry.path.name,
            str(entry.count),
            "x".join(map(str, entry.shape)) or "-",
            str(len(entry.class_names)) if entry.class_names else "-",
            str(entry.skipped),
            format_bytes(entry.size_bytes),
            state,
        )
    console.print(table)
