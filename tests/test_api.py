"""The Python API (``fmcli.__all__``): load, sample, animate, info, evaluate, custom solver objects, and the
example a researcher copies (examples/python_api.py), run on tiny checkpoints."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fmcli
from fmcli.errors import FMError
from fmcli.io.checkpoint import load_checkpoint
from fmcli.sampling.generate import generate
from fmcli.sampling.guidance import parse_classes
from fmcli.sampling.options import SamplingOptions

REPO = Path(__file__).resolve().parents[1]


class Ralston(fmcli.FixedStepSolver):
    name = "ralston-test"
    order, evals_per_step = 2, 2

    def step(self, f, x, t, h):
        k1 = f(x, t)
        return x + h * (k1 / 4 + 3 * f(x + 2 / 3 * h * k1, t + 2 / 3 * h) / 4)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return fmcli.load(tiny_checkpoint.parent, device="cpu")  # a run folder: its last.safetensors


def test_public_names_are_few_documented_and_lazy():
    public = {"FMError", "FixedStepSolver", "Integration", "Model", "Samples", "SamplingOptions", "Solver",
              "__version__", "evaluate", "hookimpl", "load"}  # fmt: skip
    assert set(fmcli.__all__) == public
    for name in fmcli.__all__:
        value = getattr(fmcli, name)
        assert name == "__version__" or value.__doc__, f"fmcli.{name} has no docstring"
    assert "private by convention" in fmcli.__doc__
    with pytest.raises(AttributeError):
        fmcli.no_such_name  # noqa: B018
    code = "import sys, fmcli; fmcli.hookimpl; assert 'torch' not in sys.modules; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


def test_sample_is_fm_sample(model, tiny_checkpoint):
    samples = model.sample(6, classes=3, solver="euler", steps=3, seed=5)
    assert samples.images.shape == (6, 28, 28, 1) and samples.images.dtype == np.uint8
    assert samples.labels.tolist() == [3] * 6 and samples.nfe == 3 and samples.solver == "euler"
    assert samples.cfg == 2.0 and samples.seconds > 0 and samples.trajectory is None  # fm sample's default guidance
    loaded = load_checkpoint(tiny_checkpoint, device="cpu")
    direct = generate(loaded, SamplingOptions(solver="euler", steps=3, seed=5), num=6,
                      condition=parse_classes("3", 6, loaded.meta.class_names))  # fmt: skip
    assert torch.equal(samples.result.samples, direct.samples)  # the same code path, the same numbers


def test_classes_take_an_index_a_name_all_a_list_or_a_tensor(model):
    assert model.labels(4, 3)[0].tolist() == [4, 4, 4]
    assert model.labels("7", 2)[0].tolist() == [7, 7]
    assert model.labels("all", 20)[0].tolist() == [i // 2 for i in range(20)]
    assert model.labels([1, "2", 3], None)[0].tolist() == [1, 2, 3]
    assert model.labels(torch.tensor([9, 0]), None)[1] == 2 and model.labels(np.array([5]), None)[1] == 1
    assert model.labels(None, None) == (None, 16)
    for bad, message in ((12, "out of range"), ("cat", "unknown class"), ([1, 2], "one class per sample")):
        with pytest.raises(FMError, match=message):
            model.labels(bad, 3)


def test_a_solver_object_of_ones_own_samples_without_registering(model):
    mine = model.sample(4, classes=[0, 1, 2, 3], solver=Ralston(), steps=3, seed=1)
    heun = model.sample(4, classes=[0, 1, 2, 3], solver="heun", steps=3, seed=1)
    assert mine.nfe == 6 and mine.solver == "ralston-test" and mine.options.as_dict()["solver"] == "ralston-test"
    gap = (mine.result.samples - heun.result.samples).abs().mean().item()
    assert 0 < gap < 0.5  # another 2nd-order method from the same noise: close, not equal
    assert json.dumps(mine.options.as_dict())  # reports stay plain values
    with pytest.raises(FMError, match="Solver object"):
        model.sample(2, solver=object())
    with pytest.raises(FMError, match="unknown solver"):
        model.sample(2, solver="hune")


def test_explicit_time_grid_and_trajectory(model):
    samples = model.sample(3, classes=1, solver="euler", time_grid=[1.0, 0.6, 0.2, 0.0], save_at=[1.0, 0.5, 0.0])
    assert samples.nfe == 3 and samples.steps == 3
    assert samples.times.tolist() == [1.0, 0.5, 0.0] and samples.trajectory.shape == (3, 3, 1, 28, 28)
    assert np.array_equal(samples.trajectory_images()[-1], samples.images)  # the last state is the sample
    counted = model.sample(2, save_at=4, steps=2, cfg=1.0)
    assert counted.times.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    with pytest.raises(FMError, match="time grid has 3 steps"):
        model.sample(2, solver="euler", steps=5, time_grid=[1.0, 0.6, 0.2, 0.0])


def test_save_writes_what_fm_sample_writes(model, tmp_path):
    samples = model.sample(4, classes="all", steps=2)
    assert samples.save(tmp_path / "grid.png", nrow=2) == [tmp_path / "grid.png"]
    assert Image.open(tmp_path / "grid.png").size == (2 * 30 + 2, 2 * 30 + 2)
    samples.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as saved:
        assert np.array_equal(saved["images"], samples.images) and saved["labels"].tolist() == [0, 2, 5, 7]
    assert len(samples.save(tmp_path / "folder")) == 4


def test_animate_gives_fm_animates_frames_and_the_final_samples(model, tmp_path):
    animation = model.animate(4, classes=2, frames=3, steps=2, scale=1, out=tmp_path / "a.gif")
    assert len(animation.frames) == 3 and animation.times == [1.0, 0.5, 0.0] and animation.nfe == 4
    assert Image.open(tmp_path / "a.gif").n_frames == 3
    final = fmcli.Samples.from_result(animation.result, model.meta)
    same = model.sample(4, classes=2, steps=2)
    assert np.array_equal(final.images, same.images)


def test_info_and_points_models(model, toy_checkpoint, tmp_path):
    assert model.info["default_sampling"] == {"solver": "heun", "steps": 20} and model.info["step"] == 3
    toy = fmcli.load(toy_checkpoint)
    points = toy.sample(10, steps=2)
    assert points.images is None and points.points.shape == (10, 2) and points.labels is None
    points.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").format == "PNG"
    with pytest.raises(FMError, match="out of range" if toy.num_classes else "unconditional"):
        toy.sample(2, classes=9)


def test_load_refuses_bad_files_in_one_line(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(FMError, match="not a readable safetensors checkpoint"):
        fmcli.load(bad)
    with pytest.raises(FMError, match="does not exist"):
        fmcli.load(tmp_path / "nothing")


def test_evaluate_is_fm_eval(toy_checkpoint):
    stages = []
    report = fmcli.evaluate(toy_checkpoint, num_samples=64, metrics=["kid"], steps=2, device="cpu",
                            progress=lambda stage, done, total: stages.append(stage))  # fmt: skip
    assert report["sampling"]["steps"] == 2 and report["sampling"]["nfe"] == 4
    assert report["metrics"]["kid"]["num_samples"] == 64 and stages
    model = fmcli.load(toy_checkpoint)
    again = fmcli.evaluate(model, fmcli_eval_options(), solver=Ralston(), steps=2)
    assert again["sampling"]["solver"] == "ralston-test" and json.dumps(again, default=str)


def fmcli_eval_options():
    from fmcli.eval.run import EvalOptions

    return EvalOptions(num_samples=32, metrics=("kid",), device="cpu", kid_subsets=5)


def test_the_example_runs(tiny_checkpoint, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("python_api_example", REPO / "examples" / "python_api.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    found = example.main(str(tiny_checkpoint), str(tmp_path), steps=2)
    assert (tmp_path / "grid.png").exists() and (tmp_path / "trajectory.npz").exists()
    assert found["mine"].nfe == 4 and found["path"].trajectory.shape[0] == 5
    with np.load(tmp_path / "trajectory.npz") as saved:
        assert saved["frames"].shape == (5, 8, 28, 28, 1)
    assert "ralston: NFE 4" in capsys.readouterr().out


def test_the_readme_example_runs(tiny_checkpoint, tmp_path, monkeypatch):
    """The ten lines of README.md's "Python API", on a tiny model (fewer samples and steps)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    code = section[section.index("```python\n") + 10 : section.index("```\n", section.index("```python"))]
    assert len([line for line in code.splitlines() if line.strip()]) <= 11
    code = code.replace('"runs/demo"', repr(str(tiny_checkpoint))).replace("steps=20", "steps=2")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert (tmp_path / "grid.png").exists() and scope["path"].nfe == 4
    assert scope["path"].trajectory.shape == (5, 40, 1, 28, 28)
