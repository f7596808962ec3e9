"""Distillation: the options that turn a trained flow checkpoint into a few-step (MeanFlow) training run.

The training itself is ``fmcli.training.loop.train`` with ``objective="meanflow"`` and ``teacher`` set: the
student is the teacher's architecture with the interval input, initialised from the teacher's
EMA weights, and its target velocity is the teacher's (guided) v_T(x_t, t) instead of x1 - x0
(``fmcli.training.objectives.TeacherVelocity``). Everything about the data comes from the teacher's own
training config, so the student sees the same images, size and classes.
"""

from pathlib import Path

from fmcli.errors import FMError
from fmcli.io.checkpoint import checkpoint_file, read_header
from fmcli.training.config import LENGTH_KEYS

# A distillation step costs 2.2x (batch 64) to 2.9x (batch 16, the demo's) a step of the teacher's
# training on the CPU (the jvp on the quarter of the batch with r < t, and the guided teacher's two
# evaluations), so 30% of the teacher's steps take at most about 90% of its training time: `fm distill`
# takes no longer than the teacher did.
DISTILL_STEP_SHARE = 0.3
DISTILL_DEFAULTS = {"lr": 5e-4, "warmup_steps": 20, "sample_every": 0, "diagnose_every": 100}
DATA_KEYS = ("data", "data_dir", "image_size", "channels", "conditional", "hflip")


def distill_overrides(teacher: Path, options: dict) -> dict:
    """The training overrides for distilling ``teacher``: its data and classes, the meanflow objective, the
    teacher's own sampling guidance folded in, and distillation's defaults under the user's ``options``."""
    path = checkpoint_file(teacher).resolve()
    _, meta = read_header(path)
    trained = meta.train_config or {}
    if "data" not in trained:
        raise FMError(f"{teacher} records no training data; fm distill needs a checkpoint written by fm train")
    guidance = 2.0 if meta.num_classes and meta.label_dropout > 0 else 1.0  # fmcli.sampling.guidance.default_cfg's rule
    given = {key: value for key, value in options.items() if value is not None}
    if any(given.get(key) is not None for key in LENGTH_KEYS):  # the user's length replaces the default steps
        given.setdefault("steps", None)
    overrides = {key: trained.get(key) for key in DATA_KEYS}
    overrides |= {"label_dropout": meta.label_dropout, "objective": "meanflow", "teacher": str(path),
                  "train_cfg": guidance}  # fmt: skip
    teacher_steps = int(meta.extra.get("total_steps") or meta.step or 1)
    defaults = DISTILL_DEFAULTS | {"steps": max(1, round(DISTILL_STEP_SHARE * teacher_steps)),
                                   "batch_size": trained.get("batch_size", 64)}  # fmt: skip
    overrides |= {key: value for key, value in defaults.items() if key not in given}
    return overrides | given
