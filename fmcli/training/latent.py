"""Training in an autoencoder's latent space: which space a run trains in, its autoencoder, its data as latents.

``--autoencoder auto`` (the default) is resolved once, before a new run's first step (``plan_space``): images of
``LATENT_FROM`` pixels or more train in latent space, smaller ones and point data in their own space. A latent run
trains the built-in autoencoder into ``RUN/autoencoder/`` first (under ``--max-time``, ``AUTOENCODER_SHARE`` of
the budget; else ``AUTOENCODER_STEPS`` steps), or copies the one an earlier run trained on the same data (kept in
``$FM_CACHE_DIR/autoencoders``). config.json then names that file and says why; a resumed run uses it again.
``--autoencoder none`` trains pixels; a path (a run folder of ``fm autoencoder train``, its file, a diffusers
directory, ``KIND:PATH``) uses that autoencoder. A run that will train in latent space takes ``LATENT_DEFAULTS``
(logit-normal training times) for the options the user left unset (``fmcli.training.defaults.space_defaults``).

``latent_data`` opens the run's autoencoder and encodes the training images once (``fmcli.data.latents``); the
checkpoint records the autoencoder by kind, digest and path (relative to the run folder when inside it), which
is how ``load_checkpoint`` finds the decoder again.
"""

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from fmcli.autoencoders.base import FILE, read_description
from fmcli.autoencoders.builtin import DEFAULTS
from fmcli.autoencoders.load import kind_prefix, open_autoencoder
from fmcli.data.base import ArrayDataset
from fmcli.data.latents import encode_dataset, latent_key
from fmcli.errors import FMError
from fmcli.io.files import atomic_write_bytes, default_cache_dir
from fmcli.training.config import TrainConfig
from fmcli.training.defaults import LATENT_DEFAULTS, LATENT_FROM
from fmcli.training.events import Callbacks

# From this image size `--autoencoder auto` trains in latent space. CPU: measured at 128 px (docs/measured/latent.md,
# bench/latent_side_by_side.py): 20 minutes of pixels give blobs, the latent run gives shapes. GPU: not
# measured by fm (no GPU was lent); 256 px, where pixel-space models of the CUDA presets' size get expensive and
# where latent diffusion's autoencoders begin to pay (Rombach et al. 2022).
AUTOENCODER_SHARE = 0.25  # of a --max-time budget, for training the autoencoder (docs/measured/latent.md)
AUTOENCODER_STEPS = 3000  # without a budget
FOLDER = "autoencoder"  # inside the run folder


def autoencoder_preset(size: int) -> dict:
    """The built-in autoencoder for images of ``size`` px: factor 4 up to 128 px (measured: bench/
    autoencoder_choice.py), factor 8 above (latent grids of 32 at 256 px and 64 at 512 px, as latent diffusion's)."""
    factor = DEFAULTS["factor"] if size <= 128 else 8
    return {"factor": factor, "latent_channels": DEFAULTS["latent_channels"], "width": DEFAULTS["width"]}


def plan_space(config: TrainConfig, run_dir: Path, device_type: str, load: Callable[[], ArrayDataset],
               callbacks: Callbacks, started: float) -> TrainConfig:  # fmt: skip
    """A new run's config with ``autoencoder`` resolved: "none", or the path of the autoencoder to use (trained
    or reused now when ``auto`` chose latent space), with the choice and why in ``decisions``."""
    choice = config.autoencoder
    if choice == "none":
        return config
    if choice != "auto":
        return replace(config, autoencoder=absolute(choice))
    threshold = LATENT_FROM["cpu" if device_type == "cpu" else "gpu"]
    size = config.image_size or 0
    where = "a CPU" if device_type == "cpu" else "a GPU"
    if size < threshold:  # said in config.json when an image size was asked for
        why = f"none: fm trains in latent space from {threshold} px on {where} (docs/measured/latent.md)"
        pixels = replace(config, autoencoder="none")
        return _decided(pixels, why) if config.image_size else pixels
    data = load()
    if data.kind != "image":
        return pixel_space(config, f"none: {config.data} holds {data.kind}, not images")
    preset = autoencoder_preset(size)
    file, how = _reuse(data, preset, run_dir)
    if file is None:
        file, how = _train(config, data, preset, run_dir, callbacks, started)
    why = (f"latent: {size} px on {where} trains in an autoencoder's latent space from {threshold} px "
           f"(docs/measured/latent.md); the built-in autoencoder, factor {preset['factor']}, "
           f"{preset['latent_channels']} latent channels, {how}")  # fmt: skip
    return _decided(replace(config, autoencoder=f"{FOLDER}/{FILE}"), why)


def _decided(config: TrainConfig, why: str) -> TrainConfig:
    return replace(config, decisions=config.decisions | {"autoencoder": why})


def pixel_space(config: TrainConfig, why: str) -> TrainConfig:
    """Pixel space after all (``auto`` found no pictures): the latent defaults the config took for the user are
    undone."""
    undo = {key: TrainConfig.__dataclass_fields__[key].default for key in LATENT_DEFAULTS[0]
            if config.decisions.get(key) == LATENT_DEFAULTS[1]}  # fmt: skip
    decisions = {key: value for key, value in config.decisions.items() if key not in undo}
    return _decided(replace(config, autoencoder="none", decisions=decisions, **undo), why)


def absolute(choice: str) -> str:
    """A user's autoencoder path made absolute (config.json must still find it from another folder)."""
    if prefixed := kind_prefix(choice):
        return f"{prefixed[0]}:{Path(prefixed[1]).expanduser().resolve()}"
    return str(Path(choice).expanduser().resolve())


def _cache_file(data: ArrayDataset, preset: dict) -> Path:
    options = "-".join(f"{key}{value}" for key, value in sorted(preset.items()))
    return default_cache_dir() / "autoencoders" / f"{latent_key(data, options)}.safetensors"


def _reuse(data: ArrayDataset, preset: dict, run_dir: Path) -> tuple[Path | None, str]:
    cached = _cache_file(data, preset)
    if not cached.is_file():
        return None, ""
    try:
        trained = read_description(cached).get("trained") or {}
    except FMError:
        return None, ""
    target = run_dir / FOLDER / FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, target)
    return target, f"reused: trained on this data by an earlier run ({trained.get('step', '?')} steps; {cached})"


def _train(config: TrainConfig, data: ArrayDataset, preset: dict, run_dir: Path, callbacks: Callbacks,
           started: float) -> tuple[Path, str]:  # fmt: skip
    from fmcli.training.autoencoder import STATE, train_autoencoder

    options = {"data": config.data, "image_size": config.image_size, "channels": config.channels,
               "data_dir": config.data_dir, "seed": config.seed, "device": config.device, "threads": config.threads,
               **preset}  # fmt: skip
    if config.max_time is not None:
        options["max_time"] = AUTOENCODER_SHARE * config.max_time
        length = f"{AUTOENCODER_SHARE:.0%} of --max-time"
    else:
        options["steps"] = AUTOENCODER_STEPS
        length = f"{AUTOENCODER_STEPS:,} steps"
    how = f"trained for {length} first"
    callbacks.on_message(f"latent space: training the autoencoder first ({length}), then the flow on its latents")
    # an autoencoder this run folder started (the run was stopped while training it) is continued, not restarted
    partial = str(run_dir / FOLDER) if (run_dir / FOLDER / STATE).is_file() else None
    result = train_autoencoder(options, out=str(run_dir / FOLDER), resume=partial, callbacks=callbacks,
                               started=time.perf_counter())  # fmt: skip
    _store(result.checkpoint, _cache_file(data, preset))
    return result.checkpoint, f"{how} ({result.step:,} steps)"


def _store(file: Path, cached: Path) -> None:
    """Keep a copy for later runs on the same data; a cache folder that cannot be written only loses the reuse."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cached, file.read_bytes())  # an autoencoder file is small (under a megabyte at 512 px)
    except OSError:
        pass


def autoencoder_path(config: TrainConfig, run_dir: Path) -> str | None:
    """Where the run's autoencoder is: None for pixels; a relative path lies in the run folder."""
    if config.autoencoder in ("none", "auto"):
        return None
    if kind_prefix(config.autoencoder):
        return config.autoencoder
    path = Path(config.autoencoder)
    return str(path if path.is_absolute() else Path(run_dir) / path)


Latent = tuple[torch.nn.Module | None, ArrayDataset, dict | None]


def latent_data(config: TrainConfig, data: ArrayDataset, run_dir: Path, device: torch.device,
                say: Callable[[str], None] | None) -> Latent:  # fmt: skip
    """(the autoencoder, the training data as latents, the checkpoint's record of the autoencoder); for a pixel run
    (None, data, None). One line for point data or images the autoencoder does not take."""
    where = autoencoder_path(config, run_dir)
    if where is None:
        return None, data, None
    if data.kind != "image":
        raise FMError(f"--autoencoder encodes images; {config.data} holds {data.kind} (use --autoencoder none)")
    autoencoder = open_autoencoder(where, device=str(device))
    autoencoder.check_shape(tuple(data.shape), f"the images of {config.data}")
    if say:
        say(f"latent space: {len(data):,} images -> latents {list(autoencoder.latent_shape(tuple(data.shape)))} "
            f"by the {autoencoder.name} autoencoder {autoencoder.digest} (cached after the first run)")  # fmt: skip
    latents = encode_dataset(data, autoencoder, mirrored=config.hflip, cache=config.cache)
    if latents.info.get("cache_warning") and say:
        say(f"warning: {latents.info['cache_warning']}")
    source = Path(getattr(autoencoder, "source", where))
    inside = source.resolve().is_relative_to(Path(run_dir).resolve())
    record = {
        "kind": autoencoder.name,
        "digest": autoencoder.digest,
        "path": str(source.resolve().relative_to(Path(run_dir).resolve()) if inside else source.resolve()),
        "image_shape": list(data.shape),
        "factor": autoencoder.factor,
        "latent_channels": autoencoder.latent_channels,
    }
    return autoencoder, latents, record
