"""The benchmark harness runs end to end at tiny budgets (a smoke test: no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_throughput_smoke(tmp_path):
    run(
        "throughput.py",
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--sample-batch",
        "2",  # five sampling rows of up to 80 network passes each: the fewest images that still batch
        "--seconds",
        "0.1",
        "--model",
        '{"base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": []}',
        "--out",
        str(tmp_path),
    )
    report = json.loads((tmp_path / "throughput.json").read_text())
    assert report["header"]["forward_flops_per_image"] > 0
    whats = [row["what"] for row in report["rows"]]
    assert len(whats) == 6 and whats[-1].startswith("sampling heun 20 steps (NFE 40, guidance 2")  # fm sample --class
    assert all(row["images_per_s"] > 0 and row["tflops"] > 0 for row in report["rows"])
    assert "| training" in (tmp_path / "throughput.md").read_text()


def test_time_to_quality_smoke(tmp_path):
    # 2-D data keeps the smoke test fast (MNIST scoring would first train fm's MNIST classifier);
    # the reference side needs torchcfm, which CI does not install, so our side runs alone.
    run(
        "time_to_quality.py",
        "--data",
        "moons",
        "--budgets",
        "1,2",
        "--num",
        "200",
        "--no-reference",
        "--solvers",
        "euler:2,heun:2",
        "--device",
        "cpu",
        "--batch-size",
        "64",
        "--model",
        '{"hidden": 32, "depth": 2}',
        "--out",
        str(tmp_path),
    )
    report = json.loads((tmp_path / "time_to_quality.json").read_text())
    rows = report["rows"]
    assert [(row["budget_s"], row["solver"], row["nfe"]) for row in rows] == [
        (1.0, "euler", 2),
        (1.0, "heun", 4),
        (2.0, "euler", 2),
        (2.0, "heun", 4),
    ]
    assert all(row["side"] == "fm" and row["fid"] >= 0 and row["num_samples"] == 200 for row in rows)
    assert rows[2]["steps_trained"] > rows[0]["steps_trained"] > 0
    assert "| fm |" in (tmp_path / "time_to_quality.md").read_text()


def test_folder_scale_smoke(tmp_path):
    run(
        "folder_scale.py",
        "--num",
        "24",
        "--classes",
        "3",
        "--pixels",
        "24",
        "--image-size",
        "16",
        "--repeat",
        "1",
        "--out",
        str(tmp_path),
    )
    report = json.loads((tmp_path / "folder_scale.json").read_text())
    assert [row["what"].split(",")[0] for row in report["rows"]][:3] == ["decode"] * 3
    assert all(row["images_per_s"] > 0 for row in report["rows"])
    assert len(list((tmp_path / "folder-scale-cache" / "folders").glob("*.fmc"))) == 1  # the user's cache untouched


def test_folder_quality_guidance_scales(tmp_path):
    """--scores names guidance scales as cfg:X; anything else stops in one argparse line, nothing written."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from folder_quality import guidance_scale
    finally:
        sys.path.remove(str(REPO / "bench"))
    assert [guidance_scale(how) for how in ("unguided", "guided", "cfg:1.5")] == [1.0, None, 1.5]
    out = tmp_path / "out"
    for bad in ("cfg:abc", "cfg:nan", "strong"):
        result = subprocess.run(
            [sys.executable, str(REPO / "bench" / "folder_quality.py"), "--scores", bad, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2 and "--scores takes" in result.stderr.splitlines()[-1]
        assert not out.exists()
