"""The package's layout, checked: rooms by concern with a fixed layering, no import cycles, small modules,
one solver signature, and start-up that imports neither torch, Gradio nor plugin code for --help and completion."""

import ast
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fmcli"

# Each room may import rooms of a lower rank (and itself). ``fmcli`` itself (the package's __init__) is the
# public face: its lazy API may reach anything, and anything may read its __version__ or hookimpl.
RANKS = {
    "errors": 0, "specs": 0, "hookspecs": 0,
    "device": 1, "plugins": 1, "builtins": 1,  # builtins name their implementations as strings, never import them
    "runtime": 1,  # the machine as it is (cores, load, memory) and the thread count
    "registry": 2,
    "text": 2.5,  # text encoders (transformers only inside clip.py's functions); models import them
    "models": 3,
    "autoencoders": 4.5,  # images <-> latents (diffusers only inside diffusers.py's functions); data, training use them
    "flow": 4, "io": 4,
    "data": 5,
    "sampling": 6,
    "training": 7, "eval": 7, "serve": 7,  # serve: the fm serve page (Gradio, imported inside functions)
    "cli": 8, "solvers": 8,  # solvers: the deprecated 0.1 alias of fmcli.sampling.solvers
    "__main__": 9,
}  # fmt: skip


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, name: str) -> set[str]:
    """Every fmcli module ``path`` imports, at the top or inside functions (lazy imports count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = modules()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # ``from pkg import module`` depends on that module; ``from module import name`` on the module
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(known)
            found |= submodules or {base}
    return {target for target in found if target in known and target != name}


def room(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_every_import_goes_down_the_layers():
    broken = []
    for name, path in modules().items():
        if name == "fmcli":
            continue
        for target in imports(path, name):
            if target == "fmcli":
                continue
            mine, theirs = room(name), room(target)
            if mine != theirs and RANKS[theirs] >= RANKS[mine]:  # a lower room, or the same one
                broken.append(f"{name} -> {target}")
    assert not broken, broken


def test_there_is_no_import_cycle():
    graph = {name: imports(path, name) - {"fmcli"} for name, path in modules().items() if name != "fmcli"}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_the_package_root_holds_few_modules_and_every_room_says_what_it_holds():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= 8, root
    for package in (p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and len(doc) > 80, f"{package.name}/__init__.py needs a docstring saying what lives there"
    for name in ("training", "sampling", "flow", "io", "eval", "data", "models", "cli", "builtins", "text"):
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert "import" in doc, f"fmcli/{name}/__init__.py should say what the room may import"


def test_modules_stay_small():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert set(long) <= {"fmcli/data/cache.py"}, long  # the folder cache is one self-contained format


def test_the_trainer_is_one_screen_per_method():
    source = (PACKAGE / "training" / "loop.py").read_text()
    trainer = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    assert trainer.end_lineno - trainer.lineno + 1 <= 250
    methods = {n.name: n.end_lineno - n.lineno + 1 for n in trainer.body if isinstance(n, ast.FunctionDef)}
    assert max(methods.values()) <= 40, methods


def test_the_solver_signature_exists_once():
    """``solve(velocity, x, integration, conditioning)`` is written in one place; solvers implement ``run``."""
    defining = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py") if "def solve(" in p.read_text()]
    assert defining == ["fmcli/sampling/solvers/base.py"], defining
    from fmcli.sampling.solvers.base import Solver

    assert list(inspect.signature(Solver.solve).parameters) == ["self", "velocity", "x", "integration", "conditioning"]


def test_help_lists_exactly_the_builtins_the_registry_holds():
    from fmcli import registry
    from fmcli.builtins import BUILTIN_NAMES

    assert set(BUILTIN_NAMES["solvers"]) == set(registry.solvers())  # conftest: no third-party plugin loaded
    assert set(BUILTIN_NAMES["datasets"]) == set(registry.datasets())


TEXT_LIBRARIES = ("transformers", "tokenizers")  # the clip text encoder's, imported only when it is used
STARTUP = """
import json, sys
sys.argv = {argv}
try:
    from fmcli.cli import main
    main()
except SystemExit:
    pass
print("MODULES=" + json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def startup_modules(argv: list[str], env: dict | None = None) -> list[str]:
    environment = {k: v for k, v in os.environ.items() if k != "FM_LOAD_PLUGINS"} | (env or {})
    done = subprocess.run([sys.executable, "-c", STARTUP.format(argv=argv)], capture_output=True, text=True,
                          env=environment, timeout=120)  # fmt: skip
    line = next(line for line in done.stderr.splitlines() if line.startswith("MODULES="))
    return json.loads(line[len("MODULES=") :])


def plugin_modules() -> set[str]:
    """Top-level modules of the installed ``fmcli`` entry points (the example plugin, in this repo's venv)."""
    import importlib.metadata

    return {
        ep.value.split(":")[0].split(".")[0]
        for dist in importlib.metadata.distributions()
        for ep in dist.entry_points
        if ep.group == "fmcli"
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["fm", "--help"],
        ["fm", "train", "--help"],
        ["fm", "sample", "--help"],
        ["fm", "serve", "--help"],
        ["fm", "tune", "--help"],
    ],  # fmt: skip
)
def test_help_imports_neither_torch_nor_gradio_nor_any_plugin(argv):
    loaded = startup_modules(argv)
    assert not [m for m in loaded if m == "torch" or m.startswith("torch.")]
    assert not [m for m in loaded if m.split(".")[0] in ("gradio", "gradio_client")]
    assert "fmcli.serve" not in loaded and "fmcli.sampling.model" not in loaded
    assert not [m for m in loaded if m.split(".")[0] in TEXT_LIBRARIES or m.startswith("fmcli.text")]
    plugins = plugin_modules()
    assert not [m for m in loaded if m.split(".")[0] in plugins], "help must not run plugin code"


def test_completion_imports_no_torch_and_no_plugin_implementation():
    """Completing ``fm sample --solver <TAB>`` lists plugins' names (their registration modules load) but imports
    no implementation: registrations are lazy references."""
    env = {"_FM_COMPLETE": "complete_bash", "COMP_WORDS": "fm sample --solver ", "COMP_CWORD": "3"}
    loaded = startup_modules(["fm"], env)
    assert not [m for m in loaded if m == "torch" or m.startswith("torch.")]
    implementations = {"fm_adams_bashforth.solver", "fm_adams_bashforth.rings"}
    assert not implementations & set(loaded)
    # Text encoders register as lazy specs too: neither fmcli.text nor a tokenizer or CLIP library is imported.
    assert not [m for m in loaded if m.split(".")[0] in TEXT_LIBRARIES or m.startswith("fmcli.text")]
