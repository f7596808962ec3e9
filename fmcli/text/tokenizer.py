"""The built-in encoder's tokenizer: whole words, learned from the training captions.

Words are the runs of letters and digits of the lower-cased text (any script: ``[^\\W_]+``); everything else
(spaces, punctuation, underscores) only separates them, so "A red-car, 2x!" is ``a red car 2x``. Ids: 0 is PAD, 1 is
UNK (a word not in the vocabulary), then the vocabulary from 2 on, most frequent word first, ties in alphabetical
order, so the same captions always give the same ids. The vocabulary is capped (the rarest words become UNK).
"""

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from fmcli.errors import FMError
from fmcli.text.base import EXAMPLES, PAD

UNK = 1
FIRST_WORD = 2
WORD = re.compile(r"[^\W_]+")
MIN_CONTEXT, MAX_CONTEXT = 8, 77  # the default context: the longest training caption, within these bounds


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class WordTokenizer:
    """Word -> id over a fixed vocabulary; ``context`` ids per prompt."""

    def __init__(self, vocabulary: Sequence[str], context: int):
        if context < 1:
            raise FMError(f"the text context must be at least 1 token, not {context}")
        self.vocabulary = list(vocabulary)
        self.context = int(context)
        self.ids = {word: index + FIRST_WORD for index, word in enumerate(self.vocabulary)}
        if len(self.ids) != len(self.vocabulary):
            raise FMError("the text vocabulary lists a word twice")

    @classmethod
    def learn(cls, captions: Iterable[str], max_words: int = 10_000, context: int | None = None) -> "WordTokenizer":
        """The vocabulary of these captions (at most ``max_words`` words) and, unless given, a context that fits the
        longest caption (between 8 and 77 tokens)."""
        if max_words < 1:
            raise FMError(f"the text vocabulary needs at least 1 word, not {max_words}")
        counts: Counter[str] = Counter()
        longest = 0
        for caption in captions:
            found = words(caption)
            counts.update(found)
            longest = max(longest, len(found))
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:max_words]
        if context is None:
            context = min(max(longest, MIN_CONTEXT), MAX_CONTEXT)
        return cls([word for word, _ in ranked], context)

    @property
    def size(self) -> int:
        """Ids in use: PAD, UNK and the vocabulary (the embedding table's rows)."""
        return len(self.vocabulary) + FIRST_WORD

    def encode(self, prompt: str) -> list[int]:
        """Every word's id, not truncated."""
        return [self.ids.get(word, UNK) for word in words(prompt)]

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = torch.full((len(prompts), self.context), PAD, dtype=torch.int64)
        for row, prompt in enumerate(prompts):
            ids = self.encode(prompt)[: self.context]
            rows[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return rows

    def unknown_words(self, prompts: Sequence[str]) -> tuple[int, list[str]]:
        """Words not in the vocabulary: every occurrence counts; up to 10 distinct examples, first seen first."""
        count, examples = 0, []
        for prompt in [prompts] if isinstance(prompts, str) else prompts:
            for word in words(prompt):
                if word not in self.ids:
                    count += 1
                    if len(examples) < EXAMPLES and word not in examples:
                        examples.append(word)
        return count, examples

    def truncated(self, prompts: Sequence[str]) -> int:
        return sum(len(words(prompt)) > self.context for prompt in ([prompts] if isinstance(prompts, str) else prompts))
