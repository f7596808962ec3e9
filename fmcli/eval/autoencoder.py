"""``fm autoencoder eval``: how well an autoencoder reconstructs pictures it was not trained on.

PSNR of each held-out image against its reconstruction (both 8-bit, as saved pictures are), averaged; and the FID of
the reconstructions against the real held-out images in an extractor's features (fm's default for the images, or
``--extractor``): the ceiling a latent model decoded by this autoencoder can reach. Also the encode and decode
throughput. Held out: the test split of a data set that has one, else the seeded tenth
``fm autoencoder train`` kept out of training (``fmcli.autoencoders.base.held_out_split``).
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fmcli import registry
from fmcli.autoencoders.base import Autoencoder, held_out_split
from fmcli.autoencoders.load import open_autoencoder
from fmcli.data.base import ArrayDataset, LoadOptions, to_model_space, to_uint8
from fmcli.data.resolve import load_data, registered_dataset
from fmcli.device import resolve_device
from fmcli.errors import FMError
from fmcli.eval.features import ExtractorContext, Progress, default_extractor, extract_features
from fmcli.eval.metrics import check_sample_count, fid_from_features
from fmcli.runtime import threads

MAX_PSNR = 100.0  # dB, for an image reconstructed exactly (its error is 0)
DEFAULT_NUM = 1000


@dataclass
class AutoencoderEvalOptions:
    data: str | None = None  # None: what the autoencoder was trained on
    num: int | None = None  # held-out images to reconstruct (None: all, up to DEFAULT_NUM)
    image_size: int | None = None  # None: the size the autoencoder was trained at
    data_dir: str | None = None
    fid: bool = True
    extractor: str | None = None  # None: default_extractor(shape)
    batch_size: int = 64
    device: str = "auto"
    cache_dir: Path | None = None
    download: bool = True


def psnr(real_uint8: Tensor, rebuilt_uint8: Tensor) -> Tensor:
    """Per image, in dB: 10 log10(255^2 / mean squared error), MAX_PSNR where the error is 0."""
    error = (real_uint8.double() - rebuilt_uint8.double()).pow(2).flatten(1).mean(1)
    value = 10 * torch.log10(255.0**2 / error.clamp_min(1e-12))
    return torch.where(error > 0, value, torch.full_like(value, MAX_PSNR)).clamp(max=MAX_PSNR)


@torch.no_grad()
def reconstruct(autoencoder: Autoencoder, images_uint8: Tensor, batch_size: int, device: torch.device) -> dict:
    """uint8 reconstructions of ``images_uint8`` and the seconds encoding and decoding took."""
    rebuilt, encode_s, decode_s = [], 0.0, 0.0
    threads.configure()
    for start in range(0, images_uint8.shape[0], batch_size):
        threads.tick(kind="batch")
        batch = to_model_space(images_uint8[start : start + batch_size].to(device))
        began = time.perf_counter()
        latents = autoencoder.encode(batch)
        _sync(device)
        middle = time.perf_counter()
        decoded = autoencoder.decode(latents)
        rebuilt.append(to_uint8(decoded).cpu())
        encode_s, decode_s = encode_s + middle - began, decode_s + time.perf_counter() - middle
    return {"images": torch.cat(rebuilt), "encode_s": encode_s, "decode_s": decode_s, "latent": list(latents.shape[1:])}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trained_source(autoencoder: Autoencoder) -> dict:
    """What a built-in autoencoder records of its training data (source, data folder), or {}."""
    return dict((getattr(autoencoder, "trained", None) or {}).get("options") or {})


def held_out_images(autoencoder: Autoencoder, options: AutoencoderEvalOptions) -> tuple[ArrayDataset, Tensor, str]:
    """The data set, the held-out indices and which items they are; one line for images it cannot take."""
    trained = trained_source(autoencoder)
    name = options.data or trained.get("data")
    if not name:
        raise FMError(f"the {autoencoder.name} autoencoder records no training data: give --data DATA")
    data_dir = options.data_dir or (trained.get("data_dir") if not options.data else None)
    size = options.image_size or autoencoder.image_size
    spec = registered_dataset(name)
    split = "test" if spec is not None and "test" in spec.splits else "train"
    data = load_data(name, LoadOptions(split=split, image_size=size, data_dir=Path(data_dir) if data_dir else None))
    if data.kind != "image":
        raise FMError(f"{name!r} holds {data.kind}, not images")
    autoencoder.check_shape(data.shape, f"the images of {name!r}")
    if split == "test":
        return data, torch.arange(len(data)), "the test split"
    held = held_out_split(len(data))[1]
    if not len(held):
        raise FMError(f"{name!r} has too few images to hold any out for evaluation")
    return data, held, f"the held-out {len(held)} of {len(data)} images (not trained on)"


def fid_report(
    real: Tensor,
    rebuilt: Tensor,
    name: str,
    data: ArrayDataset,
    options: AutoencoderEvalOptions,
    device: torch.device,
    progress: Progress | None,
) -> dict:
    """FID of the reconstructions against the same real images, in the extractor's features."""
    spec = registry.get_feature_extractor(options.extractor or default_extractor(data.shape))
    if spec.dim is not None:
        check_sample_count(real.shape[0], spec.name, spec.dim, ("fid",))

    def load_split(split: str) -> ArrayDataset:
        return load_data(name, LoadOptions(split=split, image_size=data.shape[-1], data_dir=options.data_dir))

    splits = tuple(registered_dataset(name).splits) if registered_dataset(name) else ("train",)
    context = ExtractorContext(
        dataset_name=name,
        shape=data.shape,
        splits=splits,
        load_split=load_split,
        device=device,
        cache_dir=options.cache_dir,
        download=options.download,
        progress=progress,
    )
    extractor = spec.load(context)
    check_sample_count(real.shape[0], extractor.name, extractor.dim, ("fid",))
    real_features, _ = extract_features(extractor, real, device=device, progress=progress, stage="features of real")
    fake_features, _ = extract_features(extractor, rebuilt, device=device, progress=progress, stage="features of rec.")
    return {
        "value": fid_from_features(real_features, fake_features),
        "num_images": real.shape[0],
        "extractor": {"name": extractor.name, "dim": extractor.dim, "identity": extractor.identity},
    }


def evaluate_autoencoder(path: str, options: AutoencoderEvalOptions, progress: Progress | None = None) -> dict:
    """Reconstruct held-out images with the autoencoder at ``path``: PSNR, FID of the reconstructions, speed."""
    if options.num is not None and options.num < 1:
        raise FMError(f"--num must be at least 1 (got {options.num})")
    device = resolve_device(options.device)
    autoencoder = open_autoencoder(path, device=str(device))
    data, held, which = held_out_images(autoencoder, options)
    held = held[: options.num or DEFAULT_NUM]
    if options.num is not None and options.num > len(held):
        raise FMError(f"--num {options.num}: {which} hold only {len(held)} images")
    real = data.data[held]
    done = reconstruct(autoencoder, real, options.batch_size, device)
    values = psnr(real, done["images"])
    count = real.shape[0]
    report = {
        "autoencoder": {key: value for key, value in autoencoder.export().items() if key != "trained"},
        "path": str(path),
        "data": {
            "name": options.data or trained_source(autoencoder).get("data"),
            "items": which,
            "shape": list(data.shape),
        },
        "num_images": count,
        "latent_shape": done["latent"],
        "psnr": {"mean": float(values.mean()), "min": float(values.min()), "unit": "dB"},
        "encode_images_per_s": count / max(done["encode_s"], 1e-9),
        "decode_images_per_s": count / max(done["decode_s"], 1e-9),
        "device": str(device),
    }
    if options.fid:
        report["fid"] = fid_report(real, done["images"], report["data"]["name"], data, options, device, progress)
    if not math.isfinite(report["psnr"]["mean"]):
        raise FMError("the reconstructions are not finite numbers: the autoencoder is damaged or diverged")
    return report
