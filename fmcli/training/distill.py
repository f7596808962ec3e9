"""Distillation: the options that turn a trained flow checkpoint into a few-step (MeanFlow) training run.

The training itself is ``fmcli.training.loop.train`` with ``objective="meanflow"`` and ``teacher`` set: the
student is the teacher's architecture with the interval input, initialised from the teacher's
EMA weights, and its target velocity is the teacher's (guided) v_T(x_t, t) instead of x1 - x0
(``fmcli.training.objectives.TeacherVelocity``). Everything about the data comes from the teacher's own
training config, so the student sees the same images, size and classes, or the same captions: a text teacher's
student takes prompts, with the teacher's text encoder (``fmcli.training.conditions``), and its pool's draws are
each solved for a training caption (``fmcli.training.objectives.pool``).
"""

from pathlib import Path

from fmcli.errors import FMError
from fmcli.io.checkpoint import autoencoder_location, checkpoint_file, read_header
from fmcli.sampling.stored_guidance import EVERYWHERE, check_label, read_stored
from fmcli.training.config import LENGTH_KEYS

# The default, chosen by bench/one_step.py (equal wall time, fm eval FID / recall / accuracy at 1, 2 and 4 steps):
# a pool of 1,000 teacher solves and every batch regressed on its exact jumps. Against the MeanFlow identity alone,
# one step went from FID 408 (the class means) to 21.8, below the teacher's heun-20 23.0.
# A student keeps no guide (guide_at 0): it samples with its guidance folded in.
DISTILL_DEFAULTS = {"lr": 5e-4, "warmup_steps": 20, "sample_every": 0, "diagnose_every": 250, "pool": 1000,
                    "pool_fraction": 1.0, "guide_at": 0.0}  # fmt: skip
# How long the student trains, as a share of the teacher's steps, so that fm distill takes no longer than the
# teacher's training did. Measured on the demo (bench/one_step.py's scorer, 2 idle cores, the teacher's training
# 239 s): 55% took 214 s (one step FID 35.8), 60% 229 s (30.8), 70% 269 s (25.3). With the identity's jvp and the
# teacher in every step (no pool share), a step costs 2.2x (batch 64) to 2.9x (batch 16) a teacher step: 30%.
POOL_STEP_SHARE, IDENTITY_STEP_SHARE = 0.6, 0.3

DATA_KEYS = ("data", "data_dir", "image_size", "channels", "conditional", "hflip")
# A text teacher's captions and encoder, which its student keeps (what its own run recorded).
TEXT_KEYS = ("captions", "caption_column", "text_encoder", "text_encoder_path", "cross_attention")


def distill_overrides(
    teacher: Path, options: dict, interval=None, guide: str | None = None, guide_label: str | None = None
) -> dict:
    """The training overrides for distilling ``teacher``: its data and classes, the meanflow objective, the
    teacher's own sampling guidance folded in (what ``fm sample --class`` guides it with: the setting ``fm tune
    --guidance`` stored, else the default; ``interval`` and ``guide`` as --guidance-interval / --guide), and
    distillation's defaults under the user's ``options``."""
    path = checkpoint_file(teacher).resolve()
    _, meta = read_header(path)
    trained = meta.train_config or {}
    if "data" not in trained:
        raise FMError(f"{teacher} records no training data; fm distill needs a checkpoint written by fm train")
    guidance = 2.0 if meta.conditional and meta.label_dropout > 0 else 1.0  # fmcli.sampling.guidance.default_cfg's
    stored = read_stored(path) if meta.conditional else None
    chosen = {"interval": None, "guide": None, "guide_label": "null"}
    if stored is not None and stored.conditional:
        guidance = stored.setting.scale
        chosen = {"interval": stored.setting.interval and list(stored.setting.interval), "guide": stored.setting.guide,
                  "guide_label": stored.setting.guide_label}  # fmt: skip
    if interval is not None:
        chosen["interval"] = None if tuple(interval) == EVERYWHERE else list(interval)
    if guide is not None:
        chosen["guide"] = None if guide.lower() == "none" else str(Path(guide).resolve())
    if guide_label is not None:
        chosen["guide_label"] = check_label(guide_label)
    given = {key: value for key, value in options.items() if value is not None}
    if any(given.get(key) is not None for key in LENGTH_KEYS):  # the user's length replaces the default steps
        given.setdefault("steps", None)
    overrides = {key: trained.get(key) for key in DATA_KEYS} | condition_overrides(meta)
    # the student works in its teacher's space: its latents (the same autoencoder), or its pixels
    overrides["autoencoder"] = str(autoencoder_location(meta, path)) if meta.autoencoder else "none"
    overrides |= {"objective": "meanflow", "teacher": str(path), "train_cfg": guidance, "teacher_guidance": chosen}
    teacher_steps = int(meta.extra.get("total_steps") or meta.step or 1)
    pooled = (given.get("pool", DISTILL_DEFAULTS["pool"]) or 0) > 0
    share = (
        POOL_STEP_SHARE
        if pooled and given.get("pool_fraction", DISTILL_DEFAULTS["pool_fraction"]) == 1.0
        else IDENTITY_STEP_SHARE
    )
    defaults = DISTILL_DEFAULTS | {"steps": max(1, round(share * teacher_steps)),
                                   "batch_size": trained.get("batch_size", 64)}  # fmt: skip
    overrides |= {key: value for key, value in defaults.items() if key not in given}
    return overrides | given


def condition_overrides(meta) -> dict:
    """What the student conditions on, as its teacher did: a text teacher's captions and encoder, with its caption
    dropout; otherwise no captions (a class or unconditional teacher's student stays one) and its label dropout."""
    trained = meta.train_config or {}
    if meta.condition != "text":
        return {"captions": "none", "label_dropout": meta.label_dropout}
    return {key: trained[key] for key in TEXT_KEYS if key in trained} | {"caption_dropout": meta.label_dropout}
