"""The command reference of the documentation, generated from the Typer app itself so that it cannot drift.

Each ``<!-- fm:cli NAME -->`` marker on a page of docs/ becomes, when the site is built (docs/hooks.py), the
reference of ``fm NAME``: its usage, its help text and examples, and every argument and option with the help and
default that ``fm NAME --help`` prints (``fm`` itself: the global options and the table of commands; a group such as
``fm data``: each of its sub-commands). tests/test_docs.py checks that every option ``--help`` lists is on the page
and that every command has a page in the navigation.

Reads the click commands Typer builds (``typer.main.get_command``): imports ``fmcli.cli`` and Typer, never torch.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- fm:cli (?P<name>[\w-]+) -->")
ROOT = "fm"


def root_command() -> Any:
    """The click command behind ``fm`` (a group), as Typer builds it for the command line."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # the checkout's fmcli, installed or not
    import typer

    from fmcli.cli import app

    return typer.main.get_command(app)


def subcommands(command: Any) -> dict[str, Any]:
    """A group's visible sub-commands by name, in the order ``--help`` lists them (empty for a plain command)."""
    found = getattr(command, "commands", None) or {}
    return {name: sub for name, sub in found.items() if not getattr(sub, "hidden", False)}


def top_level_commands(root: Any | None = None) -> list[str]:
    """``train``, ``sample``, ..., ``data``, ``autoencoder``: the commands that each have a page."""
    return list(subcommands(root or root_command()))


def command_paths(root: Any | None = None) -> list[tuple[str, ...]]:
    """Every command and sub-command, e.g. ``("train",)``, ``("data",)``, ``("data", "prepare")``."""

    def walk(command: Any, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = [path] if path else []
        for name, sub in subcommands(command).items():
            found += walk(sub, path + (name,))
        return found

    return walk(root or root_command(), ())


def resolve(path: tuple[str, ...], root: Any | None = None) -> tuple[Any, Any]:
    """The command at ``path`` (``()`` is ``fm``) and a click context for it, parents included."""
    command = root or root_command()
    context = command.context_class(command, info_name=ROOT)
    for name in path:
        found = subcommands(command)
        if name not in found:
            raise KeyError(f"fm has no command '{' '.join(path)}'")
        command = found[name]
        context = command.context_class(command, info_name=name, parent=context)
    return command, context


def visible_params(command: Any, context: Any) -> list[Any]:
    return [param for param in command.get_params(context) if not getattr(param, "hidden", False)]


def is_argument(param: Any) -> bool:
    return param.param_type_name == "argument"


def option_names(path: tuple[str, ...], root: Any | None = None) -> list[str]:
    """The option names ``fm PATH --help`` lists, e.g. ``--out``, ``--loop``, ``--no-loop``."""
    command, context = resolve(path, root)
    names: list[str] = []
    for param in visible_params(command, context):
        if not is_argument(param):
            names += list(param.opts) + list(param.secondary_opts)
    return names


def argument_names(path: tuple[str, ...], root: Any | None = None) -> list[str]:
    command, context = resolve(path, root)
    return [param.name.upper() for param in visible_params(command, context) if is_argument(param)]


# --- Markdown -----------------------------------------------------------------------------------------------------

_SPECIAL = re.compile(r"[\\*_<>\[\]]")
_TABLE_SPECIAL = re.compile(r"[\\*_<>\[\]|]")
_ESCAPED = {"<": "&lt;", ">": "&gt;"}


def escape(text: str, table: bool = False) -> str:
    """Plain help text as Markdown: `code spans` kept, characters Markdown would read as markup escaped (and, for a
    table cell, pipes outside code spans: inside them the table extension leaves them alone)."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code span at all
        parts = [text.replace("`", "\\`")]
    special = _TABLE_SPECIAL if table else _SPECIAL
    for index in range(0, len(parts), 2):
        parts[index] = special.sub(lambda match: _ESCAPED.get(match[0], "\\" + match[0]), parts[index])
    return "`".join(parts)


def unrich(text: str) -> str:
    r"""Typer's help strings escape rich markup (``\[default: ...]``); the page shows the text as printed."""
    return text.replace("\\[", "[")


def help_blocks(text: str) -> list[str]:
    """A command's help as Markdown: paragraphs escaped, indented example lines in one ``text`` code block each run."""
    blocks: list[str] = []
    code: list[str] = []
    for paragraph in re.split(r"\n\s*\n", unrich(text or "").strip("\n")):
        rows = paragraph.splitlines()
        if rows and all(row.startswith("  ") for row in rows):
            code += [row.strip() for row in rows]
            continue
        if code:
            blocks.append("```text\n" + "\n".join(code) + "\n```")
            code = []
        paragraph = " ".join(row.strip() for row in rows).strip()
        if paragraph in ("Examples:", "Example:"):
            blocks.append(f"**{paragraph}**")
        elif paragraph:
            blocks.append(escape(paragraph))
    if code:
        blocks.append("```text\n" + "\n".join(code) + "\n```")
    return blocks


def usage(path: tuple[str, ...], command: Any, context: Any) -> str:
    pieces = [ROOT, *path]
    if subcommands(command):
        pieces += ["[OPTIONS]", "COMMAND", "[ARGS]..."]
    else:
        pieces.append("[OPTIONS]")
        for param in visible_params(command, context):
            if is_argument(param):
                name = param.name.upper() + ("..." if param.nargs == -1 else "")
                pieces.append(name if param.required else f"[{name}]")
    return " ".join(pieces)


def params_markdown(command: Any, context: Any, level: int) -> list[str]:
    """Arguments and options, grouped as ``--help`` groups them (its panels), as definition lists."""
    panels: dict[str, list[str]] = {}
    for param in visible_params(command, context):
        record = param.get_help_record(context)
        term, description = record if record else (" / ".join(param.opts), "")
        panel = getattr(param, "rich_help_panel", None) or ("Arguments" if is_argument(param) else "Options")
        entry = f"`{term}`\n:   {escape(unrich(description)) or '&nbsp;'}"
        panels.setdefault(panel, []).append(entry)
    blocks: list[str] = []
    for panel in sorted(panels, key=lambda name: (name != "Arguments", name != "Options", name)):
        blocks.append(f"{'#' * level} {panel}")
        blocks += panels[panel]
    return blocks


def command_markdown(path: tuple[str, ...], root: Any | None = None, level: int = 2) -> str:
    """The reference of ``fm PATH``; a group gets one section per sub-command, ``fm`` a table of its commands."""
    command, context = resolve(path, root)
    shown = " ".join([ROOT, *path])
    blocks = [f"`{usage(path, command, context)}`", *help_blocks(command.help or "")]
    blocks += params_markdown(command, context, level + 1)
    children = subcommands(command)
    if children and not path:
        blocks.append(f"{'#' * (level + 1)} Commands")
        rows = ["| command | what it does |", "|---|---|"]
        for name, sub in children.items():
            summary = escape(unrich(sub.get_short_help_str(limit=200)), table=True)
            rows.append(f"| [`fm {name}`]({name}.md) | {summary} |")
        blocks.append("\n".join(rows))
    elif children:
        for name in children:
            blocks.append(command_markdown(path + (name,), root, level + 1))
    heading = f"{'#' * level} `{shown}`"
    if level == 2:
        blocks.insert(0, f"*Generated from `{shown} --help` when this site was built.*")
    return "\n\n".join([heading, *blocks]) + "\n"


def page_markdown(name: str, root: Any | None = None) -> str:
    """What the marker ``<!-- fm:cli NAME -->`` becomes: ``fm`` itself, or a top-level command (or group)."""
    path = () if name == ROOT else (name,)
    return command_markdown(path, root)


def expand(markdown: str, root: Any | None = None) -> tuple[str, list[str]]:
    """The page with every marker replaced by its reference, and the names the markers asked for."""
    names: list[str] = []

    def replace(match: re.Match) -> str:
        names.append(match["name"])
        return page_markdown(match["name"], root)

    return MARKER.sub(replace, markdown), names
