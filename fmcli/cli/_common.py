"""What every command shares: one-line errors, the consoles, progress bars, JSON output."""

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fmcli.errors import FMError

console = Console()                 # results (tables) on stdout
err_console = Console(stderr=True)  # progress and messages on stderr


def cli_errors(func: Callable) -> Callable:
    """Turn FMError (and unexpected errors) into one line on stderr and exit code 1; FM_DEBUG=1 shows tracebacks."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except FMError as error:
            if os.environ.get("FM_DEBUG") == "1":
                raise
            if os.environ.get("RANK", "0") == "0":  # under torchrun, say it once
                typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as error:  # a bug or an environment problem: still one line unless debugging
            if os.environ.get("FM_DEBUG") == "1":
                raise
            first = (str(error).splitlines() or [""])[0][:300]
            typer.echo(f"error: {type(error).__name__}: {first} (set FM_DEBUG=1 for the traceback)", err=True)
            raise typer.Exit(1) from None

    return wrapper


def progress_bar(*fields: str) -> Progress:
    """A rich progress bar on stderr with extra ``{task.fields[name]}`` columns."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, console=err_console, transient=False, disable=not sys.stderr.isatty() and os.environ.get("FM_PROGRESS") != "1")


def print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


def parse_int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FMError(f"{option} takes comma-separated integers, e.g. 1,2,2 (got {text!r})") from None
    if not values:
        raise FMError(f"{option} is empty")
    return values


def registered_names(table: Callable[[], dict]) -> str:
    """Registered names for --help text (a broken plugin must not break --help itself)."""
    try:
        return ", ".join(table())
    except Exception:  # noqa: BLE001 - the command itself reports plugin errors properly
        return "see `fm plugins`"


def solver_help() -> str:
    from fmcli import registry

    return f"ODE solver: {registered_names(registry.solvers)}."


def dataset_help() -> str:
    from fmcli import registry

    return (f"A registered data set ({registered_names(registry.datasets)}) or a folder of images "
            f"(sub-folders = classes).")
