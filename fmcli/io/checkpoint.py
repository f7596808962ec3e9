"""Checkpoints as safetensors files that carry their own config (no pickle anywhere).

One file holds everything:
    model.*   raw weights                ema.*     EMA weights (sampling uses these by default)
    optim.*   AdamW moments and steps    (training state, for exact resume; see ``fmcli.training.state``)
and string metadata: format and version, the model config, the data description (name,
split, kind, shape, classes, normalisation), the step, and the resolved training config.

A checkpoint is a file from somewhere: before anything is allocated, its metadata is checked
against the tensor shapes in the safetensors header (readable without loading the data), by
building the model on PyTorch's "meta" device (shapes only, no memory), and the item shape is
bounded. A file that lies about its model gets one line naming the mismatch, not a 600 GB
allocation.
"""

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from fmcli.errors import FMError
from fmcli.io.files import atomic_write_bytes
from fmcli.io.header import (  # noqa: F401  (re-exported: the header half of a checkpoint, free of torch)
    FORMAT,
    FORMAT_VERSION,
    CheckpointMeta,
    _decode_meta,
    _read_header,
    _unreadable,
    checkpoint_file,
    read_header,
)

# The largest item a checkpoint may describe: 4 x 1024 x 1024 values (an RGBA megapixel image).
MAX_ITEM_VALUES = 4 * 1024 * 1024
log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: nn.Module  # eval mode, on the requested device
    meta: CheckpointMeta
    path: Path | None = None  # the file it was read from (None: built in memory, e.g. a training preview)
    weights: str = "ema"  # which weights: ema or raw
    # A latent model's autoencoder (``fmcli.autoencoders.Autoencoder``, eval mode, on the model's device): what
    # turns its samples into pictures. None for models of pixels or points.
    autoencoder: nn.Module | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _encode_meta(meta: CheckpointMeta) -> dict[str, str]:
    encoded = {key: json.dumps(value) for key, value in asdict(meta).items()}
    encoded["format"] = FORMAT
    return encoded


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: CheckpointMeta) -> None:
    """Atomically write tensors (already prefixed ``model.``/``ema.``/``optim.``) and metadata."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FMError(f"refusing to write {path}: tensor {name} holds NaN or infinite values")
    contiguous = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    atomic_write_bytes(Path(path), save(contiguous, metadata=_encode_meta(meta)))


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """All tensors and the metadata of a checkpoint file (or run folder), with clear errors for bad files."""
    path = checkpoint_file(path)
    header = _read_header(path)  # checked first, so a lying header never sizes an allocation
    try:
        tensors = load(path.read_bytes())
    except (SafetensorError, ValueError, OSError, RuntimeError) as error:
        raise _unreadable(path, error) from None
    return tensors, _decode_meta(header.get("__metadata__") or {}, path)


def split_prefix(tensors: dict, prefix: str) -> dict:
    """{"ema.a": x, "model.a": y} -> {"a": x} for prefix "ema" (tensors, or shapes from ``read_header``)."""
    start = prefix + "."
    return {name[len(start) :]: t for name, t in tensors.items() if name.startswith(start)}


@contextlib.contextmanager
def _initialisers_skipped() -> Iterator[None]:
    """``torch.nn.init``'s functions return their tensor untouched. On "meta" tensors they would run
    torch's reference implementations, whose first use imports torch._dynamo: 2 s of a command's
    start-up, for values that do not exist."""
    names = [name for name in dir(torch.nn.init) if name.endswith("_") and not name.startswith("_")]
    saved = {name: getattr(torch.nn.init, name) for name in names}
    try:
        for name in names:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def check_model_fits(meta: CheckpointMeta, shapes: dict[str, tuple[int, ...]], group: str, path: Path) -> None:
    """The metadata must describe the tensors ``group.*`` (``shapes``: name -> shape, e.g. from ``read_header``)
    and a bounded item shape; checked by building the model on the meta device, so nothing is allocated."""
    from fmcli.models import build_model

    shape = meta.data.get("shape")
    if not (isinstance(shape, list) and 1 <= len(shape) <= 4 and all(isinstance(s, int) and s >= 1 for s in shape)):
        raise FMError(f"{path}: checkpoint metadata has an invalid data shape {shape!r}")
    if math.prod(shape) > MAX_ITEM_VALUES:
        raise FMError(
            f"{path}: checkpoint metadata describes items of shape {shape} ({math.prod(shape):,} values), "
            f"more than fm accepts ({MAX_ITEM_VALUES:,}); the file is damaged or not meant for fm"
        )
    with torch.device("meta"), _initialisers_skipped():  # shapes only: nothing is allocated or initialised
        model = build_model(meta.model_config)
        expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        # The model must take the items the metadata describes. Models that say so through check_input (fm's
        # own) are not run: torch runs meta tensors through reference implementations whose first use imports
        # torch._dynamo (2 s per command). Other models get one forward on a meta batch, as before.
        items = torch.empty(1, *shape)
        try:
            if hasattr(model, "check_input"):
                model.check_input(items)
            else:
                model(items, torch.zeros(1))
        except FMError as error:
            raise FMError(f"{path}: checkpoint metadata does not fit together: {error}") from None
        except (RuntimeError, NotImplementedError, TypeError) as error:  # a plugin model that cannot run on "meta"
            log.debug("%s: model %s cannot run on the meta device (%s); checking weight shapes only", path,
                      meta.model_config.get("name"), error)  # fmt: skip
    found = split_prefix(shapes, group)
    if not found:
        raise FMError(f"{path} holds no {group} weights")
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if missing or unexpected:
        which = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise FMError(f"{path}: its {group} tensors do not match the model config in its metadata ({which})")
    for name, want in expected.items():
        if found[name] != want:
            raise FMError(
                f"{path}: tensor {group}.{name} has shape {list(found[name])} but the model config in its "
                f"metadata needs {list(want)}; the file is damaged or its metadata was edited"
            )


def load_checkpoint(path: Path, *, device: str | torch.device = "cpu", weights: str = "ema") -> LoadedModel:
    """Rebuild the model from the checkpoint's own config (checked first) and load EMA (default) or raw weights."""
    from fmcli.models import build_model

    if weights not in ("ema", "raw"):
        raise FMError(f"--weights must be 'ema' or 'raw', not {weights!r}")
    group = "ema" if weights == "ema" else "model"
    shapes, meta = read_header(path)
    check_model_fits(meta, shapes, group, Path(path))
    tensors, meta = read_checkpoint(path)
    file = checkpoint_file(Path(path))
    autoencoder = open_decoder(meta, file, device)  # before the weights: a missing autoencoder fails fast
    model = build_model(meta.model_config)
    model.load_state_dict(split_prefix(tensors, group))
    return LoadedModel(model=model.to(device).eval(), meta=meta, path=file, weights=weights, autoencoder=autoencoder)


def autoencoder_location(meta: CheckpointMeta, file: Path) -> Path:
    """Where a latent checkpoint's autoencoder is: its recorded path, relative to the checkpoint's folder unless
    absolute (``fm train`` records it relative when it lies inside the run folder, so the folder can move)."""
    recorded = Path(str(meta.autoencoder.get("path") or ""))  # type: ignore[union-attr]
    return recorded if recorded.is_absolute() else Path(file).resolve().parent / recorded


def open_decoder(meta: CheckpointMeta, file: Path, device: str | torch.device = "cpu") -> nn.Module | None:
    """The autoencoder that decodes a latent checkpoint's samples, found where the checkpoint says and checked
    against the digest it recorded (one line when it is missing, changed or of a kind no plugin provides);
    None for a model of pixels or points."""
    from fmcli import registry

    record = meta.autoencoder
    if record is None:
        return None
    if not all(isinstance(record.get(key), str) for key in ("kind", "digest", "path")):
        raise FMError(f"{file}: its autoencoder record is damaged ({sorted(record)})")
    location, kind, digest = autoencoder_location(meta, file), record["kind"], record["digest"]
    what = f"{file} is a latent model decoded by the {kind} autoencoder {digest}"
    if not location.exists():
        raise FMError(f"{what} at {location}, which is missing; put that autoencoder back (or the run folder "
                      "beside it) to sample this model")  # fmt: skip
    if kind not in registry.autoencoders():
        raise FMError(f"{what}, a kind no installed plugin provides ({', '.join(registry.autoencoders())})")
    autoencoder = registry.get_autoencoder(kind).load(location)
    if autoencoder.digest != digest:
        raise FMError(f"{what}, but {location} now holds another one (digest {autoencoder.digest}); the model "
                      "only makes pictures with the autoencoder it was trained with")  # fmt: skip
    return autoencoder.to(device).eval()
