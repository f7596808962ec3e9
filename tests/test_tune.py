"""``fm tune``: grids fitted to a model, their file beside the checkpoint, and sampling that finds them.

The fit is checked on a closed-form field (Gaussian data, whose flow is known exactly), the file and the
commands on tiny trained models (copied per test: a grid file beside a shared checkpoint would change
what other tests sample)."""

import importlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_tiny
from helpers import assert_one_line_error, fm, fm_ok

from fmcli import registry
from fmcli.errors import FMError
from fmcli.io.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from fmcli.plugins import pm
from fmcli.sampling.solvers import get_solver
from fmcli.sampling.solvers.base import Integration
from fmcli.sampling.solvers.grids import make_time_grid
from fmcli.sampling.tuned import TunedGrid, TunedSetting, checkpoint_grids, find_tuned, grid_file, store_tuned
from fmcli.sampling.tuning import (
    Calibration,
    ReferenceTrajectory,
    TuneOptions,
    fit_grid,
    grid_from_logits,
    logits_from_grid,
    tunable_solver,
    tune,
)

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugins" / "fm-adams-bashforth"
FAST = ("--pool", "10", "--iterations", "2", "--reference-steps", "4", "--device", "cpu")


# --- the maths: a closed-form field ------------------------------------------------------------------


class DiagonalGaussianFlow:
    """Data x0 ~ N(mu, diag(lam)), noise x1 ~ N(0, I), straight paths. Per coordinate the exact velocity is
    v(x, t) = -mu + g(t) (x - (1 - t) mu) with g(t) = (t - (1 - t) lam) / sigma(t)^2, sigma(t)^2 = (1 - t)^2 lam
    + t^2, and the flow map from t to s is x_s = (1 - s) mu + sigma(s) / sigma(t) (x_t - (1 - t) mu). Written
    with tensor ops only, so it is differentiable in t like a network."""

    def __init__(self, dim: int = 16):
        self.lam = torch.logspace(-3.5, -1, dim, dtype=torch.float64)  # small variances: the hard, image-like case
        self.mu = torch.linspace(-0.3, 0.3, dim, dtype=torch.float64)

    def sigma(self, t):
        return ((1 - t) ** 2 * self.lam + t**2).sqrt()

    def velocity(self, x, t, **conditioning):
        gain = (t - (1 - t) * self.lam) / self.sigma(t) ** 2
        return (-self.mu + gain * (x - (1 - t) * self.mu)).to(x.dtype)

    def flow(self, x1, s: float):
        s = torch.tensor(s, dtype=torch.float64)
        return (1 - s) * self.mu + self.sigma(s) / self.sigma(torch.tensor(1.0, dtype=torch.float64)) * x1

    def calibration(self, solver: str, x1) -> Calibration:
        times = make_time_grid("quadratic", 40).tolist()
        states = torch.stack([self.flow(x1, t) for t in times])
        velocities = torch.stack(
            [self.velocity(x, torch.tensor(t, dtype=torch.float64)) for x, t in zip(states, times, strict=True)]
        )
        trajectory = ReferenceTrajectory(times, states, velocities[:-1])  # exact states: a known answer
        return Calibration(tunable_solver(solver), self.velocity, x1, None, trajectory, torch.device("cpu"), 500)


def noise(num: int, seed: int, dim: int = 16):
    return torch.randn(num, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_any_parameter_vector_is_a_valid_grid_and_the_map_inverts():
    for seed in range(20):
        logits = 3 * torch.randn(7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        times = grid_from_logits(logits)
        assert times[0].item() == 1.0 and times[-1].item() == 0.0  # exact ends: the solve always reaches t = 0
        assert (times[1:] < times[:-1]).all()
        assert torch.allclose(grid_from_logits(logits_from_grid(times)), times, atol=1e-12)


def test_step_scales_multiply_each_steps_velocity_and_only_fixed_step_solvers_take_them():
    flow = DiagonalGaussianFlow(4)
    x1 = noise(3, 0, 4)
    times, scales = (1.0, 0.7, 0.3, 0.0), (0.9, 1.2, 1.05)
    got = get_solver("euler").solve(flow.velocity, x1, Integration(time_grid=times, step_scales=scales)).x
    x = x1
    for t, t_next, s in zip(times[:-1], times[1:], scales, strict=True):
        x = x + s * (t_next - t) * flow.velocity(x, torch.tensor(t, dtype=torch.float64))
    assert torch.allclose(got, x, atol=1e-12)
    with pytest.raises(FMError, match="per-step scales"):
        get_solver("dopri5").solve(flow.velocity, x1, Integration(steps=3, step_scales=scales))
    with pytest.raises(FMError, match="3 positive numbers"):
        Integration(time_grid=times, step_scales=(1.0, -1.0, 1.0))


@pytest.mark.parametrize("scales, margin", [(False, 0.95), (True, 0.8)], ids=["grid", "grid+scales"])
def test_tuned_euler_beats_every_builtin_grid_on_held_out_noise(scales, margin):
    """On the exact Gaussian flow, euler 4 on the fitted grid is clearly more accurate than on uniform, quadratic
    or cosine, and the gain holds on noise the fit never saw."""
    flow = DiagonalGaussianFlow()
    options = TuneOptions(steps=(4,), iterations=40, scales=scales, learning_rate=0.1)
    fit = fit_grid(flow.calibration("euler", noise(64, 1)), 4, options)
    held_out = flow.calibration("euler", noise(256, 2))
    builtin = {name: held_out.error(make_time_grid(name, 4), None) for name in ("uniform", "quadratic", "cosine")}
    tuned = held_out.error(fit.times, fit.scales)
    assert fit.error_tuned < 0.8 * fit.error_uniform
    assert tuned < margin * min(builtin.values()), (tuned, builtin)
    assert (fit.scales is not None) == scales
    if scales:  # the scales buy accuracy beyond what the times alone give
        times_only = fit_grid(
            flow.calibration("euler", noise(64, 1)),
            4,
            TuneOptions(steps=(4,), iterations=40, scales=False, learning_rate=0.1),
        )
        assert tuned < held_out.error(times_only.times, None)


def test_solvers_that_cannot_be_tuned_are_refused_before_any_work():
    with pytest.raises(FMError, match="adaptive"):
        TuneOptions(solver="dopri5")
    with pytest.raises(FMError, match="at least 2 steps"):
        TuneOptions(steps=(1, 4))
    with pytest.raises(FMError, match="unknown solver|did you mean"):
        TuneOptions(solver="eulr")


# --- the grid file -------------------------------------------------------------------------------------------


def fake_checkpoint(tmp_path: Path, content: bytes = b"weights") -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    return path


def grid(steps: int = 3, cfg: float = 2.0, solver: str = "euler", scales=None) -> TunedGrid:
    times = tuple(make_time_grid("cosine", steps).tolist())
    return TunedGrid(TunedSetting(solver, steps, cfg, True), times, scales, {"error_tuned": 0.01})


def test_grid_file_round_trip_merges_and_keys_by_every_setting(tmp_path):
    ckpt = fake_checkpoint(tmp_path)
    store_tuned(ckpt, [grid(3), grid(4, scales=(1.0, 1.1, 0.9, 1.0))])
    store_tuned(ckpt, [grid(3, cfg=1.0), grid(4, scales=(0.5, 1.0, 1.0, 1.0))])  # merged; same key replaced
    stored = {(g.setting.steps, g.setting.cfg): g for g in checkpoint_grids(ckpt)}
    assert set(stored) == {(3, 2.0), (3, 1.0), (4, 2.0)}
    assert stored[(4, 2.0)].scales == (0.5, 1.0, 1.0, 1.0)
    assert stored[(3, 2.0)].times == tuple(make_time_grid("cosine", 3).tolist())
    assert grid_file(ckpt) == tmp_path / "model.grids.json"
    for other in (TunedSetting("heun", 3, 2.0, True), TunedSetting("euler", 3, 3.0, True),
                  TunedSetting("euler", 5, 2.0, True), TunedSetting("euler", 3, 2.0, False),
                  TunedSetting("euler", 3, 2.0, True, "raw")):  # fmt: skip
        assert find_tuned(ckpt, other, required=False) is None  # another setting is never used
        with pytest.raises(FMError, match="no tuned grid for"):
            find_tuned(ckpt, other, required=True)


def test_a_grid_file_of_other_content_is_refused_never_used(tmp_path):
    ckpt = fake_checkpoint(tmp_path)
    store_tuned(ckpt, [grid(3)])
    ckpt.write_bytes(b"retrained weights")  # same name, other content
    with pytest.raises(FMError, match="other checkpoint content"):
        find_tuned(ckpt, TunedSetting("euler", 3, 2.0, True), required=False)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: "{not json", "damaged"),
        (lambda raw: json.dumps(raw | {"format": "other"}), "not an fm-tuned-grids file"),
        (lambda raw: json.dumps(raw | {"grids": [raw["grids"][0] | {"times": [1.0, 0.3, 0.6, 0.0]}]}), "strictly"),
        (lambda raw: json.dumps(raw | {"grids": [raw["grids"][0] | {"times": [0.9, 0.6, 0.3, 0.0]}]}), "from 1"),
        (lambda raw: json.dumps(raw | {"grids": [raw["grids"][0] | {"scales": [1.0, -2.0, 1.0]}]}), "positive"),
    ],
)
def test_a_damaged_or_hand_broken_file_is_one_clear_error(tmp_path, damage, message):
    ckpt = fake_checkpoint(tmp_path)
    path = store_tuned(ckpt, [grid(3)])
    path.write_text(damage(json.loads(path.read_text())))
    with pytest.raises(FMError, match=message) as caught:
        checkpoint_grids(ckpt)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


# --- the commands, on tiny trained models ------------------------------------------------------------------


@pytest.fixture
def model(tiny_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny class-conditional U-Net (label dropout: guided with cfg 2 by default), its
    zero-initialised weights (still within 0.01 of zero after 3 training steps) made random: otherwise its
    velocity hardly depends on x or t, and every grid gives the same samples."""
    tensors, meta = read_checkpoint(tiny_checkpoint)
    generator = torch.Generator().manual_seed(0)
    for name, tensor in tensors.items():
        if name.startswith(("ema.", "model.")) and tensor.is_floating_point() and tensor.abs().max() < 0.01:
            tensors[name] = 0.2 * torch.randn(tensor.shape, generator=generator)
    copy = tmp_path / "tiny.safetensors"
    save_checkpoint(copy, tensors, meta)
    return copy


def sample_json(model: Path, out: Path, *args) -> tuple[dict, np.ndarray]:
    summary = json.loads(fm_ok("sample", model, "--class", "all", "--num", "10", "--solver", "euler", "--steps", "3",
                               "--device", "cpu", "--out", out, "--json", *args))  # fmt: skip
    return summary, np.load(out)["images"]


def test_fm_tune_writes_grids_that_fm_sample_uses_by_default(model, tmp_path):
    payload = json.loads(fm_ok("tune", model, "--steps", "2,3", *FAST, "--json"))
    assert (payload["solver"], payload["cfg"], payload["conditional"], payload["pool"]) == ("euler", 2.0, True, 10)
    assert [g["steps"] for g in payload["grids"]] == [2, 3]
    for entry in payload["grids"]:
        assert entry["times"][0] == 1.0 and entry["times"][-1] == 0.0
        assert entry["calibration"]["error_tuned"] <= entry["calibration"]["error_uniform"] + 1e-12
    tuned, tuned_images = sample_json(model, tmp_path / "a.npz")
    explicit, explicit_images = sample_json(model, tmp_path / "b.npz", "--time-grid", "tuned")
    uniform, uniform_images = sample_json(model, tmp_path / "c.npz", "--time-grid", "uniform")
    assert (tuned["time_grid"], explicit["time_grid"], uniform["time_grid"]) == ("tuned", "tuned", "uniform")
    assert np.array_equal(tuned_images, explicit_images) and not np.array_equal(tuned_images, uniform_images)
    other_cfg, _ = sample_json(model, tmp_path / "d.npz", "--cfg", "1")  # tuned for cfg 2 only: not used
    assert other_cfg["time_grid"] == "uniform"
    gif = tmp_path / "a.gif"
    animated = json.loads(fm_ok("animate", model, "--class", "3", "--num", "2", "--frames", "3", "--scale", "1",
                                "--solver", "euler", "--steps", "2", "--json", "--out", gif))  # fmt: skip
    assert animated["time_grid"] == "tuned"
    info = json.loads(fm_ok("info", model, "--json"))["tuned_grids"]
    assert info["file"] == str(grid_file(model)) and [g["steps"] for g in info["grids"]] == [2, 3]
    assert "tuned euler 3 steps, cfg 2" in fm_ok("info", model)


def test_the_tuned_samples_are_the_stored_grid_and_scales(model):
    """What sampling does with a tuned grid is exactly the solver on the stored times with the stored scales."""
    fm_ok("tune", model, "--steps", "3", *FAST)
    stored = checkpoint_grids(model)[0]
    loaded = load_checkpoint(model)
    from fmcli.sampling.generate import generate
    from fmcli.sampling.guidance import balanced_classes, guided_velocity
    from fmcli.sampling.options import SamplingOptions

    labels = balanced_classes(10, 10)
    result = generate(loaded, SamplingOptions(solver="euler", steps=3, seed=5), num=10, condition=labels)
    x1 = torch.randn((10, *loaded.meta.shape), generator=torch.Generator().manual_seed(5))
    spec = Integration(time_grid=stored.times, step_scales=stored.scales)
    with torch.inference_mode():
        expected = get_solver("euler").solve(guided_velocity(loaded.model, 2.0, 10), x1, spec, {"y": labels}).x
    assert result.time_grid == "tuned" and torch.allclose(result.samples, expected, atol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--steps", "1"), "at least 2 steps"),
        (("--steps", "1,4"), "at least 2 steps"),
        (("--solver", "dopri5"), "adaptive"),
        (("--solver", "scipy_rk45"), "adaptive"),
        (("--solver", "eulr"), "eulr"),
        (("--steps", "four"), "comma-separated"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(model, args, message):
    assert_one_line_error(fm("tune", model, *args, *FAST), message, code=1)
    assert not grid_file(model).exists()


def test_bad_grid_files_stop_sampling_with_one_line(model, tmp_path):
    assert_one_line_error(fm("sample", model, "--time-grid", "tuned", "--out", tmp_path / "x.png"), "fm tune", code=1)
    fm_ok("tune", model, "--steps", "3", *FAST)
    path = grid_file(model)
    raw = json.loads(path.read_text())
    raw["grids"][0]["times"] = [1.0, 0.2, 0.5, 0.0]  # edited by hand out of order
    path.write_text(json.dumps(raw))
    assert_one_line_error(fm("sample", model, "--class", "1", "--out", tmp_path / "x.png"), "strictly", code=1)
    path.write_text("{")
    assert_one_line_error(fm("sample", model, "--class", "1", "--out", tmp_path / "x.png"), "damaged", code=1)
    assert_one_line_error(fm("tune", model, "--steps", "2", *FAST), "damaged", code=1)  # never overwritten blindly
    other = tmp_path / "other" / "tiny.safetensors"  # the same grid file beside another checkpoint
    other.parent.mkdir()
    shutil.copy(model, other)
    other.write_bytes(other.read_bytes()[:-4] + b"\0\0\0\0")
    path.unlink()
    fm_ok("tune", model, "--steps", "3", *FAST)
    shutil.copy(path, grid_file(other))
    result = fm("sample", other, "--class", "1", "--solver", "euler", "--steps", "3", "--out", tmp_path / "y.png")
    assert_one_line_error(result, "other checkpoint content", code=1)
    assert "other checkpoint content" in json.loads(fm_ok("info", other, "--json"))["tuned_grids"]["error"]


def test_a_plugin_solver_can_be_tuned(model):
    """The example plugin's Adams-Bashforth (a multistep integrate, registered inline here) tunes and samples."""
    sys.path.insert(0, str(PLUGIN_DIR))
    module = importlib.import_module("fm_adams_bashforth")
    registry.solvers()
    pm.register(module, name="fm-adams-bashforth-tune-test")
    registry.reset()
    try:
        payload = json.loads(fm_ok("tune", model, "--solver", "ab2", "--steps", "3", *FAST, "--json"))
        assert payload["grids"][0]["solver"] == "ab2" and payload["grids"][0]["scales"] is not None
        summary = json.loads(fm_ok("sample", model, "--class", "2", "--num", "4", "--solver", "ab2", "--steps", "3",
                                   "--out", model.parent / "ab2.png", "--json"))  # fmt: skip
        assert summary["time_grid"] == "tuned" and summary["nfe"] == 4
    finally:
        pm.unregister(module)
        registry.reset()
        sys.path.remove(str(PLUGIN_DIR))


def test_a_meanflow_student_tunes_its_jump_times(tmp_path):
    """A few-step (interval) model: the meanflow sampler's jump times are fitted against its own flow."""
    from helpers import MLP

    ckpt = train_tiny(tmp_path / "mf", data="moons", model=MLP, objective="meanflow", steps=3)
    loaded = load_checkpoint(ckpt)
    report = tune(loaded, TuneOptions(solver="meanflow", steps=(2, 3), pool=64, iterations=3, reference_steps=8))
    assert report.setting["conditional"] is True and report.setting["error"] == "RMSE of the points"  # moons: 2 classes
    for fit in report.fits:
        # points: the reported error is the square root of the loss itself, so the fit's guarantee shows exactly
        assert fit.error_tuned < fit.error_uniform and fit.error_tuned <= fit.error_start + 1e-12
    store_tuned(loaded.path, report.grids)
    summary = json.loads(fm_ok("sample", ckpt, "--class", "all", "--steps", "2", "--num", "8", "--json",
                               "--out", tmp_path / "p.npz"))  # fmt: skip
    assert (summary["solver"], summary["time_grid"]) == ("meanflow", "tuned")


def test_eval_sweep_shows_tuned_lines_beside_the_builtin_grids(toy_checkpoint, tmp_path):
    model = tmp_path / "toy.safetensors"
    shutil.copy(toy_checkpoint, model)
    fm_ok("tune", model, "--steps", "2", "--cfg", "1", "--pool", "64", "--iterations", "2", "--reference-steps", "4")
    report = json.loads(fm_ok("eval", model, "--sweep", "euler,heun", "--steps", "2,3", "--num", "64", "--out",
                              tmp_path / "sweep", "--grids", "uniform,cosine,tuned", "--json"))  # fmt: skip
    lines = [(run["solver"], run["steps"], run["time_grid"]) for run in report["runs"]]
    assert {("euler", 2, "tuned"), ("euler", 2, "uniform"), ("euler", 2, "cosine"), ("heun", 3, "cosine")} <= set(lines)
    assert [line for line in lines if line[2] == "tuned"] == [("euler", 2, "tuned")]  # only where a grid exists
    default = json.loads(fm_ok("eval", model, "--sweep", "euler", "--steps", "2,3", "--num", "64", "--device", "cpu",
                               "--out", tmp_path / "sweep2", "--json"))  # fmt: skip
    assert [(run["steps"], run["time_grid"]) for run in default["runs"]] == [
        (2, "uniform"),
        (2, "tuned"),
        (3, "uniform"),
    ]
