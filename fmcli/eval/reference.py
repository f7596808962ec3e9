"""Features of the real data, computed once per (data set, split, extractor, content) and cached.

The cache file ``<cache>/reference/<data set>-<split>-<extractor identity>-<content hash>.safetensors``
holds the features [N, d] (for KID and precision/recall), their mean and covariance (for FID)
and, for the classifier, its logits. Any change to the data changes the content hash, and a
retrained classifier changes the extractor identity, so a stale entry is never reused.
A second ``fm eval`` therefore only pays for sampling and for the samples' features.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from fmcli.data.base import ArrayDataset
from fmcli.data.resolve import content_hash
from fmcli.eval.features import FeatureExtractor, Progress, cache_name, extract_features
from fmcli.eval.metrics import FeatureStats, feature_statistics
from fmcli.io.files import atomic_write_bytes


@dataclass
class ReferenceFeatures:
    features: Tensor  # [N, d] float32
    logits: Tensor | None  # [N, classes] for extractors that classify
    stats: FeatureStats
    cached: bool  # True when read from the cache (nothing recomputed)
    path: Path


def reference_path(cache: Path, dataset: ArrayDataset, extractor: FeatureExtractor, data_hash: str) -> Path:
    key = f"{cache_name(dataset.name)}-{cache_name(dataset.split)}-{cache_name(extractor.identity)}-{data_hash[:16]}"
    return cache / "reference" / f"{key}.safetensors"


def reference_features(
    extractor: FeatureExtractor,
    dataset: ArrayDataset,
    *,
    cache: Path,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    progress: Progress | None = None,
) -> ReferenceFeatures:
    """Features and statistics of every item of ``dataset``, from the cache when possible."""
    data_hash = content_hash(dataset)
    path = reference_path(cache, dataset, extractor, data_hash)
    if path.exists():
        try:
            tensors = load_file(str(path))
            stats = FeatureStats(mean=tensors["mean"], cov=tensors["cov"], count=tensors["features"].shape[0])
            return ReferenceFeatures(tensors["features"], tensors.get("logits"), stats, cached=True, path=path)
        except (SafetensorError, OSError, KeyError):
            pass  # damaged entry: recompute and overwrite it
    features, logits = extract_features(
        extractor,
        dataset.data,
        device=device,
        batch_size=batch_size,
        progress=progress,
        stage=f"features of {dataset.name} {dataset.split}",
    )
    stats = feature_statistics(features)
    tensors = {"features": features.contiguous(), "mean": stats.mean, "cov": stats.cov}
    if logits is not None:
        tensors["logits"] = logits.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "dataset": dataset.name,
        "split": dataset.split,
        "extractor": extractor.identity,
        "content_hash": data_hash,
        "count": str(features.shape[0]),
    }
    atomic_write_bytes(
        path, save(tensors, metadata={k: json.dumps(v) if not isinstance(v, str) else v for k, v in metadata.items()})
    )
    return ReferenceFeatures(features, logits, stats, cached=False, path=path)
