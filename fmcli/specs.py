"""What plugins register (data sets, models, feature extractors, loggers, text encoders, autoencoders), and lazy
references to implementations.

Registering costs nothing: a spec names its item and describes it; the code behind it (torch,
the network, the loader) is imported only when the item is used. That is what lets ``fm --help``,
``fm COMMAND --help`` and shell completion list every solver and data set without importing
torch. Built-ins use ``LazyItem`` and ``lazy_callable`` for this; a plugin may too (see
examples/writing_a_plugin.md), or register its objects directly as before.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DatasetSpec:
    name: str
    description: str
    kind: str  # "image" or "points"
    splits: tuple[str, ...]  # e.g. ("train", "test"); ("train",) when no test split
    load: Callable[..., Any]  # load(fmcli.data.base.LoadOptions) -> fmcli.data.base.ArrayDataset
    # Training options that suit this data (e.g. a short schedule for the embedded subset);
    # they sit between fm's defaults and the user's config file and options.
    train_defaults: dict = field(default_factory=dict)
    # Is a mirror image as likely as the image? (photos: yes; digits and text: no) Sets --hflip's default.
    flip_invariant: bool = False


@dataclass
class ModelSpec:
    name: str
    description: str
    build: Callable[..., Any]  # build(**config_without_name) -> torch.nn.Module with a ``config`` dict


@dataclass
class ExtractorSpec:
    name: str
    description: str
    load: Callable[..., Any]  # load(fmcli.eval.features.ExtractorContext) -> FeatureExtractor
    dim: int | None = None  # feature length when known before loading (lets --num be checked before any work)


@dataclass
class LoggerSpec:
    name: str
    description: str
    open: Callable[..., Any]  # open(run_dir: Path, config: TrainConfig) -> logger (see fmcli.hookspecs)
    requires: str | None = None  # a package it imports, checked before training starts ...
    install: str | None = None  # ... and how to get it, for the error message


@dataclass
class TextEncoderSpec:
    """A text encoder for caption-conditioned models (``fmcli.text.base.TextEncoder``)."""

    name: str
    description: str
    # build(captions: Sequence[str], **options) -> TextEncoder, new: the built-in one takes its vocabulary from these
    # training captions (random weights); clip loads options["path"] (or FM_CLIP_PATH)
    build: Callable[..., Any]
    restore: Callable[..., Any]  # restore(exported: dict) -> TextEncoder, the one encoder.export() describes
    requires: str | None = None  # a package it imports, checked before training starts ...
    install: str | None = None  # ... and how to get it, for the error message


@dataclass
class AutoencoderSpec:
    """An autoencoder for latent-space models (``fmcli.autoencoders.base.Autoencoder``)."""

    name: str
    description: str
    load: Callable[..., Any]  # load(path) -> Autoencoder: a saved file (builtin) or a directory (diffusers)
    build: Callable[..., Any] | None = None  # build(**config) -> a new, untrained Autoencoder; None: not trainable
    requires: str | None = None  # a package it imports, checked before work starts ...
    install: str | None = None  # ... and how to get it, for the error message


def _resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def lazy_callable(target: str, *args: Any) -> Callable[..., Any]:
    """``"package.module:function"`` as a function that imports the module on its first call;
    ``args`` are passed first (like ``functools.partial``)."""

    def call(*more: Any, **kwargs: Any) -> Any:
        return _resolve(target)(*args, *more, **kwargs)

    call.__qualname__ = call.__name__ = target.partition(":")[2]
    return call


class LazyItem:
    """A registered object (a solver, say) known by name, imported on first use of anything else.

    ``target`` is ``"package.module:attribute"``: a class (instantiated without arguments), an
    object, or a collection of objects (the one whose ``name`` matches is taken).
    """

    def __init__(self, name: str, target: str):
        self.name, self._target, self._item = name, target, None

    def resolve(self) -> Any:
        if self._item is None:
            found = _resolve(self._target)
            if isinstance(found, type):
                found = found()
            elif isinstance(found, (tuple, list)):
                found = next((item for item in found if item.name == self.name), None)
            if found is None or getattr(found, "name", None) != self.name:
                raise LookupError(f"{self._target} provides no item named {self.name!r}")
            self._item = found
        return self._item

    def __getattr__(self, attribute: str) -> Any:  # only called for attributes other than name
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(self.resolve(), attribute)

    def __repr__(self) -> str:
        return f"LazyItem({self.name!r}, {self._target!r})"
