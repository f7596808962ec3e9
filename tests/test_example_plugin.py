"""The example plugin in plugins/fm-adams-bashforth: its ab2 solver and its rings data set.

The plugin module is registered inline (from the source tree, no installation needed); the
last test runs the installed ``fm`` console script and is skipped when the plugin's
distribution is not installed (``pip install --no-deps --no-build-isolation -e plugins/fm-adams-bashforth``).
"""

import importlib
import importlib.metadata
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_solvers as checks
import torch
from helpers import assert_one_line_error, fm

from fmcli import hookimpl, registry
from fmcli.data.base import LoadOptions
from fmcli.errors import FMError
from fmcli.plugins import pm
from fmcli.sampling.solvers.base import Integration
from fmcli.sampling.solvers.grids import TIME_GRIDS

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugins" / "fm-adams-bashforth"


@pytest.fixture
def plugin():
    sys.path.insert(0, str(PLUGIN_DIR))
    try:
        module = importlib.import_module("fm_adams_bashforth")
        registry.solvers()  # built-ins first, so the test sees the same table a user would
        registered_here = not pm.is_registered(module)
        if registered_here:
            pm.register(module, name="fm-adams-bashforth-inline")
        registry.reset()
        yield module
        if registered_here:
            pm.unregister(module)
        registry.reset()
    finally:
        sys.path.remove(str(PLUGIN_DIR))


def test_ab2_is_registered_next_to_the_builtins(plugin):
    solver = registry.get_solver("ab2")
    assert set(checks.BUILTIN_SOLVERS) < set(registry.solvers())
    assert (solver.adaptive, solver.order, solver.evals_per_step) == (False, 2, 1)
    assert registry.owners("fm_register_solvers")["ab2"] == "fm-adams-bashforth-inline"


@pytest.mark.parametrize("direction", [(1.0, 0.0), (0.0, 1.0)], ids=["1to0", "0to1"])
@pytest.mark.parametrize("time_grid", TIME_GRIDS)
def test_ab2_is_second_order(plugin, direction, time_grid):
    solver = registry.get_solver("ab2")
    order = checks.observed_order(solver, t_start=direction[0], t_end=direction[1], time_grid=time_grid)
    assert abs(order - 2) < 0.3, order


def test_ab2_costs_one_evaluation_per_step_after_a_heun_start(plugin):
    calls = []

    def velocity(x, t):
        calls.append(float(t))
        return checks.linear_velocity(x, t)

    result = registry.get_solver("ab2").solve(velocity, checks.start_points(), Integration(steps=10))
    assert result.nfe == len(calls) == 11
    grid = [1.0 - k / 10 for k in range(10)]
    # Heun evaluates at t_0 and t_1; afterwards one evaluation at each grid time t_1 .. t_9.
    assert calls[:2] == pytest.approx(grid[:2]) and calls[2:] == pytest.approx(grid[1:])


def test_ab2_gaussian_check(plugin):
    solver = registry.get_solver("ab2")
    x1, x0 = checks.check_gaussian_samples(solver)
    assert (x0 - checks.gaussian_exact_transport(x1)).abs().max().item() < checks.fixed_step_tolerance(solver, 100)
    errors = [checks.gaussian_transport_error(solver, steps) for steps in (4, 8, 16, 32)]
    assert all(finer < coarser for coarser, finer in itertools.pairwise(errors)), errors


@pytest.mark.parametrize(
    "check",
    [
        lambda: checks.test_nonlinear_ode_matches_tight_reference("ab2"),
        lambda: checks.test_batch_equals_samples_one_at_a_time("ab2"),
        lambda: checks.test_save_at_trajectory("ab2", (1.0, 0.0)),
        lambda: checks.test_save_at_trajectory("ab2", (0.0, 1.0)),
        lambda: checks.test_conditioning_reaches_the_velocity_untouched("ab2"),
        lambda: checks.test_reported_nfe_counts_every_evaluation("ab2"),
    ],
    ids=["nonlinear", "batch", "save_at-1to0", "save_at-0to1", "conditioning", "nfe"],
)
def test_ab2_passes_the_solver_suite(plugin, check):
    check()


def test_rings_data_set(plugin):
    spec = registry.get_dataset("rings")
    assert (spec.kind, spec.splits) == ("points", ("train", "test"))
    train = spec.load(LoadOptions(split="train", num_samples=3000, seed=0))
    assert train.data.shape == (3000, 2) and train.data.dtype == torch.float32
    assert train.labels.dtype == torch.int64 and set(train.labels.tolist()) == {0, 1, 2}
    radii = torch.tensor(plugin.rings.RADII)
    # Every point lies on its own ring (radial noise 0.03; 6 standard deviations).
    distance = train.data.norm(dim=1) - radii[train.labels]
    assert distance.abs().max() < 6 * plugin.rings.NOISE
    # Rings get points in proportion to their radius (uniform density along each circle).
    shares = torch.bincount(train.labels, minlength=3).double() / 3000
    expected = radii.double() / radii.sum()
    assert ((shares - expected).abs() < 4 * (expected * (1 - expected) / 3000).sqrt()).all()
    # Reproducible, with a test split that differs from the train split.
    assert torch.equal(spec.load(LoadOptions(split="train", num_samples=3000, seed=0)).data, train.data)
    assert not torch.equal(spec.load(LoadOptions(split="test", num_samples=3000, seed=0)).data, train.data)
    assert not torch.equal(spec.load(LoadOptions(split="train", num_samples=3000, seed=1)).data, train.data)
    assert len(spec.load(LoadOptions(split="test"))) == plugin.rings.DEFAULT_NUM_SAMPLES
    with pytest.raises(FMError, match="splits"):
        spec.load(LoadOptions(split="validation"))


def test_single_file_example_plugin(monkeypatch):
    """examples/my_plugin.py, registered inline: its solver passes the order and Gaussian checks."""
    monkeypatch.syspath_prepend(str(PLUGIN_DIR.parents[1] / "examples"))
    module = importlib.import_module("my_plugin")
    pm.register(module, name="my-plugin")
    registry.reset()
    try:
        solver = registry.get_solver("ralston")
        assert abs(checks.observed_order(solver) - 2) < 0.3
        checks.check_gaussian_samples(solver)
        data = registry.get_dataset("gaussian-grid").load(LoadOptions(num_samples=900, seed=3))
        centres = torch.stack([data.labels % 3 - 1, data.labels // 3 - 1], dim=1).float()
        assert data.data.shape == (900, 2) and (data.data - centres).abs().max() < 0.6
    finally:
        pm.unregister(module)
        registry.reset()


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def checkout_pythonpath() -> str:
    """This checkout's fmcli AND this checkout's plugin source, ahead of what is installed.

    The installed distribution supplies the entry point (what is being tested); an editable install made
    from another checkout would otherwise import that checkout's plugin code, which may need another fmcli.
    """
    return os.pathsep.join([str(PLUGIN_DIR.parents[1]), str(PLUGIN_DIR)])


@pytest.mark.skipif(not _installed("fm-adams-bashforth"), reason="fm-adams-bashforth is not installed")
def test_installed_plugin_is_listed_by_fm_plugins():
    # The console script when fmcli is installed, else the same entry point through ``python -m fmcli``.
    fm = shutil.which("fm", path=str(Path(sys.executable).parent))
    command = [fm] if fm else [sys.executable, "-m", "fmcli"]
    env = dict(os.environ, FM_LOAD_PLUGINS="fm-adams-bashforth", PYTHONPATH=checkout_pythonpath())
    done = subprocess.run([*command, "plugins", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    text = json.dumps(listing)
    assert "adams_bashforth" in text and "ab2" in text and "rings" in text, text


# Run in a fresh interpreter with FM_LOAD_PLUGINS unset: both commands go through fmcli's default plugin
# discovery (every installed distribution of the ``fmcli`` entry-point group), which in-process tests
# never reach (conftest sets FM_LOAD_PLUGINS=""). One interpreter for both commands halves the start-up.
DISCOVERY_SCRIPT = """
import json, sys
from typer.testing import CliRunner
from fmcli.cli import app
runner = CliRunner()
listing = runner.invoke(app, ["plugins", "--json"])
sample = runner.invoke(app, ["sample", sys.argv[1], "--solver", "ab2", "--steps", "3", "--num", "2",
                             "--class", "4", "--out", sys.argv[2], "--json"])
print(json.dumps({"listing": [listing.exit_code, listing.stdout], "sample": [sample.exit_code, sample.output]}))
"""


@pytest.mark.skipif(not _installed("fm-adams-bashforth"), reason="fm-adams-bashforth is not installed")
def test_installed_plugin_is_found_without_fm_load_plugins(tiny_checkpoint, tmp_path):
    """FM_LOAD_PLUGINS unset: `fm plugins` lists the installed plugin and `fm sample --solver ab2` runs with it."""
    env = {key: value for key, value in os.environ.items() if key != "FM_LOAD_PLUGINS"}
    env["PYTHONPATH"] = checkout_pythonpath()
    out = tmp_path / "ab2.npz"
    done = subprocess.run(
        [sys.executable, "-c", DISCOVERY_SCRIPT, str(tiny_checkpoint), str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    code, listing = results["listing"]
    assert code == 0, listing
    rows = {row["name"]: row for row in json.loads(listing)}
    plugin_rows = [row for row in rows.values() if "ab2" in row["solvers"]]
    assert len(plugin_rows) == 1, rows
    assert "rings" in plugin_rows[0]["datasets"]
    assert plugin_rows[0]["version"] == importlib.metadata.version("fm-adams-bashforth")
    code, output = results["sample"]
    assert code == 0, output
    summary = json.loads(output[output.index("{") :])
    # ab2 starts with one Heun step (2 evaluations), then one evaluation per step: 3 steps = 4.
    assert summary["solver"] == "ab2" and summary["nfe"] == 4
    arrays = np.load(out)
    assert arrays["images"].shape == (2, 28, 28, 1) and arrays["labels"].tolist() == [4, 4]


# Both commands of the next test in one fresh interpreter (default discovery, as above), stdout and stderr apart.
BROKEN_SCRIPT = """
import json, sys
from typer.testing import CliRunner
from fmcli.cli import app
runner = CliRunner()
listing = runner.invoke(app, ["plugins"])
missing = runner.invoke(app, ["sample", sys.argv[1], "--solver", "brokensolver", "--out", sys.argv[2]])
print(json.dumps({name: [r.exit_code, r.stdout, r.stderr] for name, r in (("listing", listing), ("missing", missing))}))
"""


def test_a_plugin_that_fails_to_import_is_named_not_lost(tmp_path, tiny_checkpoint):
    """An installed plugin whose module raises on import: fm still works, `fm plugins` warns with the error,
    and asking for what it would have registered says why it is missing."""
    site = tmp_path / "site"
    (site / "broken_fm_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "broken_fm_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-fm-plugin\nVersion: 0.1\n"
    )
    (site / "broken_fm_plugin-0.1.dist-info" / "entry_points.txt").write_text("[fmcli]\nbroken = broken_fm_plugin\n")
    (site / "broken_fm_plugin.py").write_text("raise ImportError('needs a library that is not installed')\n")
    env = {key: value for key, value in os.environ.items() if key != "FM_LOAD_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), checkout_pythonpath()])
    done = subprocess.run(
        [sys.executable, "-c", BROKEN_SCRIPT, str(tiny_checkpoint), str(tmp_path / "x.png")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    code, stdout, stderr = results["listing"]
    assert code == 0, stderr
    assert "warning: plugin 'broken' failed to load (broken-fm-plugin: ImportError: needs a library" in stderr
    assert "euler" in stdout
    code, _, stderr = results["missing"]
    assert code == 1
    assert "unknown solver 'brokensolver'" in stderr and "broken-fm-plugin: ImportError" in stderr


# --- the solver contract changed once (0.2): old plugins are told so, old imports still work -----------


class OldContractEuler:
    """A solver written for fm 0.1: solve(velocity, x, *, t_start, t_end, steps, ...)."""

    name, description, adaptive, order, evals_per_step = "old-euler", "fm 0.1 style", False, 1, 1

    def solve(self, velocity, x, *, t_start=1.0, t_end=0.0, steps=20, time_grid="uniform", rtol=1e-5, atol=1e-5,
              save_at=None, conditioning=None):  # fmt: skip
        raise AssertionError("fm must not call a solver whose contract it does not speak")


class OldContractPlugin:
    @hookimpl
    def fm_register_solvers(self, register):
        register(OldContractEuler())


def test_a_solver_written_for_the_old_contract_is_refused_in_one_line(tiny_checkpoint, tmp_path):
    plugin = OldContractPlugin()
    registry.solvers()
    pm.register(plugin, name="old-plugin")
    registry.reset()
    try:
        result = fm("sample", tiny_checkpoint, "--solver", "old-euler", "--num", "2", "--out", tmp_path / "x.png")
        assert_one_line_error(result, "solver 'old-euler' implements fm 0.1's solve(", "Integration", "CHANGELOG")
        assert not (tmp_path / "x.png").exists()
    finally:
        pm.unregister(plugin)
        registry.reset()


def test_the_0_1_import_path_of_the_solvers_still_works_with_a_warning():
    """Plugins subclass fmcli.solvers.fixed.FixedStepSolver (0.1); they get the same class, and a warning."""
    for name in [m for m in sys.modules if m == "fmcli.solvers" or m.startswith("fmcli.solvers.")]:
        del sys.modules[name]
    with pytest.warns(DeprecationWarning, match="fmcli.sampling.solvers"):
        from fmcli.solvers.fixed import FixedStepSolver as Old
    from fmcli.sampling.solvers.fixed import FixedStepSolver

    assert Old is FixedStepSolver
