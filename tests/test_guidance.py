"""Classifier-free guidance against the formula written here, and `fm sample --class NAME` on a folder data set."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fmcli.cli import app
from fmcli.models.mlp import MLPVelocity
from fmcli.sampling.guidance import guided_velocity
from fmcli.training.loop import train

runner = CliRunner()
NUM_CLASSES = 3  # labels 0, 1, 2; the null class is 3


class CountingModel(torch.nn.Module):
    """A real (randomly initialised) conditional MLP that counts its calls and the rows it evaluates
    (guidance may batch v_c and v_u into one call of 2B rows, so rows tell one velocity from two)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = MLPVelocity(dim=2, hidden=16, depth=1, num_classes=NUM_CLASSES)
        self.calls = self.rows = 0

    def forward(self, x, t, y=None):
        self.calls += 1
        self.rows += x.shape[0]
        return self.net(x, t, y)


@pytest.fixture
def model():
    return CountingModel().eval()


def inputs():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, generator=generator)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return x, torch.tensor(0.3), y


@torch.no_grad()
def test_guidance_combines_conditional_and_null_class_velocities(model):
    """S = 2.5: v = v_u + S (v_c - v_u), v_c = model(x, t, y), v_u = model(x, t, null class)."""
    x, t, y = inputs()
    t_batch = t.expand(6)
    v_c = model(x, t_batch, y)
    v_u = model(x, t_batch, torch.full_like(y, NUM_CLASSES))
    assert (v_c - v_u).abs().max() > 0.05  # the classes really differ, so swapping them would show
    model.calls = model.rows = 0
    guided = guided_velocity(model, 2.5, NUM_CLASSES)(x, t, y)
    assert model.rows == 12 and model.calls <= 2  # v_c and v_u of 6 points, batched or not
    # Same network, same rows: equal up to float32 rounding of the batched evaluation.
    assert torch.allclose(guided, v_u + 2.5 * (v_c - v_u), atol=1e-5)
    assert not torch.allclose(guided, v_c, atol=1e-3)


@torch.no_grad()
def test_scale_one_is_one_conditional_call(model):
    """S = 1 is plain conditional sampling: one call on the B points, no null-class evaluation."""
    x, t, y = inputs()
    expected = model(x, t.expand(6), y)
    model.calls = model.rows = 0
    assert torch.equal(guided_velocity(model, 1.0, NUM_CLASSES)(x, t, y), expected)
    assert (model.calls, model.rows) == (1, 6)


@torch.no_grad()
def test_no_labels_is_one_null_class_call(model):
    """y=None (unconditional sampling): one call, the null-class velocity, whatever the scale."""
    x, t, _ = inputs()
    expected = model(x, t.expand(6), torch.full((6,), NUM_CLASSES))
    model.calls = model.rows = 0
    assert torch.equal(guided_velocity(model, 2.5, NUM_CLASSES)(x, t, None), expected)
    assert (model.calls, model.rows) == (1, 6)


# ----------------------------------------------------------------------------- --class NAME on a folder

NAMES = ["owls", "cats", "dogs"]  # created in this order; labels follow the SORTED names


@pytest.fixture
def animals_checkpoint(tmp_path, recorder):
    folder = tmp_path / "animals"
    rng = np.random.default_rng(0)
    for name in NAMES:
        (folder / name).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / name / f"{k}.png")
    unet = {
        "name": "recording-unet",
        "base_channels": 8,
        "channel_mults": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [],
    }
    result = train(
        {
            "data": str(folder),
            "image_size": 8,
            "model": unet,
            "batch_size": 4,
            "steps": 2,
            "warmup_steps": 1,
            "out": str(tmp_path / "run"),
            "sample_every": 0,
            "log_every": 1000,
            "checkpoint_every": 1000,
        }
    )
    recorder.calls.clear()
    return result.checkpoint


def test_sample_class_by_folder_name(animals_checkpoint, recorder, tmp_path):
    """--class NAME: the labels written and the labels the network gets are NAME's index among the sorted
    sub-folder names (with the default guidance 2 the network also gets the null class, 3)."""
    images = {}
    for name in NAMES:
        out = tmp_path / f"{name}.npz"
        result = runner.invoke(
            app,
            [
                "sample",
                str(animals_checkpoint),
                "--class",
                name,
                "--num",
                "3",
                "--solver",
                "euler",
                "--steps",
                "2",
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        index = sorted(NAMES).index(name)
        assert np.load(out)["labels"].tolist() == [index] * 3
        seen = torch.cat([call.y for call in recorder.calls if not call.grad])
        assert set(seen.tolist()) == {index, NUM_CLASSES}, name
        recorder.calls.clear()
        images[name] = np.load(out)["images"]
    by_index = tmp_path / "by-index.npz"
    assert (
        runner.invoke(
            app,
            [
                "sample",
                str(animals_checkpoint),
                "--class",
                "1",
                "--num",
                "3",
                "--solver",
                "euler",
                "--steps",
                "2",
                "--out",
                str(by_index),
            ],
        ).exit_code
        == 0
    )
    assert np.array_equal(np.load(by_index)["images"], images["dogs"])  # dogs is class 1 of cats, dogs, owls


def test_unknown_class_name_fails_in_one_line(animals_checkpoint, tmp_path):
    """An unknown --class name: one error line naming the known classes, and no output file."""
    out = tmp_path / "x.npz"
    result = runner.invoke(
        app, ["sample", str(animals_checkpoint), "--class", "ferrets", "--num", "2", "--steps", "1", "--out", str(out)]
    )
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "unknown class 'ferrets'" in lines[0] and "cats, dogs, owls" in lines[0]
    assert not out.exists()
