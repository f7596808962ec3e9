"""``fm data``: build the decoded cache of an image folder ahead of time, show what is cached, and describe a data
set (items, classes, captions)."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from fmcli import registry
from fmcli.cli._common import cli_errors, console, dataset_help, err_console, print_json, progress_bar
from fmcli.data import DEFAULT_IMAGE_SIZE

app = typer.Typer(
    name="data",
    help="Image folders: decode once into a memory-mapped cache ($FM_CACHE_DIR/folders), list what is cached; "
    "describe any data set (items, classes, captions).",
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


LONGEST_SHOWN = 80  # characters of the longest caption shown in text (--json has it whole)
CLASSES_SHOWN = 10


@app.command("describe")
@cli_errors
def describe_command(
    target: Annotated[
        str,
        typer.Argument(help=dataset_help(), autocompletion=registry.completer(registry.datasets), show_default=False),
    ],
    split: Annotated[str, typer.Option(help="Which split: train or test where the data set has them.")] = "train",
    data_dir: Annotated[
        Optional[Path], typer.Option(help="Where a data set's files live (MNIST); default $FM_DATA_DIR.")
    ] = None,
    captions: Annotated[
        str,
        typer.Option(
            help="auto: read captions where the data has them (metadata.jsonl, metadata.csv, NAME.txt); "
            "none: ignore them; classes: the class names as captions."
        ),
    ] = "auto",
    caption_column: Annotated[
        str, typer.Option(help="The metadata column holding the captions (Hugging Face's default: text).")
    ] = "text",
    json_output: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False,
) -> None:
    """Describe a data set or an image folder: items, item shape, classes, and its captions (coverage, captions
    per item, vocabulary, the longest), attributes and held-out pairs when it has them.

    A folder is loaded as `fm train` loads it (at 32 px), so its decoded cache is built here if it was not.

    Examples:

      fm data describe shapes

      fm data describe shapes --split test --json

      fm data describe ~/data/pokemon --caption-column caption

      fm data describe ./flowers --captions classes
    """
    from fmcli.data.base import LoadOptions
    from fmcli.data.captions import summarise
    from fmcli.data.resolve import load_data

    options = LoadOptions(split=split, data_dir=data_dir, captions=captions, caption_column=caption_column)
    summary = summarise(load_data(target, options))
    if json_output:
        print_json(summary)
        return
    for line in describe_lines(summary):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def describe_lines(summary: dict) -> list[str]:
    """``fm data describe``'s text: one line per fact."""
    shape = "x".join(map(str, summary["shape"]))
    noun = {"image": "images", "points": "points"}.get(summary["kind"], "items")
    lines = [f"{summary['name']} ({summary['split']}): {summary['items']} {noun} of {shape}"]
    if summary["class_names"]:
        names = summary["class_names"]
        shown = ", ".join(names[:CLASSES_SHOWN]) + (", ..." if len(names) > CLASSES_SHOWN else "")
        lines.append(f"classes: {len(names)} ({shown})")
    if summary["skipped_files"]:
        lines.append(f"skipped: {summary['skipped_files']} unreadable file(s)")
    caption = summary["captions"]
    if caption is None:
        lines.append("captions: none")
    else:
        per = caption["per_item"]
        spread = f"{per['min']}" if per["min"] == per["max"] else f"{per['min']}-{per['max']}"
        lines.append(
            f"captions: {caption['captioned']} of {caption['total']} items captioned (from {caption['source']}); "
            f"{spread} per item, mean {per['mean']:.2f}"
        )
        longest = caption["longest"]["text"]
        if len(longest) > LONGEST_SHOWN:
            longest = longest[: LONGEST_SHOWN - 3] + "..."
        lines.append(f"vocabulary: {caption['vocabulary']} distinct words")
        words = caption["longest"]["words"]
        lines.append(f'longest caption: {words} word{"" if words == 1 else "s"}: "{longest}"')
        if caption["missing_files"]:
            lines.append(f"metadata rows naming no image here: {caption['missing_files']}")
    if summary["attributes"]:
        attributes = ", ".join(f"{name} ({len(names)})" for name, names in summary["attributes"].items())
        lines.append(f"attributes: {attributes}")
    if summary["held_out"]:
        pairs = ", ".join(" ".join(pair) for pair in summary["held_out"])
        lines.append(f"held out of train: {pairs}")
    return lines
