"""Text encoders: captions in, token embeddings out, for models conditioned on text (``fm train`` on captioned data).

    base.py       the ``TextEncoder`` interface (tokenize, forward -> tokens, pooled, mask; export) and ``PAD``
    tokenizer.py  the word-level tokenizer the built-in encoder learns from the training captions
    builtin.py    ``builtin``: a small transformer trained jointly with the velocity network (no download)
    clip.py       ``clip``: a frozen CLIP text tower from a local directory (transformers), with an embedding cache

Encoders are plugins (``fm_register_text_encoders``); ``fmcli.registry.get_text_encoder(name)`` gives the spec whose
``build(captions, **options)`` makes a new encoder and ``restore(exported)`` the one a checkpoint describes.

May import: torch, ``fmcli.errors``, ``fmcli.specs``, ``fmcli.hookspecs``, ``fmcli.registry``, ``fmcli.device``,
``fmcli.runtime``; transformers only inside clip.py's functions. Models import this room, never the reverse.
"""

from fmcli.text.base import PAD, TextEncoder

__all__ = ["PAD", "TextEncoder"]
