"""Where training metrics go: metrics.jsonl always, plus any logger registered through ``fm_register_loggers``.

A logger is opened on rank 0 with the run folder and the config, receives every logged record
(``{"step": ..., "loss": ..., "lr": ..., ...}``) and every sample grid, and is closed when training
ends (also on Ctrl-C). ``Loggers`` fans out to all of them.
"""

import importlib.util
import json
from pathlib import Path

from fmcli import registry
from fmcli.errors import FMError

ALWAYS = "jsonl"  # the run's own record: resume, fm info and the tests read metrics.jsonl


class JsonlLogger:
    """One JSON object per line in ``run_dir/metrics.jsonl``, appended (a resumed run continues the file)."""

    def __init__(self, run_dir: Path, config=None):
        self.path = Path(run_dir) / "metrics.jsonl"

    def log(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def log_image(self, step: int, tag: str, image) -> None:
        pass  # sample grids are files of their own (samples/step-N.png)

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """TensorBoard event files in the run folder, through ``torch.utils.tensorboard`` (the tensorboard extra)."""

    def __init__(self, run_dir: Path, config=None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FMError(
                "--log-to tensorboard needs the tensorboard package: pip install 'fmcli[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(log_dir=str(run_dir))

    def log(self, record: dict) -> None:
        step = record["step"]
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{key}", value, step)
        self.writer.flush()

    def log_image(self, step: int, tag: str, image) -> None:
        import numpy as np

        array = np.asarray(image.convert("RGB"))
        self.writer.add_image(tag, array, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def check_loggers(names: list[str]) -> list:
    """The specs of --log-to's loggers (and jsonl); unknown names and missing packages fail here, in one line,
    before the run folder is made."""
    specs = [registry.get_logger(name) for name in [ALWAYS] + [name for name in names if name != ALWAYS]]
    for spec in specs:
        if spec.requires and importlib.util.find_spec(spec.requires) is None:
            how = f": {spec.install}" if spec.install else ""
            raise FMError(f"--log-to {spec.name} needs the {spec.requires} package{how}")
    return specs


class Loggers:
    """metrics.jsonl plus the loggers named by --log-to; opened on rank 0 only (elsewhere every call does nothing)."""

    def __init__(self, specs: list):
        self.specs, self.loggers = specs, []

    def open(self, run_dir: Path, config) -> None:
        self.loggers = [spec.open(run_dir, config) for spec in self.specs]

    def log(self, record: dict) -> None:
        for logger in self.loggers:
            logger.log(record)

    def log_image(self, step: int, tag: str, image) -> None:
        for logger in self.loggers:
            logger.log_image(step, tag, image)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []
