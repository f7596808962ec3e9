"""How well a text model's images follow their prompts, on data whose items carry attributes (the built-in
``shapes``: shape, colour and background named in every caption).

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
from fmcli.eval.classifier import accuracy, load_classifier, save_classifier, train_classifier
from fmcli.eval.features import Progress
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
    content = train.data.numpy().tobytes() + train.attributes[attribute].numpy().tobytes() + bytes([EPOCHS])
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


def evaluation_prompts(test: ArrayDataset, per_pair: int) -> tuple[list[str], dict[str, Tensor]]:
    """``per_pair`` test captions for every (colour, shape) pair present, in pair order, and their attributes."""
    pairs = test.attributes["colour"] * len(test.attribute_names["shape"]) + test.attributes["shape"]
    chosen = torch.cat([torch.nonzero(pairs == pair).flatten()[:per_pair] for pair in torch.unique(pairs)])
    prompts = [test.captions[int(i)][0] for i in chosen]
    return prompts, {key: values[chosen] for key, values in test.attributes.items()}


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
    if not test.attributes or not test.captions or not all(a in test.attributes for a in SCORED):
        raise FMError(f"data set {test.name!r} has no shape and colour attributes to score prompts by (use shapes)")
    device = loaded.device
    prompts, expected = evaluation_prompts(test, per_pair)
    condition, notes = prompt_condition(loaded, prompts)
    started = time.perf_counter()
    result = generate(loaded, sampling, num=len(prompts), condition=condition)
    images = to_uint8(result.samples)  # as real images are seen: 8 bits
    held = {tuple(pair) for pair in train.info.get("held_out", [])}
    names = test.attribute_names
    pairs = zip(expected["colour"].tolist(), expected["shape"].tolist(), strict=True)
    unseen = torch.tensor([(names["colour"][c], names["shape"][s]) in held for c, s in pairs])
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
        "held_out_pairs": sorted(" ".join(pair) for pair in held),
        "per_pair": per_pair,
        "classifier_test_accuracy": ceiling,
        "cfg": result.cfg,
        "nfe": result.nfe,
        "passes": result.passes,
        "seconds": round(time.perf_counter() - started, 1),
        "notes": notes,
    }


def caption_condition(loaded: LoadedModel, data, num: int) -> Tensor | None:
    """The token ids of ``num`` test-split captions (each image's first, in order, repeated when there are fewer):
    what a text model is sampled with for FID. None when the evaluation data has no captions."""
    test = data.load("test" if "test" in data.splits else data.splits[0])
    captions = [c[0] for c in (test.captions or []) if c]
    if not captions:
        return None
    return loaded.model.tokenize([captions[i % len(captions)] for i in range(num)])


def prompt_report(loaded: LoadedModel, data, options, progress: Progress | None = None) -> dict:
    """``fm eval``'s prompt section for a text model: ``prompt_following`` on the evaluation data set's splits
    (``--num`` prompts in all, an equal number per pair), or why there is none."""
    train, test = data.load(data.splits[0]), data.load("test" if "test" in data.splits else data.splits[0])
    if not test.attributes or not all(a in test.attributes for a in SCORED) or not test.captions:
        return {"note": f"{data.name} has no shape and colour attributes to score prompts by (fm eval --data shapes)"}
    pairs = len(test.attribute_names["colour"]) * len(test.attribute_names["shape"])
    sampling = options.sampling.for_model(loaded.meta)
    cache = options.cache_dir or default_cache_dir()
    return prompt_following(loaded, train, test, sampling, per_pair=max(1, options.num_samples // pairs), cache=cache,
                            progress=progress)  # fmt: skip
