"""MkDocs hooks (mkdocs.yml ``hooks:``): the parts of the site generated from the code when it is built.

- ``<!-- fm:cli NAME -->`` on a page becomes the reference of ``fm NAME``, read from the Typer app
  (docs/cli_reference.py). The build fails when a marker names no command, when a command has no page in the
  navigation (``commands/NAME.md``), or when a command's reference is on no page.
- ``<!-- fm:rooms -->`` becomes the package's rooms: their rank in tests/test_layout.py's ``RANKS`` (what each may
  import) and the docstring at the top of each, read with ``ast`` (nothing is imported).

Nothing is written into docs/: the pages are expanded in memory, so ``mkdocs serve`` does not rebuild in a loop.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ROOMS_MARKER = "<!-- fm:rooms -->"


def _load_cli_reference() -> Any:
    spec = importlib.util.spec_from_file_location("fm_docs_cli_reference", HERE / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli_reference = _load_cli_reference()
_expanded: set[str] = set()


def _fail(message: str) -> None:
    from mkdocs.exceptions import PluginError

    raise PluginError(f"docs/hooks.py: {message}")


# --- the rooms ----------------------------------------------------------------------------------------------------


def ranks() -> dict[str, float]:
    """``RANKS`` from tests/test_layout.py: room -> rank; a room may import the rooms of a lower rank."""
    tree = ast.parse((REPO / "tests" / "test_layout.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "RANKS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError("tests/test_layout.py defines no RANKS")


def room_file(room: str) -> Path:
    package = REPO / "fmcli" / room / "__init__.py"
    return package if package.exists() else REPO / "fmcli" / f"{room}.py"


def room_docstring(room: str) -> str:
    return ast.get_docstring(ast.parse(room_file(room).read_text())) or ""


def rooms_markdown() -> str:
    table = ranks()
    order = sorted(table, key=lambda room: (table[room], room))
    rows = ["| rank | room | what it is |", "|---:|---|---|"]
    sections = []
    for room in order:
        doc = room_docstring(room)
        path = room_file(room).parent if room_file(room).name == "__init__.py" else room_file(room)
        path = path.relative_to(REPO).as_posix() + ("/" if path.is_dir() else "")
        summary = cli_reference.escape(doc.split("\n\n")[0].replace("\n", " "), table=True)
        rows.append(f"| {table[room]:g} | [`{path}`](#{_anchor(room)}) | {summary} |")
        below = [other for other in order if table[other] < table[room]]
        may = ", ".join(f"`{other}`" for other in below) if below else "nothing else in fmcli"
        sections.append(
            f"### {room} {{#{_anchor(room)}}}\n\n`{path}`, rank {table[room]:g}. May import: {may}.\n\n"
            f"```text\n{doc}\n```"
        )
    return "\n".join(rows) + "\n\n" + "\n\n".join(sections) + "\n"


def _anchor(room: str) -> str:
    return "room-" + re.sub(r"[^a-z0-9]+", "-", room.lower()).strip("-")


# --- MkDocs events ------------------------------------------------------------------------------------------------


def on_pre_build(config: Any) -> None:
    _expanded.clear()


def on_nav(nav: Any, config: Any, files: Any) -> None:
    pages = {page.file.src_uri for page in nav.pages}
    missing = [name for name in cli_reference.top_level_commands() if f"commands/{name}.md" not in pages]
    if missing:
        _fail("commands without a page in mkdocs.yml's nav: " + ", ".join(f"commands/{n}.md" for n in missing))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    known = {cli_reference.ROOT, *cli_reference.top_level_commands()}
    unknown = [match["name"] for match in cli_reference.MARKER.finditer(markdown) if match["name"] not in known]
    if unknown:
        _fail(f"{page.file.src_uri}: <!-- fm:cli ... --> names no command of fm: {', '.join(unknown)}")
    markdown, names = cli_reference.expand(markdown)
    _expanded.update(names)
    if ROOMS_MARKER in markdown:
        markdown = markdown.replace(ROOMS_MARKER, rooms_markdown())
    return markdown


def on_post_build(config: Any) -> None:
    missing = {cli_reference.ROOT, *cli_reference.top_level_commands()} - _expanded
    if missing:
        _fail("commands whose reference is on no page (add <!-- fm:cli NAME -->): " + ", ".join(sorted(missing)))
