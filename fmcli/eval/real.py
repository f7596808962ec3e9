"""The floor: real training images scored like samples against the test split (``fm eval --real``)."""

import torch
from torch import Tensor

from fmcli.device import resolve_device
from fmcli.errors import FMError
from fmcli.eval.features import Progress, extract_features
from fmcli.eval.metrics import check_sample_count
from fmcli.eval.reference import reference_features
from fmcli.eval.run import (
    EvalOptions,
    accuracy_report,
    eval_data,
    load_extractor,
    report_skeleton,
    score,
)
from fmcli.io.files import default_cache_dir
from fmcli.sampling.guidance import balanced_classes


def real_choice(labels: Tensor | None, count: int, size: int, seed: int) -> Tensor:
    """``count`` item indices, seeded: equal numbers per class when labelled (as a conditional model's
    samples are drawn), so the floor and the model are scored on the same class balance."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    if labels is None:
        return order[:count]
    shuffled = labels[order]
    classes = int(labels.max()) + 1
    wanted = torch.bincount(balanced_classes(count, classes), minlength=classes)
    chosen = [order[shuffled == c][: int(wanted[c])] for c in range(classes)]
    return torch.cat(chosen)


def evaluate_real(data_name: str, options: EvalOptions, progress: Progress | None = None) -> dict:
    """Real TRAIN images (``options.num_samples`` of them, equal numbers per class when labelled) scored
    against the test split: the best figures a model could hope for at this sample count."""
    device = resolve_device(options.device)
    data = eval_data(data_name, options)
    if "test" not in data.splits:
        raise FMError(f"data set {data.name!r} has no test split to score against")
    extractor = load_extractor(options.extractor, data, options, device, progress)
    train = data.load("train")
    count = min(options.num_samples, len(train))
    check_sample_count(count, extractor.name, extractor.dim, options.metrics)
    reference = reference_features(
        extractor, data.load("test"), cache=options.cache_dir or default_cache_dir(), device=device, progress=progress
    )
    chosen = real_choice(train.labels, count, len(train), options.sampling.seed)
    features, logits = extract_features(
        extractor, train.data[chosen], device=device, progress=progress, stage="features of train images"
    )
    report = report_skeleton(
        data,
        device,
        extractor,
        reference,
        options,
        real=True,
        sampling={"num_samples": count, "source": "train split", "nfe": 0, "seconds": 0.0},
        metrics=score(reference, features, options),
    )
    if logits is not None and train.labels is not None:
        names = data.class_names(extractor.num_classes)
        report["conditional"] = accuracy_report(
            logits,
            train.labels[chosen],
            names,
            extractor,
            note="classifier accuracy on real train images (labels as the 'requested' class)",
        )
    return report
