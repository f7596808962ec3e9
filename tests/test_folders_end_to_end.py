"""A user's folder of photos at 64 px, end to end on the CPU: the 64 px preset trains from the cached folder
(with flips, the default for folders) and samples; the plan is printed before training starts."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from fmcli.cli import app
from fmcli.io.checkpoint import read_checkpoint
from fmcli.models.presets import CPU_PRESETS

runner = CliRunner()


def test_a_folder_at_64_px_trains_with_its_preset_and_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("FM_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (folder / name).mkdir(parents=True)
        for k in range(4):  # 96 x 80 JPEGs: resized (shorter side 64) and centre-cropped
            pixels = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{k}.jpg", quality=90)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(folder), "--image-size", "64", "--steps", "2", "--batch-size", "4",
                                 "--warmup-steps", "1", "--sample-every", "0", "--out", str(run)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 steps at" in result.output and "per epoch" in result.output  # the plan, before it goes on
    tensors, meta = read_checkpoint(run / "last.safetensors")
    preset = CPU_PRESETS[64]
    assert {key: meta.model_config[key] for key in preset} == preset
    assert meta.data["shape"] == [3, 64, 64] and meta.data["class_names"] == ["cats", "dogs"]
    assert meta.train_config["hflip"] is True and meta.train_config["cache"] is True
    assert list((tmp_path / "cache" / "folders").glob("*.fmc"))  # trained from the decoded cache
    out = tmp_path / "two.npz"
    result = runner.invoke(app, ["sample", str(run), "--class", "dogs", "--num", "2", "--steps", "2",
                                 "--out", str(out), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    arrays = np.load(out)
    assert arrays["images"].shape == (2, 64, 64, 3) and arrays["labels"].tolist() == [1, 1]
    assert json.loads(result.stdout[result.stdout.index("{") :])["nfe"] == 4
