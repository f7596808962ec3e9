"""Saving and restoring training state: weights, EMA weights, AdamW moments, step and counters.

Everything goes into ONE safetensors checkpoint (``fmcli.io.checkpoint``): tensors ``model.*``,
``ema.*`` and ``optim.<param index>.<slot>``; AdamW's param groups, the grad scaler and the
counters go into the metadata (``extra``). No RNG state is saved: everything random in step k
is drawn from generators seeded by (seed, k), so the step number is all resume needs.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from fmcli.data.base import ArrayDataset
from fmcli.errors import FMError
from fmcli.io.checkpoint import FORMAT_VERSION, CheckpointMeta, save_checkpoint, split_prefix
from fmcli.training.config import FREE_ON_RESUME, STRUCTURAL, TrainConfig, saved_with_defaults


@dataclass
class TrainState:
    """What changes as training runs, and what a checkpoint must hold to continue bit for bit."""

    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    step: int = 0  # optimizer steps taken
    skipped: int = 0  # steps skipped for a non-finite loss (--skip-nonfinite)
    images_seen: int = 0


def data_description(dataset: ArrayDataset, num_classes: int, text: bool = False, latent: dict | None = None) -> dict:
    """What a checkpoint records about its data (``fm info`` prints it; resume compares it); a text model's also
    eight of its training captions (``prompts``: the training previews draw them, fm serve offers them); a latent
    model's autoencoder (``latent``: kind, digest, path, image shape: what decodes its samples)."""
    from fmcli.data.resolve import describe

    prompts = list(dict.fromkeys(c[0] for c in dataset.captions if c))[:PREVIEW_PROMPTS] if text else None
    normalisation = {"image": "uint8 / 127.5 - 1 (range [-1, 1])", "latent": "the autoencoder's (about N(0, 1))"}
    return describe(dataset) | {
        "num_classes": num_classes,
        "class_names": dataset.class_names if num_classes else None,
        "normalisation": normalisation.get(dataset.kind, "none"),
        **({"prompts": prompts} if text else {}),
        **({"autoencoder": latent} if latent else {}),
    }


PREVIEW_PROMPTS = 8


def checkpoint_meta(state: TrainState, config: TrainConfig, data: dict, total_steps: int) -> CheckpointMeta:
    extra = {
        "optimizer_param_groups": state.optimizer.state_dict()["param_groups"],
        "skipped_steps": state.skipped,
        "images_seen": state.images_seen,
        "scaler": state.scaler.state_dict() if state.scaler.is_enabled() else None,
        "total_steps": total_steps,
    }
    # The null condition's training share: the label dropout, or a text model's caption dropout.
    label_dropout = (
        config.label_dropout if data["num_classes"] else config.caption_dropout if data.get("prompts") else 0.0
    )
    return CheckpointMeta(
        format_version=FORMAT_VERSION,
        model_config=state.model.config,
        data=data,
        step=state.step,
        label_dropout=label_dropout,
        train_config=asdict(config),
        extra=extra,
    )


def save_state(path: Path, state: TrainState, meta: CheckpointMeta) -> None:
    """Write weights, EMA, optimizer moments and ``meta`` atomically to ``path``."""
    tensors = {f"model.{k}": v for k, v in state.model.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in state.ema.state_dict().items()}
    for index, slots in state.optimizer.state_dict()["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    save_checkpoint(path, tensors, meta)


def restore_state(
    state: TrainState, tensors: dict[str, torch.Tensor], meta: CheckpointMeta, path: Path, weight_decay: float
) -> None:
    """Load a checkpoint into ``state`` in place (weights, EMA, optimizer, scaler, counters)."""
    try:
        state.model.load_state_dict(split_prefix(tensors, "model"))
        state.ema.load_state_dict(split_prefix(tensors, "ema"))
    except RuntimeError as error:
        reason = str(error).splitlines()[0][:160]
        raise FMError(f"cannot resume {path}: its weights do not fit the model ({reason})") from None
    slots: dict[int, dict] = {}
    for name, value in split_prefix(tensors, "optim").items():
        index, key = name.split(".", 1)
        slots.setdefault(int(index), {})[key] = value
    state.optimizer.load_state_dict({"state": slots, "param_groups": meta.extra["optimizer_param_groups"]})
    for group in state.optimizer.param_groups:  # the saved groups carry the old run's options
        group["weight_decay"] = weight_decay
    if meta.extra.get("scaler") and state.scaler.is_enabled():
        state.scaler.load_state_dict(meta.extra["scaler"])
    state.step = meta.step
    state.skipped = meta.extra.get("skipped_steps", 0)
    state.images_seen = meta.extra.get("images_seen", 0)


def check_same_data(saved: dict, now: dict, path: Path) -> None:
    """A run continues on the data it was trained on: same kind, item shape, classes and size."""
    keys = ("kind", "shape", "num_classes", "size")
    changed = [key for key in keys if saved.get(key) != now[key]]
    digests = [(record or {}).get("digest") for record in (saved.get("autoencoder"), now.get("autoencoder"))]
    if digests[0] != digests[1]:
        changed.append("autoencoder")
        saved, now = saved | {"autoencoder": digests[0]}, now | {"autoencoder": digests[1]}
    if changed:
        details = "; ".join(f"{key}: {saved.get(key)!r} -> {now[key]!r}" for key in changed)
        raise FMError(f"cannot resume {path}: the data differs from the data it was trained on ({details})")


def check_resume(saved: dict, wanted: TrainConfig, allow_change: bool) -> None:
    """Refuse to continue a run as something else; hyper-parameters change only when allowed."""
    saved, current = saved_with_defaults(saved), asdict(wanted)
    structural = [key for key in STRUCTURAL if saved.get(key) != current.get(key)]
    if structural:
        details = "; ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in structural)
        raise FMError(f"cannot resume: the run was trained with a different model or data ({details})")
    changed = [key for key in current if key not in STRUCTURAL + FREE_ON_RESUME and saved.get(key) != current[key]]
    if changed and not allow_change:
        details = ", ".join(f"{key} {saved.get(key)!r} -> {current[key]!r}" for key in changed)
        raise FMError(f"resuming with changed training options ({details}); pass --allow-change to accept")
