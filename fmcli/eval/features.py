"""Feature extractors for ``fm eval``: what a plugin registers, and how features are computed.

An extractor maps model-space images in [-1, 1] ([B, C, H, W]) to feature vectors [B, d];
FID, KID and precision/recall are all computed in that feature space. Extractors are
registered through the ``fm_register_feature_extractors`` hook as ``ExtractorSpec`` objects,
whose ``load(context)`` builds the network (training or downloading it if needed).

Built in:
    classifier  a small CNN trained on the data set's own training split (cached), the
                default for 1-channel or small images such as MNIST; its logits also give
                the class of each sample (conditional accuracy).
    inception   the FID Inception-v3 (pytorch-fid's port, taken from torch-fidelity: the
                ``fmcli[inception]`` extra), 2048-d, for figures comparable to papers.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from fmcli.data.base import ArrayDataset
from fmcli.io.files import default_cache_dir

# progress(stage, done, total): core code reports work through this, never by printing.
Progress = Callable[[str, int, int], None]


class FeatureExtractor(Protocol):
    name: str
    dim: int  # length of each feature vector
    identity: str  # names the network and its weights; part of every cache key
    num_classes: int  # > 0 when ``logits`` gives the evaluated data set's classes
    info: dict  # e.g. {"test_accuracy": 0.992} for the classifier

    def embed(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """One batch of model-space images [B, C, H, W] on the extractor's device ->
        features [B, dim] and class logits [B, num_classes] (None without data set classes)."""


@dataclass
class ExtractorContext:
    """What an extractor's ``load`` may need about the data and the environment."""

    dataset_name: str
    shape: tuple[int, ...]  # [C, H, W] of the evaluated images
    splits: tuple[str, ...]  # the data set's splits, e.g. ("train", "test")
    load_split: Callable[[str], ArrayDataset]  # loads one split (same options as the evaluation)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cache_dir: Path | None = None  # None: ``default_cache_dir()``
    weights: Path | None = None  # a local weights file (--inception-weights)
    download: bool = True  # may fetch weights when absent (never in tests)
    progress: Progress | None = None

    @property
    def cache(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_dir()


def default_extractor(shape: tuple[int, ...]) -> str:
    """``inception`` for RGB images of at least 32x32 (where papers report Inception FID),
    ``classifier`` for other images (MNIST, 1-channel or tiny ones), ``points`` for point data."""
    if len(shape) != 3:
        return "points"
    channels, height, width = shape
    return "inception" if channels == 3 and min(height, width) >= 32 else "classifier"


def cache_name(text: str) -> str:
    """``text`` made safe as part of a cache file name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    images: Tensor,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    progress: Progress | None = None,
    stage: str = "features",
) -> tuple[Tensor, Tensor | None]:
    """Features [N, dim] (float32, CPU) and, where the extractor classifies, logits [N, classes].

    ``images`` are uint8 [N, C, H, W] (real data) or model-space floats in [-1, 1]. Floats are
    quantised to 8 bits first, so generated samples pass through exactly the pipeline real
    images do (as when samples are saved as PNG files and scored). Point data [N, D] passes
    through unchanged.
    """
    from fmcli.data.base import to_model_space, to_uint8

    features, logits = [], []
    total = images.shape[0]
    for start in range(0, total, batch_size):
        batch = images[start : start + batch_size]
        if batch.dim() == 4:
            batch = batch if batch.dtype == torch.uint8 else to_uint8(batch)
            batch = to_model_space(batch.to(device))
        else:
            batch = batch.float().to(device)
        batch_features, batch_logits = extractor.embed(batch)
        features.append(batch_features.float().cpu())
        if batch_logits is not None:
            logits.append(batch_logits.float().cpu())
        if progress:
            progress(stage, min(start + batch_size, total), total)
    return torch.cat(features), (torch.cat(logits) if logits else None)
