"""How well a text model's images follow their prompts: ``fm eval``'s prompt section (``prompt_report``).

One image is drawn per evaluation prompt (``evaluation_set``: captions of test items; for data without a test split,
an image folder, captions of items kept from the scorer) and scored three ways: by the contrastive image-text scorer
trained offline on the real training pairs (``fmcli.eval.scorer``: is the image's own prompt the best match among
the evaluation prompts? any captioned data), by the CLIP score where a local CLIP is given
(``fmcli.eval.clip_score``), and on data whose items carry attributes (the built-in ``shapes``: shape, colour and
background named in every caption) by the attribute classifiers below. Each figure stands beside the same figure
for the real images of the same prompts, and the pairs held out of training beside the seen ones.

Each attribute gets its own small classifier (``fmcli.eval.classifier``'s CNN), trained on the real training
split and cached; its accuracy on the real test split is the ceiling reported beside the scores. The prompts are
test-split captions, an equal number per (colour, shape) pair: the pairs held out of training (the data's
``info["held_out"]``) are scored apart from the seen ones. An image counts as right for an attribute when the
classifier reads the prompt's value, and as right for the prompt when shape and colour both are.
"""

import hashlib
import time
from pathlib import Path

import torch
from torch import Tensor

from fmcli.data.base import ArrayDataset, to_model_space, to_uint8
from fmcli.errors import FMError
from fmcli.eval.classifier import FORMAT_VERSION, accuracy, load_classifier, save_classifier, train_classifier
from fmcli.eval.clip_score import ClipModel, clip_directory, clip_scores, clip_source
from fmcli.eval.features import Progress
from fmcli.eval.scorer import prompt_keys, rank_one, trained_scorer
from fmcli.io.checkpoint import LoadedModel
from fmcli.io.files import default_cache_dir
from fmcli.sampling.generate import generate
from fmcli.sampling.options import SamplingOptions
from fmcli.sampling.prompts import prompt_condition

SCORED = ("shape", "colour")  # the attributes a prompt must get right (the background is reported too)
# Epochs of each attribute classifier: at fm eval's 2, the shape classifier reads 92% of the real test shapes right.
EPOCHS = 6


def attribute_classifier(
    train: ArrayDataset, test: ArrayDataset, attribute: str, cache: Path, device: torch.device, progress=None
) -> tuple[torch.nn.Module, float]:
    """A classifier of one attribute, trained on the real training split (cached by its content), and its accuracy
    on the real test split."""
    names = train.attribute_names[attribute]
    version = bytes([EPOCHS, FORMAT_VERSION])  # the classifier's version since 3 (its stem above 32 px)
    content = train.data.numpy().tobytes() + train.attributes[attribute].numpy().tobytes() + version
    key = hashlib.sha256(content).hexdigest()
    path = Path(cache) / "classifiers" / f"{train.name}-{attribute}-{key[:16]}.safetensors"
    if path.exists():
        network, metadata = load_classifier(path, device)
        return network, float(metadata["test_accuracy"])
    labels = train.attributes[attribute]
    network = train_classifier(train.data, labels, len(names), epochs=EPOCHS, device=device, progress=progress)
    test_accuracy = accuracy(network, test.data, test.attributes[attribute])
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"channels": train.shape[0], "num_classes": len(names), "shape": list(train.shape), "names": names}
    save_classifier(path, network, metadata | {"test_accuracy": test_accuracy})
    return network, test_accuracy


def evaluation_items(test: ArrayDataset, per_pair: int) -> Tensor:
    """The indices of ``per_pair`` test items for every (colour, shape) pair present, in pair order."""
    pairs = test.attributes["colour"] * len(test.attribute_names["shape"]) + test.attributes["shape"]
    return torch.cat([torch.nonzero(pairs == pair).flatten()[:per_pair] for pair in torch.unique(pairs)])


def evaluation_prompts(test: ArrayDataset, per_pair: int) -> tuple[list[str], dict[str, Tensor]]:
    """``per_pair`` test captions for every (colour, shape) pair present, in pair order, and their attributes."""
    chosen = evaluation_items(test, per_pair)
    return [test.captions[int(i)][0] for i in chosen], {key: values[chosen] for key, values in test.attributes.items()}


def held_out_rows(train: ArrayDataset, test: ArrayDataset, chosen: Tensor) -> Tensor | None:
    """Which chosen test items show a (colour, shape) pair held out of training (``info["held_out"]``); None when
    the data holds none out."""
    held = {tuple(pair) for pair in train.info.get("held_out", [])}
    if not held or not test.attributes or not all(a in test.attributes for a in SCORED):
        return None
    names = test.attribute_names
    pairs = zip(test.attributes["colour"][chosen].tolist(), test.attributes["shape"][chosen].tolist(), strict=True)
    return torch.tensor([(names["colour"][c], names["shape"][s]) in held for c, s in pairs], dtype=torch.bool)


def attribute_scores(
    images: Tensor, train: ArrayDataset, test: ArrayDataset, chosen: Tensor, cache: Path, device, progress=None
) -> dict:
    """uint8 images drawn for test items ``chosen``: shape, colour (both) and background read back right, the
    pairs seen in training and those held out apart, beside the classifiers' accuracy on real test images."""
    expected = {key: values[chosen] for key, values in test.attributes.items()}
    unseen = held_out_rows(train, test, chosen)
    unseen = torch.zeros(len(chosen), dtype=torch.bool) if unseen is None else unseen
    right, ceiling = {}, {}
    for attribute in (*SCORED, "background"):
        network, ceiling[attribute] = attribute_classifier(train, test, attribute, cache, device, progress)
        with torch.no_grad():
            read = torch.cat(
                [network(to_model_space(part.to(device)))[1].argmax(1).cpu() for part in images.split(500)]
            )
        right[attribute] = read == expected[attribute]
    both = right["shape"] & right["colour"]

    def share(rows: Tensor) -> dict:
        count = int(rows.sum())
        scores = {a: float(right[a][rows].float().mean()) if count else None for a in (*SCORED, "background")}
        return scores | {"both": float(both[rows].float().mean()) if count else None, "num": count}

    return {
        "seen": share(~unseen),
        "held_out": share(unseen),
        "held_out_pairs": sorted(" ".join(pair) for pair in train.info.get("held_out", [])),
        "classifier_test_accuracy": ceiling,
    }


def sample_prompts(loaded: LoadedModel, sampling: SamplingOptions, prompts: list[str], progress=None) -> tuple:
    """One image per prompt (uint8, as real images are seen) and the sampling's summary (cfg, NFE, time, notes)."""
    condition, notes = prompt_condition(loaded, prompts)
    started = time.perf_counter()
    stage = (lambda done, total: progress("sampling prompts", done, total)) if progress else None
    result = generate(loaded, sampling, num=len(prompts), condition=condition, progress=stage)
    summary = {"cfg": result.cfg, "nfe": result.nfe, "passes": result.passes,
               "seconds": round(time.perf_counter() - started, 1), "notes": notes}  # fmt: skip
    return to_uint8(result.samples), summary


def prompt_following(
    loaded: LoadedModel,
    train: ArrayDataset,
    test: ArrayDataset,
    sampling: SamplingOptions,
    *,
    per_pair: int = 10,
    cache: Path,
    progress: Progress | None = None,
) -> dict:
    """Sample each evaluation prompt once and read its attributes back (see the module's docstring)."""
    if loaded.meta.condition != "text":
        raise FMError("prompt following scores text models: this checkpoint takes no prompts")
    if not has_attributes(test):
        raise FMError(f"data set {test.name!r} has no shape and colour attributes to score prompts by (use shapes)")
    chosen = evaluation_items(test, per_pair)
    images, summary = sample_prompts(loaded, sampling, [test.captions[int(i)][0] for i in chosen])
    scores = attribute_scores(images, train, test, chosen, cache, loaded.device, progress)
    return scores | {"per_pair": per_pair} | summary


def has_attributes(data: ArrayDataset) -> bool:
    return bool(data.attributes and data.captions and all(a in data.attributes for a in SCORED))


def pair_count(data: ArrayDataset) -> int:
    """The (colour, shape) pairs there can be."""
    return len(data.attribute_names["colour"]) * len(data.attribute_names["shape"])


def caption_condition(loaded: LoadedModel, data, num: int) -> Tensor | None:
    """The token ids of ``num`` test-split captions (each image's first, in order, repeated when there are fewer):
    what a text model is sampled with for FID. None when the evaluation data has no captions."""
    test = data.load("test" if "test" in data.splits else data.splits[0])
    captions = [c[0] for c in (test.captions or []) if c]
    if not captions:
        return None
    return loaded.model.tokenize([captions[i % len(captions)] for i in range(num)])


def captioned(data: ArrayDataset) -> Tensor:
    """The indices of the items whose first caption (their prompt) is not blank."""
    return torch.tensor([i for i, item in enumerate(data.captions or []) if item and item[0].strip()], dtype=torch.long)


def evaluation_set(data, num: int) -> tuple[ArrayDataset, ArrayDataset, Tensor, Tensor]:
    """(training data, evaluation data, the evaluation items, the items the scorer trains on). With a test split:
    the training split and the test split's items (per (colour, shape) pair where the data has them: ``num`` in
    all, an equal number per pair; else the first ``num`` captioned ones). Without one (an image folder): a seeded
    tenth of its captioned items, at least half up to 100, is kept from the scorer to evaluate on."""
    train = data.load(data.splits[0])
    if "test" in data.splits:
        test = data.load("test")
        if has_attributes(test):
            return train, test, evaluation_items(test, max(1, num // pair_count(test))), captioned(train)
        return train, test, captioned(test)[:num], captioned(train)
    items = captioned(train)
    items = items[torch.randperm(len(items), generator=torch.Generator().manual_seed(0))]
    kept = max(len(items) // 10, min(len(items) // 2, 100))
    return train, train, items[:kept][:num], items[kept:]


def summary(values: dict[str, Tensor], unseen: Tensor | None) -> dict:
    """Each per-image figure's mean (and the count); the held-out pairs and the seen ones apart where there are."""

    def means(rows: Tensor) -> dict:
        count = int(rows.sum())
        return {key: float(value[rows].float().mean()) if count else None for key, value in values.items()} | {
            "num": count
        }

    everything = means(torch.ones(len(next(iter(values.values()))), dtype=torch.bool))
    return everything if unseen is None else everything | {"seen": means(~unseen), "held_out": means(unseen)}


def scorer_section(train, test, chosen, trained_on, images, cache, device, progress=None) -> dict:
    """The contrastive scorer's rank-1 rate on the images, on the real images of the same prompts (the ceiling),
    and chance (``fmcli.eval.scorer``)."""
    if len(trained_on) < 2:
        return {"note": f"{train.name} has too few captioned items to train the prompt scorer on"}
    kept = [train.captions[int(i)] for i in trained_on]
    scorer, training = trained_scorer(train.name, train.data[trained_on], kept, cache, device, progress)
    prompts = [test.captions[int(i)][0] for i in chosen]
    attributes = {key: values[chosen] for key, values in test.attributes.items()} if test.attributes else None
    keys = prompt_keys(prompts, attributes)
    right, chance, candidates = rank_one(scorer, images, prompts, keys)
    real, _, _ = rank_one(scorer, test.data[chosen], prompts, keys)
    figures = {"rank1": right, "real_rank1": real, "chance": chance}
    same = f"the same {', '.join(sorted(attributes))}" if attributes else "the same words"
    return summary(figures, held_out_rows(train, test, chosen)) | {
        "candidates": candidates, "equivalent": same, "training": training
    }  # fmt: skip


def clip_section(directory: Path, train, test, chosen, images, device, progress=None) -> dict:
    """The CLIP score of the images with their prompts, and of the real images with the same prompts."""
    clip = ClipModel(directory, device)
    prompts = [test.captions[int(i)][0] for i in chosen]
    scores = clip_scores(clip, images, prompts, progress=progress)
    real = clip_scores(clip, test.data[chosen], prompts, progress=progress, stage="CLIP score of real images")
    unseen = held_out_rows(train, test, chosen)
    return summary({"score": scores, "real_score": real}, unseen) | {"path": str(directory)}


def check_clip_path(path: Path | None, loaded: LoadedModel | None = None) -> None:
    """``--clip-path``: a directory holding a whole CLIP, for a text model; one line otherwise."""
    if path is not None:
        clip_directory(path)
        if loaded is not None and loaded.meta.condition != "text":
            raise FMError("--clip-path scores a text model's images against their prompts; this model takes no prompts")


def prompt_report(loaded: LoadedModel, data, options, progress: Progress | None = None) -> dict:
    """``fm eval``'s prompt section for a text model: one image per evaluation prompt (``evaluation_set``; ``--num``
    at most), scored by the contrastive scorer (any captioned data), the CLIP score (a local CLIP: ``--clip-path``
    or FM_CLIP_PATH) and, on data with attributes (shapes), by the attribute classifiers (``attribute_scores``)."""
    directory, clip_note = clip_source(options.clip_path)
    train, test, chosen, trained_on = evaluation_set(data, options.num_samples)
    if not len(chosen):
        return {"note": f"{data.name} has no captioned items to take prompts from"}
    cache, device = options.cache_dir or default_cache_dir(), loaded.device
    sampling = options.sampling.for_model(loaded.meta)
    images, sampled = sample_prompts(loaded, sampling, [test.captions[int(i)][0] for i in chosen], progress)
    report = {"num": len(chosen), "split": test.split if test is not train else f"{test.split} (kept from the scorer)"}
    if has_attributes(test) and test is not train:
        report |= attribute_scores(images, train, test, chosen, cache, device, progress)
        report["per_pair"] = max(1, options.num_samples // pair_count(test))
    else:
        report["attributes_note"] = f"{data.name} has no shape and colour attributes (fm eval --data shapes has)"
    report["scorer"] = scorer_section(train, test, chosen, trained_on, images, cache, device, progress)
    clip = clip_section(directory, train, test, chosen, images, device, progress) if directory else None
    report["clip"] = clip or {"note": clip_note}
    return report | sampled
