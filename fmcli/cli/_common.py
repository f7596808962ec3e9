"""What every command shares: one-line errors, consoles, progress bars, JSON, and the options declared once.

The sampling options (``--solver``, ``--steps``, ``--time-grid``, ``--rtol``, ``--atol``, ``--cfg``,
``--guidance-interval``, ``--guide``, ``--guide-label``, ``--seed``, ``--batch-size``) are declared ONCE, in
``SAMPLING_OPTIONS``, with one help text each;
``@sampling_options()`` gives them to a command, which receives a validated
``fmcli.sampling.SamplingOptions``. A new sampling option is a field of ``SamplingOptions`` and an
entry here, nothing else.
"""

import functools
import inspect
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fmcli import registry
from fmcli.errors import FMError
from fmcli.sampling.solvers.grids import TIME_GRIDS

STARTED: float | None = None  # when main() began: `fm train --max-time` counts torch's import too
console = Console()  # results (tables) on stdout
err_console = Console(stderr=True, soft_wrap=True)  # progress and messages on stderr; a message is one line


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
    hidden = not sys.stderr.isatty() and os.environ.get("FM_PROGRESS") != "1"
    return Progress(*columns, console=err_console, transient=False, disable=hidden)


def print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


def parse_list(text: str, option: str, kind: Callable[[str], Any] = str) -> list:
    """``--option a,b,c`` -> [kind(a), kind(b), kind(c)], with one clear error for a bad item or an empty list."""
    try:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        example = "2,5,10" if kind is int else "1e-3,1e-5" if kind is float else "a,b"
        raise FMError(f"{option} takes a comma-separated list, e.g. {example} (got {text!r})") from None
    if not values:
        raise FMError(f"{option} is empty")
    return values


def parse_guides(text: str, option: str = "--guides") -> list[str | None]:
    """``--guides none,runs/a/guide.safetensors`` -> [None, "runs/a/guide.safetensors"] (none: no guide)."""
    return [None if guide.lower() == "none" else guide for guide in parse_list(text, option)]


class StageProgress:
    """A ``progress(stage, done, total)`` callback: one rich bar per stage, created on its first report."""

    def __init__(self, bar: Progress):
        self.bar, self.tasks = bar, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)


def parse_int_list(text: str, option: str) -> list[int]:
    return parse_list(text, option, int)


def builtin_names(kind: str) -> str:
    """fm's own solvers or data sets, for --help texts. Help never loads plugins (a plugin's import is its own
    code, torch perhaps, and a broken one must not break --help); completion and `fm plugins` list them too."""
    from fmcli.builtins import BUILTIN_NAMES

    return ", ".join(BUILTIN_NAMES[kind])


def solver_help() -> str:
    return f"ODE solver: {builtin_names('solvers')}, or a plugin's (`fm plugins` lists all)."


def dataset_help() -> str:
    return (
        f"A data set ({builtin_names('datasets')}, or a plugin's: `fm plugins`) or a folder of images "
        "(sub-folders = classes)."
    )


# --- options several commands share ---------------------------------------------------------------

CheckpointArgument = Annotated[
    Path, typer.Argument(help="A .safetensors checkpoint or a run folder (uses its last.safetensors).")
]
WeightsOption = Annotated[str, typer.Option(help="ema (the default, smoother) or raw weights.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
ThreadsOption = Annotated[
    Optional[int],
    typer.Option(
        help="CPU threads torch computes with (OMP_NUM_THREADS fixes it too). \\[default: as many as the cores this "
        "process may use minus those other processes keep busy, adapted while it works]",
        show_default=False,
    ),
]


def use_threads(threads: int | None, *, quiet: bool = False) -> dict:
    """Set torch's CPU threads for this command (``fmcli.runtime.threads``); say the choice when it is not plainly
    every core (fewer because the machine is busy, more than the cores, a bad OMP_NUM_THREADS). Returns it for
    --json: {"threads": N, "threads_source": ...}."""
    from fmcli.runtime.threads import configure

    choice = configure(threads)
    if choice.warning:
        err_console.print(f"warning: {choice.warning}", highlight=False)
    unusual = choice.threads < choice.usable if choice.adaptive else choice.threads > choice.usable
    if not quiet and (unusual or choice.warning):
        err_console.print(choice.describe(), highlight=False)
    return {"threads": choice.threads, "threads_source": choice.source}


CFG_HELP = (
    "Guidance scale S: v_ref + S (v_cond - v_ref), v_ref the unconditional velocity (classifier-free) or the "
    "--guide's. 1 is plain conditional sampling; larger S gives more class-typical samples at the cost of "
    "diversity (and a second network pass where it guides). \\[default: the setting fm tune --guidance stored "
    "beside the checkpoint; else 2 for --class on a model trained with label dropout (or with a --guide), else 1; "
    "always 1 in fm eval so FID measures the model itself]"
)
INTERVAL_HELP = (
    "Guide only for t in [LO,HI] (t = 1 noise, t = 0 data), e.g. 0.2,0.8: elsewhere one conditional pass, no "
    "guidance (Kynkäänniemi et al. 2024); full: everywhere. \\[default: the stored setting's, else full]"
)
GUIDE_HELP = (
    "Guide with this checkpoint's velocity instead of the model's own unconditional one: an earlier checkpoint of "
    "the same run (the run's guide.safetensors) or a smaller model of the same data, whose errors the model "
    "outgrew (Karras et al. 2024); none: classifier-free. \\[default: the stored setting's, else none]"
)
GUIDE_LABEL_HELP = (
    "Which velocity of the --guide: null (its unconditional velocity: classifier-free guidance against a weaker "
    "model) or same (its velocity for the sample's own class: autoguidance). \\[default: the stored setting's, "
    "else null]"
)

# field of SamplingOptions -> (its command-line option, its default). The defaults are those of
# SamplingOptions (tests/test_validation.py checks they agree); None means "the checkpoint's default".
SAMPLING_OPTIONS: dict[str, tuple[Any, Any]] = {
    "solver": (
        Annotated[
            Optional[str],
            typer.Option(
                help=f"{solver_help()} \\[default: heun; meanflow for models trained for few-step sampling]",
                autocompletion=registry.completer(registry.solvers),
                show_default=False,
            ),
        ],
        None,
    ),
    "steps": (
        Annotated[
            Optional[str],
            typer.Option(
                help="Steps of a fixed-step solver (NFE = steps x evaluations per step; adaptive solvers choose "
                "their own); fm eval --sweep takes a list, e.g. 2,5,10. \\[default: 20; 4 with the meanflow sampler]",
                show_default=False,
            ),
        ],
        None,
    ),
    "time_grid": (
        Annotated[
            Optional[str],
            typer.Option(
                help=f"Time grid of fixed-step solvers: {', '.join(TIME_GRIDS)} (the last two are dense near t = 0, "
                "the data end), or tuned (the grid `fm tune` fitted for this checkpoint, solver, steps and cfg). "
                "\\[default: tuned when `fm tune` made one for these settings, else uniform]",
                show_default=False,
            ),
        ],
        None,
    ),
    "rtol": (Annotated[float, typer.Option(help="Relative tolerance of adaptive solvers, in (0, 1).")], 1e-5),
    "atol": (Annotated[float, typer.Option(help="Absolute tolerance of adaptive solvers, in (0, 1).")], 1e-5),
    "cfg": (Annotated[Optional[float], typer.Option(help=CFG_HELP, show_default=False)], None),
    "guidance_interval": (
        Annotated[Optional[str], typer.Option(help=INTERVAL_HELP, show_default=False, metavar="LO,HI")],
        None,
    ),
    "guide": (Annotated[Optional[str], typer.Option(help=GUIDE_HELP, show_default=False, metavar="CKPT")], None),
    "guide_label": (
        Annotated[Optional[str], typer.Option(help=GUIDE_LABEL_HELP, show_default=False, metavar="null|same")],
        None,
    ),
    "seed": (
        Annotated[
            int, typer.Option(help="Seed of the noise: the same checkpoint, seed and options give the same samples.")
        ],
        0,
    ),
    "batch_size": (
        Annotated[
            Optional[int],
            typer.Option(
                help="Samples per solver call (memory vs speed). \\[default: chosen from the model, the image size, "
                "the guidance and the free memory: 1 GiB of activations a call on a CPU at most, up to 500]",
                show_default=False,
            ),
        ],
        None,
    ),
}


def sampling_options(
    *, exclude: tuple[str, ...] = (), defaults: dict[str, Any] | None = None, step_lists: bool = False
) -> Callable:
    """Decorate a Typer command that takes ``sampling: SamplingOptions``: the command gets one option per
    entry of ``SAMPLING_OPTIONS`` (except ``exclude``; ``defaults`` overrides defaults) in place of that
    parameter, and is called with the validated ``SamplingOptions`` they make. ``--steps`` takes one number;
    with ``step_lists`` a comma-separated list, which the command also receives as ``step_counts`` (the
    options then carry its first value)."""
    defaults = defaults or {}

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        names = [name for name in SAMPLING_OPTIONS if name not in exclude]
        options = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=SAMPLING_OPTIONS[name][0],
                default=defaults.get(name, SAMPLING_OPTIONS[name][1]),
            )
            for name in names
        ]
        parameters = []
        for parameter in signature.parameters.values():  # the options go where ``sampling`` was
            if parameter.name == "sampling":
                parameters += options
            elif parameter.name != "step_counts":
                parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            from fmcli.sampling.options import SamplingOptions

            chosen = {name: kwargs.pop(name) for name in names}
            counts = parse_int_list(chosen["steps"], "--steps") if chosen.get("steps") is not None else [None]
            if len(counts) > 1 and not step_lists:
                raise FMError(f"--steps takes one number (got {chosen['steps']!r})")
            if "steps" in chosen:
                chosen["steps"] = counts[0]
            extra = {"step_counts": counts} if step_lists else {}
            return command(sampling=SamplingOptions(**chosen), **extra, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate
