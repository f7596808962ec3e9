"""Checkpoints as safetensors files that carry their own config (no pickle anywhere).

One file holds everything:
    model.*   raw weights                ema.*     EMA weights (sampling uses these by default)
    optim.*   AdamW moments and steps    (training state, for exact resume)
and string metadata: format and version, the model config, the data description (name,
split, kind, shape, classes, normalisation), the step, and the resolved training config.

Writes are atomic: temporary file in the same folder, fsync, rename, fsync of the folder,
so a crash or a full disk never damages the newest good checkpoint.
"""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from fmcli.errors import FMError

FORMAT = "fmcli-checkpoint"
FORMAT_VERSION = 1


@dataclass
class CheckpointMeta:
    format_version: int
    model_config: dict
    data: dict                 # name, split, kind, shape, num_classes, class_names, normalisation
    step: int
    label_dropout: float = 0.0
    train_config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)   # training state that is not a tensor (schedulers, scaler, ...)

    @property
    def num_classes(self) -> int:
        return int(self.data.get("num_classes") or 0)

    @property
    def class_names(self) -> list[str]:
        return list(self.data.get("class_names") or [])


@dataclass
class LoadedModel:
    model: nn.Module           # eval mode, on the requested device
    meta: CheckpointMeta


def _encode_meta(meta: CheckpointMeta) -> dict[str, str]:
    fields = asdict(meta)
    encoded = {key: json.dumps(value) for key, value in fields.items()}
    encoded["format"] = FORMAT
    return encoded


def _decode_meta(raw: dict[str, str], path: Path) -> CheckpointMeta:
    if raw.get("format") != FORMAT:
        raise FMError(f"{path} is a safetensors file but not an fm checkpoint (no '{FORMAT}' metadata)")
    try:
        version = json.loads(raw["format_version"])
    except (KeyError, ValueError):
        raise FMError(f"{path}: checkpoint metadata has no readable format_version") from None
    if version != FORMAT_VERSION:
        raise FMError(f"{path}: checkpoint format version {version} is not supported by this fm "
                      f"(it reads version {FORMAT_VERSION}); upgrade fm or re-train")
    try:
        values = {name: json.loads(raw[name]) for name in CheckpointMeta.__dataclass_fields__ if name in raw}
        return CheckpointMeta(**values)
    except (TypeError, ValueError) as error:
        raise FMError(f"{path}: checkpoint metadata is damaged ({error})") from None


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: CheckpointMeta) -> None:
    """Atomically write tensors (already prefixed ``model.``/``ema.``/``optim.``) and metadata."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FMError(f"refusing to write {path}: tensor {name} holds NaN or infinite values")
    contiguous = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    atomic_write_bytes(Path(path), save(contiguous, metadata=_encode_meta(meta)))


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """All tensors and the metadata of a checkpoint file, with clear errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise FMError(f"checkpoint {path} does not exist")
    if path.is_dir():
        candidate = path / "last.safetensors"
        if not candidate.exists():
            raise FMError(f"{path} is a folder without last.safetensors; pass a checkpoint file")
        path = candidate
    payload = path.read_bytes()
    try:
        tensors = load(payload)
        raw = _read_raw_metadata(payload)
    except (SafetensorError, ValueError, OSError, RuntimeError) as error:
        raise FMError(f"{path} is not a readable safetensors checkpoint (truncated or another format): "
                      f"{str(error).splitlines()[0][:120]}") from None
    return tensors, _decode_meta(raw, path)


def _read_raw_metadata(payload: bytes) -> dict[str, str]:
    if len(payload) < 8:
        raise ValueError("file too short")
    header_len = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + header_len])
    return header.get("__metadata__") or {}


def read_metadata(path: Path) -> CheckpointMeta:
    """Only the metadata (for ``fm info``)."""
    return read_checkpoint(path)[1]


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """{"ema.a": x, "model.a": y} -> {"a": x} for prefix "ema"."""
    start = prefix + "."
    return {name[len(start):]: t for name, t in tensors.items() if name.startswith(start)}


def load_checkpoint(path: Path, *, device: str | torch.device = "cpu", weights: str = "ema") -> LoadedModel:
    """Rebuild the model from the checkpoint's own config and load EMA (default) or raw weights."""
    from fmcli.models import build_model

    if weights not in ("ema", "raw"):
        raise FMError(f"--weights must be 'ema' or 'raw', not {weights!r}")
    tensors, meta = read_checkpoint(path)
    state = split_prefix(tensors, "ema" if weights == "ema" else "model")
    if not state:
        raise FMError(f"{path} holds no {weights} weights")
    model = build_model(meta.model_config)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise FMError(f"{path}: weights do not match the model config ({str(error).splitlines()[0][:160]})") from None
    return LoadedModel(model=model.to(device).eval(), meta=meta)


def update_last_link(run_dir: Path, target: Path) -> Path:
    """Point run_dir/last.safetensors at ``target`` atomically (a relative symlink; a copy where links fail)."""
    link = Path(run_dir) / "last.safetensors"
    tmp = link.with_name(f".last.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(Path(target).name, tmp)
    except OSError:
        atomic_write_bytes(link, Path(target).read_bytes())
        return link
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(link.parent)
    return link
