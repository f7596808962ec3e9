"""``diffusers``: an ``AutoencoderKL`` (Stable Diffusion's VAE, say) loaded from a local directory; never downloads.

The directory is one saved with ``save_pretrained`` (``config.json`` and ``diffusion_pytorch_model.safetensors``),
or a whole pipeline folder with a ``vae/`` inside. diffusers runs offline (HF_HUB_OFFLINE=1,
``local_files_only=True``) and is imported only here, inside functions: ``pip install 'fmcli[diffusers]'``.

Latents are the posterior's mean (deterministic), normalised as Stable Diffusion does:
``(z - shift_factor) * scaling_factor`` from the model's config; ``decode`` takes its output's ``.sample``. The
digest is SHA-256 over the config and weight files, so a latent checkpoint can name these exact weights.
"""

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from fmcli.autoencoders.base import Autoencoder
from fmcli.errors import FMError

NAME = "diffusers"
INSTALL = "the diffusers autoencoder needs diffusers: pip install 'fmcli[diffusers]'"
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def diffusers_module():
    """diffusers, imported offline; one line when it is missing."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    try:
        import diffusers
    except ImportError:
        raise FMError(INSTALL) from None
    return diffusers


def locate(path: str | os.PathLike) -> tuple[Path, list[Path]]:
    """The AutoencoderKL directory at ``path`` (or its ``vae/``) and its files (config first, then weights)."""
    directory = Path(path).expanduser()
    if (directory / "vae" / "config.json").is_file():
        directory = directory / "vae"
    if not directory.is_dir():
        raise FMError(f"no diffusers autoencoder at {directory} (not a directory)")
    config = directory / "config.json"
    weights = [directory / name for name in WEIGHTS if (directory / name).is_file()]
    if not config.is_file() or not weights:
        missing = "config.json" if not config.is_file() else "weights (diffusion_pytorch_model.safetensors)"
        raise FMError(
            f"{directory} holds no AutoencoderKL {missing}: give a directory saved with save_pretrained "
            "(e.g. a Stable Diffusion VAE fetched on a machine with a network); fm never downloads"
        )
    try:
        kind = json.loads(config.read_text()).get("_class_name")
    except (OSError, ValueError):
        raise FMError(f"{config} is not readable JSON") from None
    if kind not in (None, "AutoencoderKL"):
        raise FMError(f"{directory} holds a {kind}, not an AutoencoderKL")
    return directory, [config, weights[0]]


def digest(files: list[Path]) -> str:
    """sha256 of the files (names and bytes), first 16 hex digits."""
    hasher = hashlib.sha256()
    for path in files:
        hasher.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                hasher.update(chunk)
    return hasher.hexdigest()[:16]


class DiffusersAutoencoder(Autoencoder):
    name = NAME
    image_size = None  # any size its factor divides

    def __init__(self, directory: Path, files: list[Path]):
        diffusers = diffusers_module()
        logging = diffusers.utils.logging
        before = logging.get_verbosity()
        logging.set_verbosity_error()  # no notes on optional packages (accelerate) nor progress bars
        try:
            vae = diffusers.AutoencoderKL.from_pretrained(str(directory), local_files_only=True)
        except Exception as error:  # noqa: BLE001 - diffusers raises many kinds for a bad directory
            reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
            raise FMError(f"could not load the AutoencoderKL in {directory} ({reason})") from None
        finally:
            logging.set_verbosity(before)
        config = vae.config
        super().__init__(int(config.latent_channels))
        self.vae = vae.eval().requires_grad_(False)
        self.directory, self._digest = directory, digest(files)
        self.channels = int(config.in_channels)
        self.factor = 2 ** (len(config.block_out_channels) - 1)
        self.latent_channels = int(config.latent_channels)
        self.shift.fill_(float(getattr(config, "shift_factor", None) or 0.0))
        self.scale.fill_(float(getattr(config, "scaling_factor", None) or 1.0))

    def encode_raw(self, images: Tensor) -> Tensor:
        return self.vae.encode(images).latent_dist.mean

    def decode_raw(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latents).sample

    def export(self) -> dict:
        return {
            "kind": NAME,
            "path": str(self.directory.resolve()),
            "channels": self.channels,
            "image_size": None,
            "factor": self.factor,
            "latent_channels": self.latent_channels,
            "shift": [float(v) for v in self.shift],
            "scale": [float(v) for v in self.scale],
            "digest": self._digest,
        }

    @property
    def digest(self) -> str:
        return self._digest


def load(path: str | os.PathLike) -> DiffusersAutoencoder:
    """The AutoencoderKL saved in ``path`` (checked before diffusers is imported), in eval mode on the CPU."""
    directory, files = locate(path)
    with torch.no_grad():
        return DiffusersAutoencoder(directory, files)
