"""The interface every text encoder follows, and the padding convention models rely on.

A prompt becomes a row of ``context`` token ids (``tokenize``, on the CPU), padded with ``PAD``; a row of ``PAD`` only
is the empty prompt, the null condition classifier-free guidance uses. ``forward`` turns a batch of rows into token
embeddings for cross-attention, one pooled vector per prompt and a key mask. Every mask row has at least one True, the
empty prompt's too, so attention never sees an empty set of keys.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

PAD = 0  # token id of padding. A row of PAD only is the empty prompt: the null condition guidance uses.
EXAMPLES = 10  # how many unknown words ``unknown_words`` names


class TextEncoder(torch.nn.Module):
    """Prompts -> (tokens [B, L2, D], pooled [B, D], mask [B, L2]). Subclasses set the four attributes."""

    name: str  # its registry name: "builtin", "clip"
    trainable: bool  # True: trained with the velocity network (its parameters live in the model's state dict);
    # False: frozen pretrained weights loaded from disk, never in the state dict
    context: int  # L: token ids per prompt; longer prompts are truncated
    width: int  # D of the token embeddings forward() returns

    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        """[B, L] int64 on the CPU; "" (the empty prompt) gives a row of PAD only; unknown words never raise."""
        raise NotImplementedError

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """ids [B, L] int64 on the module's device -> (tokens [B, L2, D], pooled [B, D], mask [B, L2] bool, True =
        a key cross-attention may attend to; every row has at least one True)."""
        raise NotImplementedError

    def export(self) -> dict:
        """JSON-serialisable: everything ``spec.restore`` needs to rebuild this encoder (weights of a trainable
        encoder come from the velocity model's state dict)."""
        raise NotImplementedError

    def unknown_words(self, prompts: Sequence[str]) -> tuple[int, list[str]]:
        """How many words of these prompts the tokenizer does not know, and up to 10 of them (first seen first)."""
        raise NotImplementedError

    def truncated(self, prompts: Sequence[str]) -> int:
        """How many prompts are longer than ``context`` tokens (they are cut to it)."""
        raise NotImplementedError

    def empty(self, batch: int = 1) -> Tensor:
        """``batch`` empty prompts (rows of PAD only), the null condition."""
        return torch.full((batch, self.context), PAD, dtype=torch.int64)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, context={self.context}, width={self.width}, trainable={self.trainable}"


def check_ids(encoder: TextEncoder, ids: Tensor) -> None:
    """A programming error, not the user's: ids must be a [B, L'] integer batch with L' <= context."""
    if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32) or ids.shape[1] > encoder.context:
        raise ValueError(
            f"{encoder.name} text encoder: expected int64 ids [B, <= {encoder.context}], got {tuple(ids.shape)} "
            f"{ids.dtype}"
        )
