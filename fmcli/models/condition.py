"""The condition y a velocity network takes, as one concept: class indices or prompt token ids, and "none".

A class model takes y [B] int64 in 0..num_classes - 1; its null condition is the index ``num_classes``. A text
model takes y [B, L] int64, the token ids of one prompt per sample (its text encoder's ``tokenize``); its null
condition is the empty prompt, a row of ``PAD`` only. Everything that drops, guides or batches conditions (label
or caption dropout, classifier-free guidance, the solvers' ``**conditioning``, sampling batches) goes through the
functions below, so a class model and a text model share that code: ``torch.full_like(y, null)`` is the
null condition of either kind, and rows are what is indexed, concatenated and dropped.

Imports no torch at the top: checkpoint headers (``fmcli.io.header``, read without torch) ask ``condition_kind``.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

PAD = 0  # fmcli.text.base.PAD: the padding token id; a row of it alone is the empty prompt

KINDS = ("none", "class", "text")


def condition_kind(model_config: dict) -> str:
    """ "text" (a text encoder in the config), "class" (num_classes > 0) or "none", from a model's config."""
    if model_config.get("text"):
        return "text"
    return "class" if int(model_config.get("num_classes") or 0) > 0 else "none"


def null_value(kind: str, num_classes: int) -> int:
    """The value a null condition of this kind is filled with: PAD for text, else the null class ``num_classes``."""
    return PAD if kind == "text" else num_classes


def null_rows(y: "Tensor", null: int) -> "Tensor":
    """[B] bool: which rows of y ([B] or [B, L]) are the null condition."""
    return (y == null).reshape(y.shape[0], -1).all(dim=1)


def drop_rows(y: "Tensor", drop: "Tensor", null: int) -> "Tensor":
    """y with the rows where ``drop`` ([B] bool) is True replaced by the null condition."""
    return y.masked_fill(drop.reshape(-1, *([1] * (y.dim() - 1))), null)
