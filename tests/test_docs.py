"""The documentation site cannot drift from the command line: every command has its page in the navigation, each page
carries the marker its reference is generated into, and the generated reference lists every option and argument
that ``fm COMMAND --help`` prints. Also the pieces of the release that live outside the code: one version, the
rooms' page, the measured pages, the changelog. Fast (no torch, no mkdocs: the generator is plain Python)."""

import ast
import importlib.util
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
HELP_ENV = {"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"fm_docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    return load("cli_reference")


@pytest.fixture(scope="module")
def root(reference):
    return reference.root_command()


@pytest.fixture(scope="module")
def pages(reference, root):
    """docs/commands/NAME.md for every top-level command, its markers expanded as the site's build expands them."""
    expanded = {}
    for name in [*reference.top_level_commands(root), "index"]:
        path = DOCS / "commands" / f"{name}.md"
        assert path.exists(), f"fm {name} has no page: {path.relative_to(REPO)}"
        expanded[name], _ = reference.expand(path.read_text(), root)
    return expanded


def help_text(path: tuple[str, ...]) -> str:
    from fmcli.cli import app

    result = CliRunner().invoke(app, [*path, "--help"], env=HELP_ENV, prog_name="fm")
    assert result.exit_code == 0, result.output
    return result.output


def appears(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


def test_every_command_has_a_page_in_the_nav(reference, root):
    nav = (REPO / "mkdocs.yml").read_text().split("\nnav:", 1)[1]
    listed = set(re.findall(r"commands/([\w-]+)\.md", nav))
    missing = [name for name in reference.top_level_commands(root) if name not in listed]
    assert not missing, f"commands without a page in mkdocs.yml's nav: {missing}"
    assert "commands/index.md" in nav


def test_every_page_carries_its_generated_reference(reference, root):
    for name in reference.top_level_commands(root):
        text = (DOCS / "commands" / f"{name}.md").read_text()
        assert f"<!-- fm:cli {name} -->" in text, f"docs/commands/{name}.md lacks <!-- fm:cli {name} -->"
    assert "<!-- fm:cli fm -->" in (DOCS / "commands" / "index.md").read_text()


def test_the_reference_lists_every_option_help_lists(reference, root, pages):
    """Every command and sub-command: the options and arguments of ``--help`` are on the command's page."""
    paths = reference.command_paths(root)
    assert ("train",) in paths and ("data", "prepare") in paths and ("autoencoder", "eval") in paths
    for path in [(), *paths]:
        page = pages[path[0] if path else "index"]
        printed = help_text(path)
        options = reference.option_names(path, root)
        assert "--help" in options
        for option in options:
            assert appears(option, printed), f"fm {' '.join(path)} --help does not list {option}"
            assert appears(option, page), f"the page of fm {' '.join(path)} lacks {option}"
        for argument in reference.argument_names(path, root):
            assert argument in printed.upper() and argument in page.upper(), (path, argument)
        assert f"`fm {' '.join(path)}".rstrip() in page, f"no section for fm {' '.join(path)}"
    # and nothing --help prints is missed: every --option on the help screen is one the generator knows
    for path in paths:
        printed = {word for word in re.findall(r"(?<![\w-])--[a-z][\w-]*", help_text(path))}
        known = set(reference.option_names(path, root))
        described = {word for word in printed - known if not appears(word, reference.command_markdown(path, root))}
        assert not described, f"fm {' '.join(path)} --help prints {described}, which its page does not"


def test_unknown_markers_and_escaping(reference, root):
    text, names = reference.expand("a\n<!-- fm:cli info -->\nb", root)
    assert names == ["info"] and "`fm info [OPTIONS] CHECKPOINT`" in text and "<!--" not in text
    with pytest.raises(KeyError):
        reference.expand("<!-- fm:cli no-such-command -->", root)
    assert reference.escape("a <b> x_t `x_t <c>`") == "a &lt;b&gt; x\\_t `x_t <c>`"
    assert reference.escape("`a|b` c|d", table=True) == "`a|b` c\\|d"


def test_the_rooms_page_is_generated_from_the_layout_test():
    hooks = load("hooks")
    ranks = hooks.ranks()
    assert {"cli", "training", "sampling", "flow"} <= set(ranks)
    text = hooks.rooms_markdown()
    for room in ranks:
        assert f"### {room} " in text, room
        assert hooks.room_docstring(room), f"fmcli room {room} has no docstring"
    assert "<!-- fm:rooms -->" in (DOCS / "architecture.md").read_text()


def test_one_version():
    """fmcli.__version__ is the version: pyproject reads it, the changelog has its section."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fmcli.__version__"}
    tree = ast.parse((REPO / "fmcli" / "__init__.py").read_text())
    version = next(
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__version__"
    )
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert re.search(
        rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", (REPO / "CHANGELOG.md").read_text(), re.M
    )
    from fmcli.cli import app

    result = CliRunner().invoke(app, ["--version"], prog_name="fm")
    assert result.output.strip() == f"fm {version}"
    assert "Copyright (c) 2026 the fm authors" in (REPO / "LICENSE").read_text()


def test_the_site_has_every_page_it_links():
    """Every page in the nav exists, every measured page is in the nav, and the README stays short."""
    config = (REPO / "mkdocs.yml").read_text()
    nav = config.split("\nnav:", 1)[1]
    listed = re.findall(r"([\w./-]+\.md)\s*$", nav, re.M)
    assert listed and all((DOCS / page).exists() for page in listed), [p for p in listed if not (DOCS / p).exists()]
    measured = {f"measured/{path.name}" for path in (DOCS / "measured").glob("*.md")}
    assert measured <= set(listed), measured - set(listed)
    assert "docs/hooks.py" in config and "--8<--" in (DOCS / "changelog.md").read_text()
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
