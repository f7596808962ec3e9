"""The ``fm`` command: one module per command, each a thin Typer wrapper that validates its options and calls a
plain function of the core; ``_common`` (one-line errors, progress, the sampling options declared once) and
``_training`` (the training options, generated from ``TrainConfig``) are shared.

May import everything in fmcli; the core never imports this room (nor Typer or rich). Command modules import
their core lazily, inside the command, so ``fm --help`` and shell completion never import torch.
"""

import time

import typer

from fmcli import __version__
from fmcli.cli import _common, animate, autoencoder, data, distill, eval, info, plugins, sample, serve, train, tune

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
app.command("tune")(tune.tune_command)
app.command("info")(info.info_command)
app.command("serve")(serve.serve_command)
app.command("plugins")(plugins.plugins_command)
app.add_typer(data.app, name="data")
app.add_typer(autoencoder.app, name="autoencoder")


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
    _common.STARTED = time.perf_counter()
    from fmcli.cli.memory import keep_freed_memory

    keep_freed_memory()  # ctypes only, no torch: the CPU computes instead of faulting in fresh pages
    from fmcli.runtime.threads import mark_start

    mark_start()  # the CPU counters now: the thread count is chosen from the load seen while torch imports
    app()
