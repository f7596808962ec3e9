"""What ``fm train`` and ``fm distill`` share: their options, generated from ``TrainConfig``, and the run itself.

``@train_options()`` gives a command one option per field of ``fmcli.training.config.TrainConfig`` (its help
text is the field's; ``exclude`` leaves some out) plus the model-shape options (``MODEL_OPTIONS``), and calls
it with ``overrides``: the fields the user gave, parsed. A new training option is a field of ``TrainConfig``;
``fm train``, ``fm distill`` and ``--config`` TOML all see it.
"""

import functools
import inspect
import os
import signal
import types
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Annotated, Any, Optional, Union, get_args, get_origin

import typer

from fmcli.cli._common import err_console, parse_int_list, parse_list, print_json, progress_bar
from fmcli.training.budget import parse_duration
from fmcli.training.config import MODEL_OPTIONS, TrainConfig


def _base_type(annotation: Any) -> type:
    """int for ``int | None``, str for ``str``, ...; list and dict as they are."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    return get_origin(annotation) or annotation


def _default_text(field, text: str | None) -> str:
    if text is not None:
        return text
    default = field.default_factory() if field.default is MISSING else field.default
    if isinstance(default, bool):
        return "on" if default else "off"
    return "none" if default is None else f"{default:g}" if isinstance(default, float) else str(default)


def _option_for(field, default_text: str | None) -> tuple[Any, Callable[[Any], Any]]:
    """(the Typer annotation, text -> value) of one TrainConfig field. Every option defaults to None: not given."""
    meta, kind = field.metadata, _base_type(field.type)
    name = "--" + field.name.replace("_", "-")
    shown = _default_text(field, default_text or meta["default_text"])
    help_text = f"{meta['help']} \\[default: {shown}]"  # escaped: rich markup would take [default: ...] for a tag
    if meta["parse"] == "duration":
        return Annotated[Optional[str], typer.Option(name, help=help_text, show_default=False)], parse_duration
    if meta["parse"] == "list":
        option = Annotated[Optional[str], typer.Option(name, help=help_text, show_default=False)]
        return option, lambda text: parse_list(text, name)
    if kind is bool and meta["flag"] and "/" not in meta["flag"]:  # a one-way flag: sets the opposite of the default
        option = Annotated[bool, typer.Option(meta["flag"], help=meta["help"])]
        return option, lambda given: (not field.default) if given else None
    flag = meta["flag"] or (f"{name}/--no-{name[2:]}" if kind is bool else name)
    return Annotated[Optional[kind], typer.Option(flag, help=help_text, show_default=False)], lambda value: value


def _model_option(name: str) -> tuple[Any, Callable[[Any], Any]]:
    key, help_text, parse = MODEL_OPTIONS[name]
    flag = "--" + name.replace("_", "-")
    if parse == "int":
        return Annotated[Optional[int], typer.Option(flag, help=help_text)], lambda value: value
    if parse == "int_list":
        return Annotated[Optional[str], typer.Option(flag, help=help_text)], lambda text: parse_int_list(text, flag)
    return Annotated[Optional[str], typer.Option(flag, help=help_text)], (
        lambda text: [] if text == "none" else parse_int_list(text, flag)
    )


def train_options(
    *, exclude: tuple[str, ...] = (), model: bool = True, default_text: dict[str, str] | None = None
) -> Callable:
    """Decorate a command that takes ``overrides: dict``: it gets one option per TrainConfig field with a
    command-line option (``cli``) not in ``exclude`` (and the MODEL_OPTIONS when ``model``), and is called with
    the given ones as ``overrides`` (model options under ``"model"``). ``default_text`` replaces the
    "[default: ...]" of some options (fm distill's own defaults)."""
    texts = default_text or {}
    chosen = [f for f in fields(TrainConfig) if f.metadata.get("cli", True) and f.name not in exclude]
    table = {f.name: _option_for(f, texts.get(f.name)) for f in chosen}
    model_table = {name: _model_option(name) for name in MODEL_OPTIONS} if model else {}

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        options = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=annotation,
                default=False if get_args(annotation)[0] is bool else None,
            )
            for name, (annotation, _) in (table | model_table).items()
        ]
        parameters = []
        for parameter in signature.parameters.values():  # the options go where ``overrides`` was
            if parameter.name == "overrides":
                parameters += options
            else:
                parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            overrides = {}
            for name, (_, parse) in table.items():
                value = kwargs.pop(name)
                if value is not None and (value := parse(value)) is not None:
                    overrides[name] = value
            shape = {
                MODEL_OPTIONS[name][0]: parse(value)
                for name, (_, parse) in model_table.items()
                if (value := kwargs.pop(name)) is not None
            }
            if shape:
                overrides["model"] = shape
            return command(overrides=overrides, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


def is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun job (they train but say nothing)."""
    return os.environ.get("RANK", "0") == "0"


class RichCallbacks:
    """fmcli.training.events.Callbacks drawn with rich: a progress bar with loss and images/s, messages on stderr."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.progress = progress_bar("loss", "img/s")
        self.task = None

    def on_start(self, total_steps: int, start_step: int, info: dict) -> None:
        if not self.quiet:
            processes = f" x {info['world_size']} processes" if info["world_size"] > 1 else ""
            condition = "captioned" if info.get("captions") else f"{info['classes'] or 'no'} classes"
            err_console.print(
                f"training on {info['data']} ({info['size']:,} items, {condition}) "
                f"with {info['parameters']:,} parameters on {info['device']}{processes} -> {info['run_dir']}",
                highlight=False,
            )
        self.progress.start()
        name = info.get("task", "train")  # "autoencoder": a latent run's autoencoder, trained first
        self.task = self.progress.add_task(name, total=total_steps, completed=start_step, loss="-", **{"img/s": "-"})

    def on_plan(self, total_steps: int) -> None:
        self.progress.update(self.task, total=total_steps)

    def on_step(self, step: int) -> None:
        self.progress.update(self.task, completed=step)

    def on_log(self, record: dict) -> None:
        self.progress.update(self.task, loss=f"{record['loss']:.4f}", **{"img/s": f"{record['images_per_s']:.0f}"})
        if not self.quiet and self.progress.disable:
            err_console.print(
                f"step {record['step']}: loss {record['loss']:.4f}, lr {record['lr']:.2e}, "
                f"{record['images_per_s']:.0f} images/s",
                highlight=False,
            )

    def on_message(self, text: str) -> None:
        err_console.print(text, highlight=False)

    def close(self) -> None:
        self.progress.stop()


def run_training(overrides: dict, *, config, resume: str | None, allow_change: bool, json_output: bool) -> None:
    """Train with a progress bar; Ctrl-C/SIGTERM checkpoint and exit 128 + signal; print the summary."""
    from fmcli.cli import _common
    from fmcli.training.events import TrainingInterrupted
    from fmcli.training.loop import train

    callbacks = RichCallbacks(quiet=json_output)
    try:
        result = train(
            overrides,
            config_file=config,
            resume=resume,
            allow_change=allow_change,
            callbacks=callbacks,
            started=_common.STARTED,
        )
    except TrainingInterrupted as stop:
        callbacks.close()
        if is_main_process():
            name = signal.Signals(stop.signum).name if stop.signum else "signal"
            typer.echo(
                f"{name}: stopped at step {stop.step}; checkpoint {stop.checkpoint}. "
                f"Resume with: fm train --resume {stop.run_dir}",
                err=True,
            )
        raise typer.Exit(128 + int(stop.signum or 2)) from None
    finally:
        callbacks.close()
    if not is_main_process():  # under torchrun rank 0 reports for everyone
        return
    summary = {
        "run_dir": str(result.run_dir),
        "checkpoint": str(result.checkpoint),
        "step": result.step,
        "loss": result.loss,
        "seconds": round(result.seconds, 2),
        "skipped_steps": result.skipped,
    }
    if json_output:
        print_json(summary)
    else:
        err_console.print(
            f"done: step {result.step}, loss {result.loss:.4f}, {result.seconds:.0f} s -> "
            f"{result.run_dir}/last.safetensors",
            highlight=False,
        )
