"""The benchmark harness runs end to end at tiny budgets (a smoke test: no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_throughput_smoke(tmp_path):
    run("throughput.py", "--device", "cpu", "--batch-size", "8", "--sample-batch", "8", "--seconds", "0.1",
        "--model", '{"base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": []}', "--out", str(tmp_path))
    report = json.loads((tmp_path / "throughput.json").read_text())
    assert report["header"]["forward_flops_per_image"] > 0
    assert [row["images_per_s"] > 0 for row in report["rows"]] == [True] * 5
    assert "| training" in (tmp_path / "throughput.md").read_text()


def test_time_to_quality_smoke(tmp_path):
    run("time_to_quality.py", "--data", "mnist-mini", "--budgets", "1", "--reference-budget", "1", "--num", "200",
        "--solvers", "euler:2", "--reference-solvers", "euler:2", "--device", "cpu", "--batch-size", "16",
        "--model", '{"base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": []}', "--out", str(tmp_path))
    report = json.loads((tmp_path / "time_to_quality.json").read_text())
    ours = [row for row in report["rows"] if row["side"] == "fm"]
    assert ours and ours[0]["nfe"] == 2 and ours[0]["fid"] >= 0 and ours[0]["num_samples"] == 200
    assert "| fm |" in (tmp_path / "time_to_quality.md").read_text()
