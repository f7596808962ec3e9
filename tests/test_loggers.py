"""Training loggers: metrics.jsonl always, TensorBoard on request, and any tracker through the logger hook."""

import json
from pathlib import Path

import pytest
from helpers import moons as moons_of
from helpers import runner

from fmcli import hookimpl, registry
from fmcli.cli import app
from fmcli.plugins import pm
from fmcli.specs import LoggerSpec
from fmcli.training.loop import train


def moons(out: Path, **overrides) -> dict:
    return moons_of(
        out, **({"model": {"hidden": 16, "depth": 1}, "warmup_steps": 1, "log_every": 2, "sample_every": 2} | overrides)
    )


class Recorder:
    """A logger plugin as a tracker (W&B, MLflow, ...) would be one: it keeps what it receives."""

    opened: list = []

    def __init__(self, run_dir, config):
        self.records, self.images, self.closed = [], [], False
        Recorder.opened.append((self, Path(run_dir), config))

    def log(self, record):
        self.records.append(record)

    def log_image(self, step, tag, image):
        self.images.append((step, tag, image.size))

    def close(self):
        self.closed = True


@pytest.fixture
def recorder_plugin():
    class Plugin:
        @hookimpl
        def fm_register_loggers(self, register):
            register(LoggerSpec(name="recorder", description="keeps records (tests)", open=Recorder))
            missing = dict(requires="no_such_package_wand", install="pip install wand")
            register(LoggerSpec(name="needs-wand", description="needs a missing package", open=Recorder, **missing))

    registry.loggers()
    plugin = Plugin()
    pm.register(plugin, name="recorder-plugin")
    registry.reset()
    Recorder.opened = []
    yield Recorder
    pm.unregister(plugin)
    registry.reset()


def test_a_logger_plugin_receives_every_record_and_every_sample_grid(tmp_path, recorder_plugin):
    train(moons(tmp_path / "run", log_to=["recorder"]))
    (logger, run_dir, config), = recorder_plugin.opened  # fmt: skip
    assert run_dir == tmp_path / "run" and config.log_to == ["recorder"] and logger.closed
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logger.records == lines and [r["step"] for r in lines] == [2, 4]  # the same records as metrics.jsonl
    assert [(step, tag) for step, tag, _ in logger.images] == [(2, "samples"), (4, "samples")]


def test_unknown_loggers_and_missing_packages_fail_in_one_line_before_the_run_folder(tmp_path, recorder_plugin,
                                                                                     monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    for name, fragment in (("wandb", "unknown logger 'wandb'"),
                           ("needs-wand", "--log-to needs-wand needs the no_such_package_wand package: "
                                          "pip install wand")):  # fmt: skip
        result = runner.invoke(app, ["train", "moons", "--steps", "2", "--log-to", name, "--out", "r"])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and fragment in lines[0], result.output
    assert not (tmp_path / "r").exists()


def test_tensorboard_writes_event_files_that_tensorboard_reads(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(moons(run, log_to=["tensorboard"]))
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/images_per_s"} <= set(tags["scalars"])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("train/loss")] == [
        (r["step"], pytest.approx(r["loss"])) for r in lines
    ]
    assert [image.step for image in events.Images("samples")] == [2, 4]
