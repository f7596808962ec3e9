"""From what the user typed to a loaded autoencoder: a run folder of ``fm autoencoder train``, its
``autoencoder.safetensors``, or a directory another plugin claims (a diffusers ``AutoencoderKL``), optionally
named by kind first: ``diffusers:PATH``."""

from pathlib import Path

from fmcli import registry
from fmcli.autoencoders.base import FILE, Autoencoder, read_description
from fmcli.errors import FMError


def autoencoder_file(text: str | Path) -> Path | None:
    """The saved autoencoder file ``text`` names (the file, or a run folder holding one), or None."""
    path = Path(text).expanduser()
    if path.is_dir() and (path / FILE).is_file():
        return path / FILE
    return path if path.is_file() else None


def open_autoencoder(text: str | Path, *, device: str = "cpu") -> Autoencoder:
    """The autoencoder ``text`` names, in eval mode on ``device``; one line when it names none."""
    text = str(text)
    kind, _, rest = text.partition(":")
    if rest and kind in registry.autoencoders():
        return registry.get_autoencoder(kind).load(rest).to(device).eval()
    file = autoencoder_file(text)
    if file is not None:
        kind = read_description(file).get("kind", "?")
        return registry.get_autoencoder(kind).load(file).to(device).eval()
    path = Path(text).expanduser()
    if not path.exists():
        raise FMError(f"no autoencoder at {text}: give a run folder of `fm autoencoder train`, its {FILE}, or a "
                      "diffusers AutoencoderKL directory")  # fmt: skip
    if path.is_dir() and ((path / "config.json").is_file() or (path / "vae" / "config.json").is_file()):
        return registry.get_autoencoder("diffusers").load(path).to(device).eval()
    raise FMError(f"{path} holds no autoencoder (no {FILE}, no diffusers config.json)")
