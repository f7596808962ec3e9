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
    """The autoencoder ``text`` names, in eval mode on ``device``, with ``source``: the file or directory it was
    read from (what a latent checkpoint records); one line when it names none."""
    kind, source = locate(str(text))
    autoencoder = registry.get_autoencoder(kind).load(source).to(device).eval()
    autoencoder.source = Path(source)
    return autoencoder


def kind_prefix(text: str) -> tuple[str, str] | None:
    """(kind, path) when ``text`` is KIND:PATH with KIND a registered autoencoder kind (``diffusers:DIR``), else
    None: a plain path, C:\\ on Windows included."""
    kind, _, rest = text.partition(":")
    return (kind, rest) if rest and kind in registry.autoencoders() else None


def locate(text: str) -> tuple[str, Path]:
    """(kind, the file or directory to load) of what the user typed."""
    if prefixed := kind_prefix(text):
        return prefixed[0], Path(prefixed[1]).expanduser()
    file = autoencoder_file(text)
    if file is not None:
        return read_description(file).get("kind", "?"), file
    path = Path(text).expanduser()
    if not path.exists():
        raise FMError(f"no autoencoder at {text}: give a run folder of `fm autoencoder train`, its {FILE}, or a "
                      "diffusers AutoencoderKL directory")  # fmt: skip
    if path.is_dir() and ((path / "config.json").is_file() or (path / "vae" / "config.json").is_file()):
        return "diffusers", path
    raise FMError(f"{path} holds no autoencoder (no {FILE}, no diffusers config.json)")
