"""From ``--device auto|cpu|cuda|cuda:N|mps`` to a ``torch.device``, with one clear error when unavailable."""

import torch

from fmcli.errors import FMError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise FMError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FMError(f"--device {name} was asked for but no CUDA GPU is available (try --device auto)")
    if name.startswith("cuda:") and not (name[5:].isdigit() and int(name[5:]) < torch.cuda.device_count()):
        raise FMError(f"--device {name}: this machine has CUDA devices 0..{torch.cuda.device_count() - 1}")
    if name == "mps" and not _mps_available():
        raise FMError("--device mps was asked for but MPS is not available (try --device auto)")
    return torch.device(name)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
