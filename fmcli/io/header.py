"""A checkpoint's header: its metadata and tensor shapes, read without torch (a few kB, whatever the file's size).

``fm info``, ``fm serve``'s checkpoint list and the checks before loading read only this; ``fmcli.io.checkpoint``
(which needs torch) re-exports every name here.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fmcli.errors import FMError
from fmcli.models.condition import condition_kind, null_value

FORMAT = "fmcli-checkpoint"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on a header


@dataclass
class CheckpointMeta:
    format_version: int
    model_config: dict
    data: dict  # name, split, kind, shape, num_classes, class_names, normalisation
    step: int
    label_dropout: float = 0.0
    train_config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # training state that is not a tensor (scaler, counters, ...)

    @property
    def num_classes(self) -> int:
        return int(self.data.get("num_classes") or 0)

    @property
    def condition(self) -> str:
        """What the model takes as y: "class" indices, "text" (prompt token ids) or "none"."""
        return "text" if condition_kind(self.model_config) == "text" else "class" if self.num_classes else "none"

    @property
    def conditional(self) -> bool:
        return self.condition != "none"

    @property
    def null_condition(self) -> int:
        """The fill value of the null condition (the null class, or PAD: the empty prompt)."""
        return null_value(self.condition, self.num_classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.data.get("class_names") or [])

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one item the model generates, e.g. (1, 28, 28) or (2,); a latent model's latents (4, 32, 32)."""
        return tuple(self.data["shape"])

    @property
    def autoencoder(self) -> dict | None:
        """A latent model's autoencoder, as recorded: kind, digest, path (relative to the checkpoint's folder when
        it lies inside it), image_shape. None for a model of pixels or points."""
        found = self.data.get("autoencoder")
        return found if isinstance(found, dict) else None

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one sample as the user gets it: a latent model's decoded image (3, 128, 128), else ``shape``."""
        found = self.autoencoder
        return tuple(found["image_shape"]) if found else self.shape


def _decode_meta(raw: dict[str, str], path: Path) -> CheckpointMeta:
    if raw.get("format") != FORMAT:
        raise FMError(f"{path} is a safetensors file but not an fm checkpoint (no '{FORMAT}' metadata)")
    try:
        version = json.loads(raw["format_version"])
    except (KeyError, ValueError):
        raise FMError(f"{path}: checkpoint metadata has no readable format_version") from None
    if version != FORMAT_VERSION:
        raise FMError(
            f"{path}: checkpoint format version {version} is not supported by this fm "
            f"(it reads version {FORMAT_VERSION}); upgrade fm or re-train"
        )
    try:
        values = {name: json.loads(raw[name]) for name in CheckpointMeta.__dataclass_fields__ if name in raw}
        meta = CheckpointMeta(**values)
    except (TypeError, ValueError) as error:
        raise FMError(f"{path}: checkpoint metadata is damaged ({error})") from None
    if not isinstance(meta.model_config, dict) or not isinstance(meta.data, dict) or "shape" not in meta.data:
        raise FMError(f"{path}: checkpoint metadata is damaged (no model config or data shape)")
    return meta


def checkpoint_file(path: Path) -> Path:
    """``path`` itself, or a run folder's last.safetensors; FMError when neither exists."""
    path = Path(path)
    if not path.exists():
        raise FMError(f"checkpoint {path} does not exist")
    if path.is_dir():
        candidate = path / "last.safetensors"
        if not candidate.exists():
            raise FMError(f"{path} is a folder without last.safetensors; pass a checkpoint file")
        return candidate
    return path


def read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], CheckpointMeta]:
    """Tensor shapes and metadata from the safetensors header alone: a few kB read, whatever the file's size."""
    path = checkpoint_file(path)
    header = _read_header(path)
    try:
        shapes = {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}
    except (KeyError, TypeError) as error:
        raise _unreadable(path, error) from None
    return shapes, _decode_meta(header.get("__metadata__") or {}, path)


def _read_header(path: Path) -> dict:
    """The JSON header of a safetensors file: 8 bytes of length, then the header. The length is checked
    against the file's size and safetensors' own limit BEFORE anything is read, so a file whose length
    field claims 2^62 bytes gets the same one line as any other damaged file, not a MemoryError."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError("file too short")
            header_len = int.from_bytes(prefix, "little")
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise ValueError(f"header length {header_len:,} bytes runs beyond the file or safetensors' limit")
            header = json.loads(handle.read(header_len))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _unreadable(path, error) from None
    return header


def _unreadable(path: Path, error: Exception) -> FMError:
    reason = (str(error).splitlines() or [type(error).__name__])[0][:120]
    return FMError(f"{path} is not a readable safetensors checkpoint (truncated or another format): {reason}")
