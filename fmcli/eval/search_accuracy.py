"""The accuracy ``fm tune --guidance`` ranks guidance settings by: chosen in one place, ``accuracy_scorer``.

- A class model: class accuracy, how often the data set's classifier reads the requested class
  (``EvalContext.accuracy``; None for point data and data without a classifier).
- A text model, on data whose items carry shape and colour attributes (the built-in ``shapes``): the
  prompt-following rate, the share of samples whose shape and colour the attribute classifiers of
  ``fmcli.eval.prompts`` (trained on the real training split, cached) both read as the sample's prompt names
  them. The samples are the FID's own, drawn with the evaluation split's captions (``EvalContext``), so the
  accuracy costs no extra sampling; each sample's expected attributes are looked up by its prompt's token ids.
- A text model on data without those attributes (a captioned image folder): no accuracy (None), so the search
  picks the lowest FID that keeps the recall. An image-text scorer (CLIP-like) would plug in here.
- Unlabelled sampling: no accuracy.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fmcli.data.base import ArrayDataset, to_model_space, to_uint8
from fmcli.eval.prompts import SCORED, attribute_classifier
from fmcli.eval.run import EvalContext
from fmcli.io.files import default_cache_dir
from fmcli.models.condition import PAD
from fmcli.sampling.generate import SampleResult

Scorer = Callable[[SampleResult, Tensor | None], float | None]  # (samples, their logits) -> accuracy or None

CLASS_ACCURACY = "class accuracy (the data set's classifier reads the requested class)"
PROMPT_FOLLOWING = "prompt following (shape and colour both read as the prompt names them)"


def has_attributes(data: ArrayDataset) -> bool:
    """Items captioned and carrying every attribute a prompt is scored by (shape and colour)."""
    return bool(data.captions) and bool(data.attributes) and all(a in data.attributes for a in SCORED)


def accuracy_scorer(ctx: EvalContext) -> tuple[Scorer | None, str | None]:
    """The accuracy a guidance search scores each candidate's samples by, and what it measures (see the module's
    docstring); (None, None) when there is none."""
    meta = ctx.loaded.meta
    if meta.condition == "class":
        return ctx.accuracy, CLASS_ACCURACY
    if meta.condition == "text":
        train = ctx.data.load(ctx.data.splits[0])
        test = ctx.data.load("test" if "test" in ctx.data.splits else ctx.data.splits[0])
        if has_attributes(train) and has_attributes(test):
            return PromptFollowing.build(ctx, train, test), PROMPT_FOLLOWING
    return None, None


def _key(ids: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in ids[ids != PAD])


@dataclass
class PromptFollowing:
    """The share of samples whose shape and colour both read as their prompt names them."""

    networks: dict  # attribute -> its classifier (model-space images -> (features, logits))
    expected: dict  # a prompt's token ids (PAD dropped) -> its (shape, colour) codes; None: names several
    device: torch.device

    @classmethod
    def build(cls, ctx: EvalContext, train: ArrayDataset, test: ArrayDataset) -> "PromptFollowing":
        cache = ctx.options.cache_dir or default_cache_dir()
        networks = {a: attribute_classifier(train, test, a, cache, ctx.device, ctx.progress)[0] for a in SCORED}
        expected: dict = {}  # every phrasing of every evaluation item: whichever the samples were drawn with
        items = [(i, text) for i, texts in enumerate(test.captions) for text in texts]
        ids = ctx.loaded.model.tokenize([text for _, text in items])
        for (i, _), row in zip(items, ids, strict=True):
            codes, key = tuple(int(test.attributes[a][i]) for a in SCORED), _key(row)
            expected[key] = codes if expected.get(key, codes) == codes else None
        return cls(networks, expected, ctx.device)

    def __call__(self, result: SampleResult, logits: Tensor | None = None) -> float | None:
        """The rate over the samples whose prompt names one shape and colour; None if no sample's does."""
        if result.labels is None or result.labels.dim() != 2:
            return None
        codes = [self.expected.get(_key(row)) for row in result.labels]
        known = torch.tensor([c is not None for c in codes])
        if not known.any():
            return None
        images = to_model_space(to_uint8(result.samples[known]))  # as real images are seen: 8 bits
        right = torch.ones(int(known.sum()), dtype=torch.bool)
        for index, attribute in enumerate(SCORED):
            wanted = torch.tensor([c[index] for c in codes if c is not None])
            with torch.no_grad():
                read = torch.cat(
                    [self.networks[attribute](part.to(self.device))[1].argmax(1).cpu() for part in images.split(500)]
                )
            right &= read == wanted
        return float(right.float().mean())
