"""The ``fm`` command: one module per command, each a thin wrapper over a plain core function."""

import time

import typer

from fmcli import __version__
from fmcli.cli import animate, data, distill, eval, info, plugins, sample, train

STARTED: float | None = None  # when main() began: `fm train --max-time` counts torch's import too

app = typer.Typer(
    name="fm",
    help="Train, sample, animate and evaluate flow-matching generative models.\n\n"
    "Time convention: t = 0 is data, t = 1 is noise; sampling integrates from t = 1 to t = 0.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command("train")(train.train_command)
app.command("distill")(distill.distill_command)
app.command("sample")(sample.sample_command)
app.command("animate")(animate.animate_command)
app.command("eval")(eval.eval_command)
app.command("info")(info.info_command)
app.command("plugins")(plugins.plugins_command)
app.add_typer(data.app, name="data")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """fm: flow matching from the command line."""


def main() -> None:
    global STARTED
    STARTED = time.perf_counter()
    from fmcli.memory import keep_freed_memory

    keep_freed_memory()  # ctypes only, no torch: the CPU computes instead of faulting in fresh pages
    app()
