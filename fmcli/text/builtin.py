"""``builtin``: a small transformer over the training captions' words, trained jointly with the velocity network.

Nothing is downloaded: the vocabulary comes from the captions (``fmcli.text.tokenizer``) and the weights start
random (deterministic given torch's seed) and live in the velocity model's state dict. A learned register token sits
before the words: every prompt, the empty one too, has it as a key cross-attention can attend to, and its final
output is the pooled vector. Padding is masked out of every attention, so what a prompt gives never depends on the
padding, and the token embeddings returned at padded positions are zero.

Options (``build(captions, **options)``): ``context`` (ids per prompt; default: the longest caption, 8 to 77),
``width`` (128), ``layers`` (2), ``heads`` (4), ``max_words`` (the vocabulary cap, 10,000).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmcli.errors import FMError
from fmcli.text.base import PAD, TextEncoder, check_ids
from fmcli.text.tokenizer import WordTokenizer

DEFAULTS = {"width": 128, "layers": 2, "heads": 4}
OPTIONS = ("context", "width", "layers", "heads", "max_words")


class Block(nn.Module):
    """A pre-norm transformer layer: self-attention over the unmasked keys, then an MLP (4x wide, GELU)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # keep [B, 1, 1, L]: True = a key
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.norm2(x))


class BuiltinTextEncoder(TextEncoder):
    name = "builtin"
    trainable = True

    def __init__(self, vocabulary: Sequence[str], context: int, width: int = 128, layers: int = 2, heads: int = 4):
        super().__init__()
        for option, value, least in (("width", width, 1), ("layers", layers, 0), ("heads", heads, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise FMError(f"builtin text encoder: {option} must be an integer >= {least}, not {value!r}")
        if width % heads:
            raise FMError(f"builtin text encoder: width {width} is not a multiple of heads {heads}")
        if not isinstance(context, int) or isinstance(context, bool) or not 1 <= context <= 1024:
            raise FMError(f"builtin text encoder: context must be an integer from 1 to 1024, not {context!r}")
        self.tokenizer = WordTokenizer(vocabulary, context)
        self.context, self.width, self.layers, self.heads = context, width, layers, heads
        self.embed = nn.Embedding(self.tokenizer.size, width)
        self.register_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(torch.zeros(1, context + 1, width))  # position 0: the register token
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        for table in (self.embed.weight, self.register_token, self.position):
            nn.init.normal_(table, std=0.02)

    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        return self.tokenizer(prompts)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """ids [B, L'] (L' <= context) -> tokens [B, L' + 1, D] (the register token first), pooled [B, D] (the
        register token's output), mask [B, L' + 1] (the register token and every non-PAD id)."""
        check_ids(self, ids)
        batch, length = ids.shape
        mask = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=ids.device), ids != PAD], dim=1)
        x = torch.cat([self.register_token.expand(batch, 1, self.width), self.embed(ids)], dim=1)
        x = x + self.position[:, : length + 1]
        keep = mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, keep)
        x = self.norm(x)
        return x.masked_fill(~mask[..., None], 0.0), x[:, 0], mask

    def export(self) -> dict:
        return {
            "name": self.name,
            "context": self.context,
            "width": self.width,
            "layers": self.layers,
            "heads": self.heads,
            "vocabulary": list(self.tokenizer.vocabulary),
        }

    def unknown_words(self, prompts: Sequence[str]) -> tuple[int, list[str]]:
        return self.tokenizer.unknown_words(prompts)

    def truncated(self, prompts: Sequence[str]) -> int:
        return self.tokenizer.truncated(prompts)


def build(captions: Sequence[str], **options) -> BuiltinTextEncoder:
    """A new encoder: the vocabulary of these training captions, random weights. ``None`` options take defaults."""
    options = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise FMError(f"builtin text encoder: unknown option {unknown[0]!r} (known: {', '.join(OPTIONS)})")
    max_words = options.pop("max_words", 10_000)
    if not isinstance(max_words, int) or isinstance(max_words, bool):
        raise FMError(f"builtin text encoder: max_words must be an integer, not {max_words!r}")
    tokenizer = WordTokenizer.learn(captions, max_words=max_words, context=options.pop("context", None))
    return BuiltinTextEncoder(tokenizer.vocabulary, tokenizer.context, **(DEFAULTS | options))


def restore(exported: dict) -> BuiltinTextEncoder:
    """The encoder ``export()`` described, with fresh weights: load the velocity model's state dict into it."""
    missing = [key for key in ("context", "width", "layers", "heads", "vocabulary") if key not in exported]
    if exported.get("name", "builtin") != "builtin" or missing:
        raise FMError(
            f"the checkpoint's builtin text encoder description is incomplete (missing {', '.join(missing)})"
            if missing
            else f"a {exported.get('name')!r} text encoder cannot be restored as 'builtin'"
        )
    return BuiltinTextEncoder(
        exported["vocabulary"],
        exported["context"],
        width=exported["width"],
        layers=exported["layers"],
        heads=exported["heads"],
    )
