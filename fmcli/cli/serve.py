"""``fm serve``: a local page to sample from the checkpoints under a folder (the ``serve`` extra: Gradio)."""

from pathlib import Path
from typing import Annotated

import typer

from fmcli.cli._common import DeviceOption, ThreadsOption, cli_errors, err_console


@cli_errors
def serve_command(
    checkpoints: Annotated[
        Path, typer.Argument(help="A checkpoint, a run folder or a folder of runs; nothing outside it is opened.")
    ],
    host: Annotated[
        str, typer.Option(help="Address to listen on. The default serves this machine only; 0.0.0.0 the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    max_images: Annotated[int, typer.Option(help="Most images one request may ask for.")] = 64,
    max_steps: Annotated[int, typer.Option(help="Most steps one request may ask for.")] = 200,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
) -> None:
    """Serve a local page to sample from checkpoints, with two settings side by side.

    Choose checkpoint, class, seed, solver, steps, guidance; see the grid, NFE, time, animation and fm info.

    Needs the serve extra: pip install 'fmcli\\[serve]'. Listens on this machine only unless --host says otherwise.

    Works offline; one sampling at a time (further requests queue); request sizes are capped.

    Examples:

      fm serve runs/                  # every run under runs/, at http://localhost:7860

      fm serve runs/demo --port 8000

      fm serve runs/ --host 0.0.0.0   # the network can reach it: anyone there can use this machine
    """
    from fmcli.cli import _common
    from fmcli.runtime.threads import parse_count
    from fmcli.serve.limits import Limits
    from fmcli.serve.server import ServeOptions, serve

    limits = Limits(max_images=max_images, max_steps=max_steps)
    count = None if threads is None else parse_count(threads, "--threads")  # checked before the page starts
    options = ServeOptions(root=checkpoints, host=host, port=port, device=device, limits=limits, threads=count)
    serve(options, say=lambda line: err_console.print(line, highlight=False, markup=False), started=_common.STARTED)
