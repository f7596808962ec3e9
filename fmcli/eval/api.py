"""``fmcli.evaluate``: ``fm eval`` for a single setting, as one function of the Python API.

It fills an ``EvalOptions`` from keywords (sampling ones included) and calls ``evaluate_checkpoint``, the
function ``fm eval`` calls, so the report is the same dictionary ``fm eval --json`` prints.
"""

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Union

from fmcli.eval.features import Progress
from fmcli.eval.run import EvalOptions, evaluate_checkpoint
from fmcli.sampling.model import Model
from fmcli.sampling.solvers.base import Solver


def evaluate(
    checkpoint: Union[str, "os.PathLike[str]", Model],
    options: EvalOptions | None = None,
    *,
    num_samples: int | None = None,
    metrics: Sequence[str] | None = None,
    extractor: str | None = None,
    solver: str | Solver | None = None,
    steps: int | None = None,
    cfg: float | None = None,
    guidance_interval: tuple[float, float] | str | None = None,
    guide: Union[str, "os.PathLike[str]", None] = None,
    seed: int | None = None,
    time_grid: str | Sequence[float] | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    data: str | None = None,
    data_dir: Union[str, "os.PathLike[str]", None] = None,
    download: bool | None = None,
    progress: Progress | None = None,
) -> dict:
    """Sample from a checkpoint and score the samples against its data set's test split, as ``fm eval`` does.

    ``checkpoint`` is a file, a run folder or a loaded ``Model`` (its file is evaluated, with the device and the
    weights of ``options``). Every keyword left at None keeps ``options``' value (default ``EvalOptions()``:
    5,000 samples, FID, KID and precision/recall, the data set's default feature extractor, heun 20 or a
    few-step model's own sampler, no guidance (cfg 1; ``guidance_interval`` and ``guide`` as
    ``fm eval``'s), seed 0, the device ``auto``). ``progress(stage, done,
    total)`` hears about each stage. Returns the report ``fm eval --json`` prints: ``report["metrics"]["fid"]
    ["value"]``, the sampling's NFE and seconds, the sample counts behind each figure.
    """
    base = options or EvalOptions()
    given = {
        "solver": solver,
        "steps": steps,
        "cfg": cfg,
        "guidance_interval": guidance_interval,
        "guide": None if guide is None else str(guide),
        "seed": seed,
        "time_grid": time_grid,
        "batch_size": batch_size,
    }
    sampling = {name: value for name, value in given.items() if value is not None}
    changes: dict[str, Any] = {
        "num_samples": num_samples,
        "metrics": None if metrics is None else tuple(metrics),
        "extractor": extractor,
        "device": device,
        "data": data,
        "data_dir": None if data_dir is None else Path(data_dir),
        "download": download,
    }
    changes = {name: value for name, value in changes.items() if value is not None}
    if sampling:
        changes["sampling"] = replace(base.sampling, **sampling)
    path = checkpoint.path if isinstance(checkpoint, Model) else Path(checkpoint)
    return evaluate_checkpoint(path, replace(base, **changes), progress)
