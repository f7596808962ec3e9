"""``fm eval`` as plain functions: score a checkpoint against the test split, or score real data (the floor).

Every figure is reported with the number of samples it was computed from: FID is biased upwards at small N (it
needs N > d for a full-rank covariance), KID is unbiased at any N >= 2, and precision/recall depend on N through
the k-NN radii (both sets get N points).

The real reference is the data set's TEST split; its features are cached (``fmcli.eval.reference``). Generated
images are quantised to 8 bits before feature extraction, like real images. Reports also carry NFE, sampling wall
time and the device. The solver sweep is ``fmcli.eval.sweep``; likelihoods are ``fmcli.eval.nll``; how well a
text model's images follow their prompts is ``fmcli.eval.prompts``.
"""

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from fmcli import registry
from fmcli.data.base import ArrayDataset, LoadOptions
from fmcli.data.resolve import load_data, registered_dataset
from fmcli.device import resolve_device
from fmcli.errors import FMError
from fmcli.eval.features import (
    ExtractorContext,
    FeatureExtractor,
    Progress,
    default_cache_dir,
    default_extractor,
    extract_features,
)
from fmcli.eval.metrics import (
    check_sample_count,
    class_accuracy,
    class_histogram,
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
)
from fmcli.eval.nll import NLLOptions, check_nll_model, evaluate_nll
from fmcli.eval.prompts import caption_condition, check_clip_path, prompt_report
from fmcli.eval.reference import ReferenceFeatures, reference_features
from fmcli.io.checkpoint import CheckpointMeta, LoadedModel, load_checkpoint
from fmcli.sampling.generate import SampleResult, generate
from fmcli.sampling.guidance import balanced_classes
from fmcli.sampling.options import SamplingOptions

METRICS = ("fid", "kid", "pr")


def _no_guidance() -> SamplingOptions:
    return SamplingOptions(cfg=1.0)  # FID measures the model itself unless guidance is asked for


@dataclass(frozen=True)
class EvalOptions:
    """What to measure and how; validated on creation, before any sampling or feature extraction."""

    num_samples: int = 5000
    metrics: tuple[str, ...] = METRICS
    extractor: str | None = None  # None: default_extractor(shape)
    k: int = 3  # neighbours for precision/recall
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    sampling: SamplingOptions = field(default_factory=_no_guidance)
    weights: str = "ema"
    device: str = "auto"
    data: str | None = None  # None: the checkpoint's own data set
    data_dir: Path | None = None
    cache_dir: Path | None = None
    inception_weights: Path | None = None
    download: bool = True
    nll: NLLOptions | None = None  # also report the likelihood of test items
    # Conditional models: also draw num_samples without a label and report their classes (mode coverage).
    # Off by default: it doubles the sampling, and the conditional figures do not need it.
    class_histogram: bool = False
    clip_path: Path | None = None  # text models: a local CLIPModel for the CLIP score (else FM_CLIP_PATH, if any)

    def __post_init__(self) -> None:
        unknown = [metric for metric in self.metrics if metric not in METRICS]
        if unknown or not self.metrics:
            raise FMError(
                f"--metrics: unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}"
                if unknown
                else "--metrics is empty"
            )
        if self.num_samples < 2:
            raise FMError(f"--num must be at least 2 (got {self.num_samples})")
        if "pr" in self.metrics and self.num_samples <= self.k:
            raise FMError(f"precision/recall with k={self.k} needs more than {self.k} samples, got {self.num_samples}")
        if min(self.k, self.kid_subsets) < 1 or self.kid_subset_size < 2:
            raise FMError("--k and --kid-subsets must be positive, --kid-subset-size at least 2")
        if self.weights not in ("ema", "raw"):
            raise FMError(f"--weights must be 'ema' or 'raw', not {self.weights!r}")
        if self.extractor is not None:
            spec = registry.get_feature_extractor(self.extractor)
            if spec.dim is not None:  # known before loading (training) the network: refuse too few samples now
                check_sample_count(self.num_samples, spec.name, spec.dim, self.metrics)
        if self.clip_path is not None:
            check_clip_path(self.clip_path)  # a folder without CLIP weights: one line, before any work

    def as_dict(self) -> dict:
        plain = asdict(replace(self, sampling=SamplingOptions())) | {"sampling": self.sampling.as_dict()}
        return {key: str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
                for key, value in plain.items()}  # fmt: skip


def _progress_of(progress: Progress | None, stage: str):
    return (lambda done, total: progress(stage, done, total)) if progress else None


# --- data ------------------------------------------------------------------------------------


@dataclass
class EvalData:
    """A data set to score against, loaded split by split on first use."""

    name: str  # what was loaded (a registered name or a folder path)
    splits: tuple[str, ...]
    load_options: LoadOptions
    _loaded: dict = field(default_factory=dict)

    def load(self, split: str) -> ArrayDataset:
        if split not in self._loaded:
            if split not in self.splits:
                raise FMError(f"data set {self.name!r} has no {split!r} split (it has: {', '.join(self.splits)})")
            self._loaded[split] = load_data(self.name, replace(self.load_options, split=split))
        return self._loaded[split]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.load(self.splits[-1]).shape

    def class_names(self, count: int) -> list[str]:
        names = self.load(self.splits[0]).class_names or []
        return list(names) if len(names) == count else [str(i) for i in range(count)]


def eval_data(
    name: str,
    options: EvalOptions,
    *,
    data_dir: Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
) -> EvalData:
    """The data set to score against, loaded with the options the model was trained with."""
    spec = registered_dataset(name)
    splits = tuple(spec.splits) if spec is not None else ("train",)  # image folders have one split
    # The data seed stays at its default: procedural test sets (toys) must not change with --seed.
    load_options = LoadOptions(
        split=splits[0],
        data_dir=data_dir or options.data_dir,
        image_size=image_size,
        channels=channels,
        download=options.download,
    )
    data = EvalData(name=name, splits=splits, load_options=load_options)
    data.load(splits[-1])  # a missing or unknown data set fails here, before any model work
    return data


def checkpoint_data(meta: CheckpointMeta, options: EvalOptions) -> EvalData:
    """The checkpoint's own data set (with its training-time data folder, resize and channels), or ``--data``."""
    if options.data is not None:
        data = eval_data(options.data, options)
    else:
        trained = meta.train_config or {}
        data = eval_data(
            trained.get("data") or meta.data["name"],
            options,
            data_dir=Path(trained["data_dir"]) if trained.get("data_dir") else None,
            image_size=trained.get("image_size"),
            channels=trained.get("channels"),
        )
    if data.shape != meta.image_shape:  # a latent model's samples are compared once decoded
        raise FMError(
            f"the checkpoint generates items of shape {list(meta.image_shape)} but data set {data.name!r} has "
            f"{list(data.shape)} (image size or channels differ); evaluate against matching data"
        )
    return data


# --- extractors and scores ---------------------------------------------------------------------


def load_extractor(
    name: str | None, data: EvalData, options: EvalOptions, device: torch.device, progress: Progress | None
) -> FeatureExtractor:
    spec = registry.get_feature_extractor(name or default_extractor(data.shape))
    context = ExtractorContext(
        dataset_name=data.name,
        shape=data.shape,
        splits=data.splits,
        load_split=data.load,
        device=device,
        cache_dir=options.cache_dir,
        weights=options.inception_weights,
        download=options.download,
        progress=progress,
    )
    extractor = spec.load(context)
    check_sample_count(options.num_samples, extractor.name, extractor.dim, options.metrics)
    return extractor


def score(reference: ReferenceFeatures, fake: Tensor, options: EvalOptions) -> dict:
    """FID / KID / precision-recall of generated features against the reference, each with its sample counts."""
    n, m = fake.shape[0], reference.features.shape[0]
    seed = options.sampling.seed
    out: dict = {}
    if "fid" in options.metrics:
        stats = feature_statistics(fake)
        value = frechet_distance(stats.mean, stats.cov, reference.stats.mean, reference.stats.cov)
        out["fid"] = {"value": value, "num_samples": n, "num_reference": m}
    if "kid" in options.metrics:
        mean, std = kernel_inception_distance(
            reference.features, fake, num_subsets=options.kid_subsets, subset_size=options.kid_subset_size, seed=seed
        )
        out["kid"] = {
            "value": mean,
            "std": std,
            "num_samples": n,
            "num_reference": m,
            "subset_size": min(options.kid_subset_size, n, m),
        }
    if "pr" in options.metrics:
        # Equal set sizes: the k-NN radii (and so both figures) depend on the number of points.
        chosen = torch.randperm(m, generator=torch.Generator().manual_seed(seed))[: min(n, m)]
        precision, recall = precision_recall(reference.features[chosen], fake, k=options.k)
        for name, value in (("precision", precision), ("recall", recall)):
            out[name] = {"value": value, "num_samples": n, "num_reference": len(chosen), "k": options.k}
    return out


def accuracy_report(logits: Tensor, labels: Tensor, names: list[str], classifier: FeatureExtractor, **notes) -> dict:
    """Does the classifier see the requested class? Overall and per class, with the classifier's own accuracy."""
    overall, per_class = class_accuracy(logits.argmax(1), labels, len(names))
    return {
        "accuracy": overall,
        "per_class": dict(zip(names, per_class, strict=True)),
        "num_samples": len(labels),
        "classifier_test_accuracy": classifier.info.get("test_accuracy"),
        **notes,
    }


def extractor_report(extractor: FeatureExtractor) -> dict:
    return {"name": extractor.name, "dim": extractor.dim, "identity": extractor.identity, **extractor.info}


def report_skeleton(
    data: EvalData,
    device: torch.device,
    extractor: FeatureExtractor,
    reference: ReferenceFeatures,
    options: EvalOptions,
    **sections,
) -> dict:
    """The keys every ``fm eval`` report has; ``sections`` fill in (or add) the rest."""
    return {
        "checkpoint": None,
        "data": data.name,
        "reference_split": "test",
        "device": str(device),
        "extractor": extractor_report(extractor),
        "reference": {"split": "test", "num_items": reference.features.shape[0], "cached": reference.cached},
        "sampling": None,
        "metrics": None,
        "conditional": None,
        "class_histogram": None,
        "nll": None,
        "options": options.as_dict(),
        **sections,
    }


# --- one checkpoint ------------------------------------------------------------------------------


@dataclass
class EvalContext:
    """Everything the evaluations of one checkpoint share, built once by ``prepare``."""

    options: EvalOptions
    device: torch.device
    loaded: LoadedModel
    data: EvalData
    extractor: FeatureExtractor
    reference: ReferenceFeatures
    progress: Progress | None
    classifiers: dict = field(default_factory=dict)  # the class-telling network, found once (``classifier``)

    @property
    def num_classes(self) -> int:
        return self.loaded.meta.num_classes

    def requested_classes(self) -> Tensor | None:
        """Equal numbers of every class (class models), test captions (text models), or None (unconditional)."""
        if self.loaded.meta.condition == "text":
            return caption_condition(self.loaded, self.data, self.options.num_samples)
        return balanced_classes(self.options.num_samples, self.num_classes) if self.num_classes else None

    def sample(self, sampling: SamplingOptions, classes: Tensor | None, stage: str) -> SampleResult:
        return generate(
            self.loaded,
            sampling,
            num=self.options.num_samples,
            condition=classes,
            progress=_progress_of(self.progress, stage),
        )

    def sample_features(self, sampling: SamplingOptions) -> tuple[SampleResult, Tensor, Tensor | None, dict]:
        """Samples with ``sampling``, their features and logits, and the sampling's summary (its cost)."""
        sampling = sampling.for_model(self.loaded.meta)
        result = self.sample(sampling, self.requested_classes(), f"sampling ({sampling.solver_name})")
        features, logits = extract_features(
            self.extractor, result.samples, device=self.device, progress=self.progress, stage="features of samples"
        )
        num, guidance, seconds = self.options.num_samples, result.guidance, result.seconds
        summary = {"num_samples": num, "solver": sampling.solver_name, "steps": sampling.steps, "rtol": sampling.rtol,
                   "time_grid": result.time_grid, "nfe": result.nfe, "passes": result.passes, "cfg": result.cfg,
                   "guidance": guidance.setting.as_json() | {"source": guidance.source},
                   "seconds": round(seconds, 3), "samples_per_second": round(num / max(seconds, 1e-9), 2)}  # fmt: skip
        return result, features, logits, summary

    def sample_and_score(self, sampling: SamplingOptions) -> tuple[SampleResult, Tensor | None, dict, dict]:
        """Samples with ``sampling``, and (logits, sampling summary, metrics)."""
        result, features, logits, summary = self.sample_features(sampling)
        return result, logits, summary, score(self.reference, features, self.options)

    def accuracy(self, result: SampleResult, logits: Tensor | None) -> float | None:
        """How often the classifier sees the requested class (None: unlabelled samples, or no classifier)."""
        if "network" not in self.classifiers:
            self.classifiers["network"] = _classifier_for(self)
        classifier = self.classifiers["network"]
        if result.labels is None or classifier is None:
            return None
        names = self.data.class_names(classifier.num_classes)
        if len(names) != self.num_classes:
            return None
        if classifier is not self.extractor or logits is None:
            _, logits = extract_features(classifier, result.samples, device=self.device)
        return class_accuracy(logits.argmax(1), result.labels, len(names))[0]

    def row(self, sampling: SamplingOptions) -> dict:
        """One line of a sweep or a guidance search: the sampling, its cost (NFE, network passes), its scores."""
        result, logits, summary, metrics = self.sample_and_score(sampling)
        return table_row(summary, metrics, self.accuracy(result, logits))


def table_row(summary: dict, metrics: dict, accuracy: float | None) -> dict:
    """A sweep's or a guidance search's line from a sampling summary, its metrics and its class accuracy."""
    guidance = summary["guidance"]
    return {
        **{key: summary[key] for key in ("solver", "steps", "time_grid", "nfe", "passes", "cfg", "seconds")},
        "num_samples": summary["num_samples"],
        **{key: guidance[key] for key in ("interval", "guide", "guide_label")},
        **{metric: entry["value"] for metric, entry in metrics.items()},
        **({"kid_std": metrics["kid"]["std"]} if "kid" in metrics else {}),
        "accuracy": accuracy,
    }


def prepare(
    checkpoint: Path, options: EvalOptions, progress: Progress | None, *, train_reference: bool = False
) -> EvalContext:
    """Load the checkpoint, its data, the feature extractor and the reference features (cached). The reference
    is the test split; ``train_reference``: the training split where there is no test split (an image folder)."""
    device = resolve_device(options.device)
    loaded = load_checkpoint(checkpoint, device=device, weights=options.weights)
    check_nll_model(options.nll, loaded.meta)  # before any work
    data = checkpoint_data(loaded.meta, options)
    if "test" not in data.splits and not train_reference:
        raise FMError(f"data set {data.name!r} has no test split to score against; use a data set with one")
    extractor = load_extractor(options.extractor, data, options, device, progress)
    split = "test" if "test" in data.splits else data.splits[0]
    reference = reference_features(
        extractor, data.load(split), cache=options.cache_dir or default_cache_dir(), device=device, progress=progress
    )
    return EvalContext(options, device, loaded, data, extractor, reference, progress)


def evaluate_checkpoint(checkpoint: Path, options: EvalOptions, progress: Progress | None = None) -> dict:
    """Sample from a checkpoint and score the samples against the test split (and optionally the NLL)."""
    ctx = prepare(checkpoint, options, progress)
    check_clip_path(options.clip_path, ctx.loaded)  # a CLIP for a model without prompts: one line, before sampling
    result, logits, sampling, metrics = ctx.sample_and_score(options.sampling)
    report = report_skeleton(
        ctx.data,
        ctx.device,
        ctx.extractor,
        ctx.reference,
        options,
        checkpoint=str(checkpoint),
        sampling=sampling,
        metrics=metrics,
    )
    classifier = _classifier_for(ctx)
    if classifier is not None:
        names = ctx.data.class_names(classifier.num_classes)
        if classifier is not ctx.extractor or logits is None:
            _, logits = extract_features(classifier, result.samples, device=ctx.device)
        if result.labels is None:  # an unconditional model: which classes does it draw?
            report["class_histogram"] = {
                "counts": dict(zip(names, class_histogram(logits.argmax(1), len(names)), strict=True)),
                "num_samples": options.num_samples,
                "source": "the evaluated samples",
            }
        elif len(names) == ctx.num_classes:
            report["conditional"] = accuracy_report(logits, result.labels, names, classifier, cfg=result.cfg)
            if options.class_histogram and ctx.loaded.meta.label_dropout > 0:
                report["class_histogram"] = _unconditional_histogram(ctx, classifier, names)
    if ctx.loaded.meta.condition == "text":  # does each image follow its prompt? (scorer, CLIP, shapes' attributes)
        report["prompts"] = prompt_report(ctx.loaded, ctx.data, options, ctx.progress)
    if options.nll is not None:
        report["nll"] = evaluate_nll(
            ctx.loaded, ctx.data, options.nll, seed=options.sampling.seed, device=ctx.device, progress=ctx.progress
        )
    return report


def _classifier_for(ctx: EvalContext) -> FeatureExtractor | None:
    """The network that tells the class of an image: the extractor itself when it classifies this data set,
    else the data set's own classifier; None for point data and unlabelled data."""
    train = ctx.data.load(ctx.data.splits[0])
    if train.kind != "image":
        return None
    if ctx.extractor.num_classes > 0:
        return ctx.extractor
    if train.labels is None:
        return None
    return load_extractor("classifier", ctx.data, ctx.options, ctx.device, ctx.progress)


def _unconditional_histogram(ctx: EvalContext, classifier: FeatureExtractor, names: list[str]) -> dict:
    """Classes of samples drawn without a label (the null class): does the model cover every class?"""
    sampling = replace(ctx.options.sampling, seed=ctx.options.sampling.seed + 1, cfg=1.0)  # no label: no guidance
    result = ctx.sample(sampling, None, "unconditional sampling")
    _, logits = extract_features(classifier, result.samples, device=ctx.device)
    return {
        "counts": dict(zip(names, class_histogram(logits.argmax(1), len(names)), strict=True)),
        "num_samples": ctx.options.num_samples,
        "source": "unconditional samples",
        "nfe": result.nfe,
        "seconds": round(result.seconds, 3),
    }
