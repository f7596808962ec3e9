"""``fm eval`` as plain functions: score a checkpoint, sweep solvers, or score real data (the floor).

Every figure is reported with the number of samples it was computed from: FID is biased
upwards at small N (it needs N > d for a full-rank covariance), KID is unbiased at any N >= 2,
and precision/recall depend on N through the k-NN radii (both sets get N points).

The real reference is the data set's TEST split; its features are cached (see
``fmcli.eval.reference``). Generated images are quantised to 8 bits before feature
extraction, like real images. Reports also carry NFE, sampling wall time and the device.
"""

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from fmcli import registry
from fmcli.data.base import ArrayDataset, LoadOptions
from fmcli.errors import FMError
from fmcli.eval.features import ExtractorContext, FeatureExtractor, Progress, default_extractor, extract_features
from fmcli.eval.metrics import (
    class_accuracy,
    class_histogram,
    feature_statistics,
    fid_min_samples,
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
)
from fmcli.eval.reference import ReferenceFeatures, reference_features

METRICS = ("fid", "kid", "pr")


@dataclass
class EvalOptions:
    num_samples: int = 5000
    metrics: tuple[str, ...] = METRICS
    extractor: str | None = None          # None: default_extractor(shape)
    k: int = 3                            # neighbours for precision/recall
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    # sampling
    solver: str = "heun"
    steps: int = 20
    time_grid: str = "uniform"
    rtol: float = 1e-5
    atol: float = 1e-5
    cfg: float = 1.0
    seed: int = 0
    batch_size: int = 500
    weights: str = "ema"
    device: str = "auto"
    # data and caches
    data: str | None = None               # None: the checkpoint's own data set
    data_dir: Path | None = None
    cache_dir: Path | None = None
    inception_weights: Path | None = None
    download: bool = True
    # likelihood
    nll: bool = False
    nll_samples: int = 500
    nll_solver: str = "dopri5"
    nll_steps: int = 20
    nll_rtol: float = 1e-5
    nll_atol: float = 1e-5
    probes: int = 1
    nll_batch_size: int = 100
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items() if k != "extra"}


def _progress_of(progress: Progress | None, stage: str):
    return (lambda done, total: progress(stage, done, total)) if progress else None


# --- data ------------------------------------------------------------------------------------


@dataclass
class EvalData:
    name: str                         # what was loaded (a registered name or a folder path)
    shape: tuple[int, ...]
    kind: str
    splits: tuple[str, ...]
    load_options: LoadOptions
    _loaded: dict = field(default_factory=dict)

    def load(self, split: str) -> ArrayDataset:
        from fmcli.data.resolve import load_data

        if split not in self._loaded:
            if split not in self.splits:
                raise FMError(f"data set {self.name!r} has no {split!r} split (it has: {', '.join(self.splits)})")
            options = LoadOptions(**{**asdict(self.load_options), "split": split})
            self._loaded[split] = load_data(self.name, options)
        return self._loaded[split]


def _splits_of(name: str) -> tuple[str, ...]:
    from fmcli.data.resolve import looks_like_path

    if not looks_like_path(name) and name in registry.datasets():
        return tuple(registry.datasets()[name].splits)
    return ("train",)   # image folders have a single split


def eval_data(name: str, options: EvalOptions, *, image_size: int | None = None, channels: int | None = None) -> EvalData:
    """The data set to score against, with the load options the model was trained with."""
    splits = _splits_of(name)
    # The data seed stays at its default: procedural test sets (toys) must not change with --seed.
    load_options = LoadOptions(split=splits[0], data_dir=options.data_dir, image_size=image_size, channels=channels,
                               download=options.download)
    data = EvalData(name=name, shape=(), kind="", splits=splits, load_options=load_options)
    first = data.load(splits[-1])
    data.shape, data.kind = tuple(first.shape), first.kind
    return data


def checkpoint_data(meta, options: EvalOptions) -> EvalData:
    """The checkpoint's own data set (with its training-time resize/channels), or ``--data``."""
    train_config = meta.train_config or {}
    if options.data is None:
        name = train_config.get("data") or meta.data["name"]
        if options.data_dir is None and train_config.get("data_dir"):
            options.data_dir = Path(train_config["data_dir"])
        data = eval_data(name, options, image_size=train_config.get("image_size"), channels=train_config.get("channels"))
    else:
        data = eval_data(options.data, options)
    model_shape = tuple(meta.data["shape"])
    if data.shape != model_shape:
        raise FMError(f"the checkpoint generates items of shape {list(model_shape)} but data set {data.name!r} has "
                      f"{list(data.shape)} (image size or channels differ); evaluate against matching data")
    return data


# --- extractors and scores ---------------------------------------------------------------------


def load_extractor(name: str | None, data: EvalData, options: EvalOptions, device: torch.device,
                   progress: Progress | None) -> FeatureExtractor:
    spec = registry.get_feature_extractor(name or default_extractor(data.shape))
    context = ExtractorContext(dataset_name=data.name, shape=data.shape, splits=data.splits, load_split=data.load,
                               device=device, cache_dir=options.cache_dir, weights=options.inception_weights,
                               download=options.download, progress=progress)
    return spec.load(context)


def check_sample_count(num: int, extractor: FeatureExtractor, metrics: tuple[str, ...], k: int) -> None:
    if num < 2:
        raise FMError(f"--num must be at least 2 (got {num})")
    if "fid" in metrics and num < fid_min_samples(extractor.dim):
        raise FMError(
            f"FID with the {extractor.name!r} extractor ({extractor.dim}-d features) needs at least "
            f"{fid_min_samples(extractor.dim)} samples for a non-singular covariance, got {num}; raise --num, "
            f"or leave FID out (--metrics kid,pr): KID works from 2 samples"
        )
    if "pr" in metrics and num <= k:
        raise FMError(f"precision/recall with k={k} needs more than {k} samples, got {num}")


def score(reference: ReferenceFeatures, fake: Tensor, options: EvalOptions) -> dict:
    """FID / KID / precision-recall of generated features against the reference, each with its sample counts."""
    n, m = fake.shape[0], reference.features.shape[0]
    out: dict = {}
    if "fid" in options.metrics:
        stats = feature_statistics(fake)
        value = frechet_distance(stats.mean, stats.cov, reference.stats.mean, reference.stats.cov)
        out["fid"] = {"value": value, "num_samples": n, "num_reference": m}
    if "kid" in options.metrics:
        mean, std = kernel_inception_distance(reference.features, fake, num_subsets=options.kid_subsets,
                                              subset_size=options.kid_subset_size, seed=options.seed)
        out["kid"] = {"value": mean, "std": std, "num_samples": n, "num_reference": m,
                      "subset_size": min(options.kid_subset_size, n, m)}
    if "pr" in options.metrics:
        # Equal set sizes: the k-NN radii (and so both figures) depend on the number of points.
        chosen = torch.randperm(m, generator=torch.Generator().manual_seed(options.seed))[: min(n, m)]
        precision, recall = precision_recall(reference.features[chosen], fake, k=options.k)
        out["precision"] = {"value": precision, "num_samples": n, "num_reference": len(chosen), "k": options.k}
        out["recall"] = {"value": recall, "num_samples": n, "num_reference": len(chosen), "k": options.k}
    return out


def _extractor_report(extractor: FeatureExtractor) -> dict:
    return {"name": extractor.name, "dim": extractor.dim, "identity": extractor.identity, **extractor.info}


def _class_names(data: EvalData, count: int) -> list[str]:
    names = data.load(data.splits[0]).class_names or []
    return list(names) if len(names) == count else [str(i) for i in range(count)]


# --- checkpoint evaluation ----------------------------------------------------------------------


def _prepare(checkpoint: Path, options: EvalOptions, progress: Progress | None):
    from fmcli.checkpoint import load_checkpoint
    from fmcli.sampling import resolve_device

    for metric in options.metrics:
        if metric not in METRICS:
            raise FMError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    device = resolve_device(options.device)
    registry.get_solver(options.solver)
    loaded = load_checkpoint(checkpoint, device=device, weights=options.weights)
    data = checkpoint_data(loaded.meta, options)
    if "test" not in data.splits:
        raise FMError(f"data set {data.name!r} has no test split to score against; use a data set with one")
    extractor = load_extractor(options.extractor, data, options, device, progress)
    check_sample_count(options.num_samples, extractor, options.metrics, options.k)
    reference = reference_features(extractor, data.load("test"), cache=_cache(options), device=device,
                                   batch_size=256, progress=progress)
    return device, loaded, data, extractor, reference


def _cache(options: EvalOptions) -> Path:
    from fmcli.eval.features import default_cache_dir

    return options.cache_dir if options.cache_dir is not None else default_cache_dir()


def _sample_and_score(loaded, data, extractor, reference, options: EvalOptions, classes, device, progress,
                      *, solver: str, steps: int, rtol: float):
    from fmcli.sampling import generate

    result = generate(loaded, num=options.num_samples, classes=classes, solver=solver, steps=steps,
                      time_grid=options.time_grid, rtol=rtol, atol=options.atol, cfg=options.cfg, seed=options.seed,
                      batch_size=options.batch_size, progress=_progress_of(progress, f"sampling ({solver})"))
    features, logits = extract_features(extractor, result.samples, device=device, progress=progress,
                                        stage="features of samples")
    sampling = {"num_samples": options.num_samples, "solver": solver, "steps": steps, "rtol": rtol,
                "nfe": result.nfe, "seconds": round(result.seconds, 3),
                "samples_per_second": round(options.num_samples / max(result.seconds, 1e-9), 2)}
    return result, features, logits, sampling, score(reference, features, options)


def _is_conditional(meta) -> bool:
    return int(meta.model_config.get("num_classes") or 0) > 0


def evaluate_checkpoint(checkpoint: Path, options: EvalOptions, progress: Progress | None = None) -> dict:
    """Sample from a checkpoint and score the samples against the test split (and optionally the NLL)."""
    device, loaded, data, extractor, reference = _prepare(checkpoint, options, progress)
    num_classes = int(loaded.meta.model_config.get("num_classes") or 0)
    conditional = _is_conditional(loaded.meta)
    classes = None
    if conditional:
        from fmcli.sampling import balanced_classes

        classes = balanced_classes(options.num_samples, num_classes)
    result, _, logits, sampling, metrics = _sample_and_score(
        loaded, data, extractor, reference, options, classes, device, progress,
        solver=options.solver, steps=options.steps, rtol=options.rtol)
    report = {
        "checkpoint": str(checkpoint), "data": data.name, "reference_split": "test", "device": str(device),
        "extractor": _extractor_report(extractor),
        "reference": {"split": "test", "num_items": reference.features.shape[0], "cached": reference.cached},
        "sampling": sampling, "metrics": metrics, "conditional": None, "class_histogram": None, "nll": None,
        "options": options.as_dict(),
    }
    if data.kind == "image" and num_classes > 0:
        classifier = extractor if extractor.num_classes == num_classes else _dataset_classifier(data, options, device, progress)
        if classifier is not None:
            names = _class_names(data, num_classes)
            if logits is None or classifier is not extractor:
                _, logits = extract_features(classifier, result.samples, device=device)
            predicted = logits.argmax(1)
            if conditional:
                overall, per_class = class_accuracy(predicted, classes, num_classes)
                report["conditional"] = {
                    "accuracy": overall, "per_class": dict(zip(names, per_class)), "num_samples": options.num_samples,
                    "classifier_test_accuracy": classifier.info.get("test_accuracy"), "cfg": options.cfg}
                if loaded.meta.label_dropout > 0:
                    report["class_histogram"] = _unconditional_histogram(loaded, classifier, names, options, device, progress)
            else:
                report["class_histogram"] = {"counts": dict(zip(names, class_histogram(predicted, num_classes))),
                                             "num_samples": options.num_samples, "source": "the evaluated samples"}
    if options.nll:
        report["nll"] = evaluate_nll(loaded, data, options, device, progress)
    return report


def _dataset_classifier(data: EvalData, options: EvalOptions, device, progress) -> FeatureExtractor | None:
    """The data set's own classifier (for class accuracy when the features come from elsewhere)."""
    if data.load(data.splits[0]).labels is None:
        return None
    return load_extractor("classifier", data, options, device, progress)


def _unconditional_histogram(loaded, classifier, names, options: EvalOptions, device, progress) -> dict:
    """Classes of samples drawn without a label (the null class): does the model cover every class?"""
    from fmcli.sampling import generate

    result = generate(loaded, num=options.num_samples, classes=None, solver=options.solver, steps=options.steps,
                      time_grid=options.time_grid, rtol=options.rtol, atol=options.atol, seed=options.seed + 1,
                      batch_size=options.batch_size, progress=_progress_of(progress, "unconditional sampling"))
    _, logits = extract_features(classifier, result.samples, device=device)
    counts = class_histogram(logits.argmax(1), len(names))
    return {"counts": dict(zip(names, counts)), "num_samples": options.num_samples, "source": "unconditional samples",
            "nfe": result.nfe, "seconds": round(result.seconds, 3)}


# --- likelihood --------------------------------------------------------------------------------


def evaluate_nll(loaded, data: EvalData, options: EvalOptions, device, progress: Progress | None) -> dict:
    """Negative log-likelihood of test items: bits/dim for dequantised 8-bit images, nats for points."""
    from fmcli.eval.nll import bits_per_dim, dequantise, log_likelihood
    from fmcli.sampling import guided_velocity

    if "test" not in data.splits:
        raise FMError(f"--nll needs a test split, and data set {data.name!r} has none")
    test = data.load("test")
    count = min(options.nll_samples, len(test))
    generator = torch.Generator().manual_seed(options.seed)
    chosen = torch.randperm(len(test), generator=generator)[:count]
    dim = math.prod(test.shape)
    images = test.kind == "image"
    velocity = guided_velocity(loaded.model, 1.0, null_class=loaded.meta.num_classes)
    conditional = _is_conditional(loaded.meta) and test.labels is not None
    log_probs, probe_stds, nfe, divergence = [], [], 0, "exact"
    start = time.perf_counter()
    for first in range(0, count, options.nll_batch_size):
        index = chosen[first : first + options.nll_batch_size]
        x = dequantise(test.data[index], generator) if images else test.data[index].double()
        conditioning = {"y": test.labels[index].to(device)} if conditional else {}
        result = log_likelihood(velocity, x.float().to(device), solver=options.nll_solver, steps=options.nll_steps,
                                rtol=options.nll_rtol, atol=options.nll_atol, probes=options.probes,
                                seed=options.seed + first, conditioning=conditioning)
        log_probs.append(result.log_prob)
        if result.probe_std is not None:
            probe_stds.append(result.probe_std)
        nfe, divergence = max(nfe, result.nfe), result.divergence
        if progress:
            progress("likelihood", min(first + options.nll_batch_size, count), count)
    log_prob = torch.cat(log_probs)
    bpd = bits_per_dim(log_prob, dim, dequantised_8bit=images)
    report = {
        "bits_per_dim": float(bpd.mean()),
        "bits_per_dim_stderr": float(bpd.std() / math.sqrt(count)) if count > 1 else None,
        "nll_nats": float(-log_prob.mean()), "num_samples": count, "dim": dim,
        "dequantisation": "uniform, 8-bit" if images else None,
        "conditional_on_true_class": conditional,
        "divergence": divergence, "probes": options.probes if divergence == "hutchinson" else None,
        "solver": options.nll_solver, "steps": options.nll_steps, "rtol": options.nll_rtol, "nfe": nfe,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if probe_stds:
        # Hutchinson spread of one sample's estimate, converted to bits/dim.
        report["probe_std_bits_per_dim"] = float(torch.cat(probe_stds).mean() / (dim * math.log(2)))
    return report


# --- sweep -------------------------------------------------------------------------------------


def sweep(checkpoint: Path, options: EvalOptions, solvers: list[str], steps: list[int], *,
          rtols: list[float] | None = None, out_dir: Path | None = None, progress: Progress | None = None) -> dict:
    """FID (and the other metrics) for every solver x step count, with the same seeds.

    Adaptive solvers ignore step counts: they run once per tolerance in ``rtols`` (default:
    ``options.rtol``) and appear in the plot as points.
    """
    for name in solvers:
        registry.get_solver(name)
    if any(s < 1 for s in steps):
        raise FMError("--steps values must be at least 1")
    device, loaded, data, extractor, reference = _prepare(checkpoint, options, progress)
    classes = None
    if _is_conditional(loaded.meta):
        from fmcli.sampling import balanced_classes

        classes = balanced_classes(options.num_samples, int(loaded.meta.model_config["num_classes"]))
    runs = []
    for name in solvers:
        adaptive = bool(getattr(registry.get_solver(name), "adaptive", False))
        grid = [(None, rtol) for rtol in (rtols or [options.rtol])] if adaptive else [(s, options.rtol) for s in steps]
        for step_count, rtol in grid:
            _, _, _, sampling, metrics = _sample_and_score(
                loaded, data, extractor, reference, options, classes, device, progress,
                solver=name, steps=step_count or options.steps, rtol=rtol)
            runs.append({"solver": name, "adaptive": adaptive, "steps": step_count, "rtol": rtol if adaptive else None,
                         "nfe": sampling["nfe"], "seconds": sampling["seconds"],
                         **{metric: entry["value"] for metric, entry in metrics.items()},
                         **({"kid_std": metrics["kid"]["std"]} if "kid" in metrics else {})})
    report = {
        "checkpoint": str(checkpoint), "data": data.name, "device": str(device), "num_samples": options.num_samples,
        "num_reference": reference.features.shape[0], "extractor": _extractor_report(extractor),
        "runs": runs, "options": options.as_dict(),
    }
    if out_dir is not None:
        report["files"] = write_sweep(report, Path(out_dir))
    return report


def write_sweep(report: dict, out_dir: Path) -> list[str]:
    import json

    from fmcli.checkpoint import atomic_write_bytes
    from fmcli.eval.plot import plot_metric_vs_nfe

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "sweep.json"
    atomic_write_bytes(json_path, json.dumps(report, indent=2, default=str).encode())
    files = [str(json_path)]
    metric = "fid" if any("fid" in run for run in report["runs"]) else "kid"
    if any(metric in run for run in report["runs"]):
        plot_path = out_dir / "sweep.png"
        plot_metric_vs_nfe(report["runs"], plot_path, metric=metric,
                           title=f"{metric.upper()} vs NFE ({report['num_samples']} samples, {report['data']})")
        files.append(str(plot_path))
    return files


# --- the floor: real data ------------------------------------------------------------------------


def evaluate_real(data_name: str, options: EvalOptions, progress: Progress | None = None) -> dict:
    """Real TRAIN images (``options.num_samples`` of them) scored against the test split: the best
    figures a model could hope for at this sample count."""
    from fmcli.sampling import resolve_device

    device = resolve_device(options.device)
    data = eval_data(data_name, options)
    if "test" not in data.splits:
        raise FMError(f"data set {data.name!r} has no test split to score against")
    extractor = load_extractor(options.extractor, data, options, device, progress)
    train = data.load("train")
    count = min(options.num_samples, len(train))
    check_sample_count(count, extractor, options.metrics, options.k)
    reference = reference_features(extractor, data.load("test"), cache=_cache(options), device=device, progress=progress)
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(options.seed))[:count]
    features, logits = extract_features(extractor, train.data[chosen], device=device, progress=progress,
                                        stage="features of train images")
    report = {
        "checkpoint": None, "real": True, "data": data.name, "reference_split": "test", "device": str(device),
        "extractor": _extractor_report(extractor),
        "reference": {"split": "test", "num_items": reference.features.shape[0], "cached": reference.cached},
        "sampling": {"num_samples": count, "source": "train split", "nfe": 0, "seconds": 0.0},
        "metrics": score(reference, features, options), "conditional": None, "class_histogram": None, "nll": None,
        "options": options.as_dict(),
    }
    if logits is not None and train.labels is not None:
        names = _class_names(data, extractor.num_classes)
        overall, per_class = class_accuracy(logits.argmax(1), train.labels[chosen], extractor.num_classes)
        report["conditional"] = {"accuracy": overall, "per_class": dict(zip(names, per_class)), "num_samples": count,
                                 "classifier_test_accuracy": extractor.info.get("test_accuracy"),
                                 "note": "classifier accuracy on real train images (labels as the 'requested' class)"}
    return report
