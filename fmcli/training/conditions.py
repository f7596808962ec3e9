"""What a run conditions on: class labels, captions (a text model, with its new text encoder) or nothing.

A data set with captions trains a text model unless ``--captions none`` (the data layer drops them then, or
turns class folders into captions with ``--captions classes``); labels train a class model unless
``--unconditional``. The text encoder is built here from the training captions (``fmcli.text``: the built-in
one's vocabulary, or a pretrained one from local files), and enters the model's config as its ``export()``; a
distilled student (``fm distill``) takes its teacher's instead.
"""

from dataclasses import replace
from pathlib import Path

import torch

from fmcli.data.base import ArrayDataset
from fmcli.errors import FMError
from fmcli.models.condition import condition_kind
from fmcli.training.batches import Conditions
from fmcli.training.config import TrainConfig

# Cross-attention by default: none on a CPU, where 15 minutes with the pooled prompt alone followed the prompts better
# than with cross-attention at the lowest resolution (more steps in the time: docs/measured/text.md); on CUDA the
# lowest resolution (not measured there).


def wants_text(config: TrainConfig, data: ArrayDataset) -> bool:
    return config.conditional and data.captions is not None and config.captions != "none"


def training_condition(
    config: TrainConfig, data: ArrayDataset, device_type: str = "cpu"
) -> tuple[TrainConfig, int, dict | None]:
    """(the config, a text model's choices recorded in its decisions; the classes the model takes; the model-config
    extras of a text model, or None). Any objective trains a text model; a distilled student takes its teacher's
    text encoder (tokenizer and vocabulary included) and cross-attention, so it reads a prompt as the teacher did."""
    text = wants_text(config, data)
    if config.teacher:
        check_teacher_condition(config, text)
    if not text:
        return config, (data.num_classes if (config.conditional and data.labels is not None) else 0), None
    if config.teacher:
        teacher = teacher_config(config)
        text = {"text": teacher["text"], "cross_attention": list(teacher.get("cross_attention") or [])}
    else:
        text = new_text_encoder(config, data, device_type)
    return replace(config, decisions=config.decisions | {"condition": text_decision(config, data, text)}), 0, text


def new_text_encoder(config: TrainConfig, data: ArrayDataset, device_type: str) -> dict:
    """A new text model's extras: its encoder (built from the training captions) and where it cross-attends."""
    from fmcli.registry import get_text_encoder

    spec = get_text_encoder(config.text_encoder)
    captions = [caption for item in data.captions for caption in item]
    if not captions:
        raise FMError(f"{config.data}: no image has a caption; use --captions none to train without them")
    options = {"path": config.text_encoder_path} if config.text_encoder_path else {}
    encoder = spec.build(captions, **options)
    return {"text": encoder.export(), "cross_attention": cross_attention(config, data, device_type)}


def teacher_config(config: TrainConfig) -> dict:
    """The model config of the run's teacher (read from its checkpoint's header: no weights are loaded)."""
    from fmcli.io.header import read_header

    return read_header(Path(config.teacher))[1].model_config


def check_teacher_condition(config: TrainConfig, text: bool) -> None:
    """A text teacher needs a run on its captions, and a run on captions a text teacher: one line otherwise."""
    teaches_text = condition_kind(teacher_config(config)) == "text"
    if teaches_text != text:
        why = "takes prompts; this run has no captions" if teaches_text else "takes no prompts; this run has captions"
        raise FMError(f"the teacher {config.teacher} {why}: distil it on the data it was trained on")


def text_decision(config: TrainConfig, data: ArrayDataset, text: dict) -> str:
    """ "a text model: captions from metadata.jsonl (8,000 of 8,000 images), the builtin text encoder ..." """
    found = data.info.get("captions") or {}
    count = f"{found.get('captioned', len(data)):,} of {found.get('total', len(data)):,} images"
    encoder, where = text["text"], text["cross_attention"]
    words = f", {len(encoder['vocabulary']):,} words" if "vocabulary" in encoder else ""
    cross = f"cross-attention at {', '.join(f'{r} px' for r in where)}" if where else "no cross-attention"
    return (f"a text model: captions from {found.get('source', 'the data set')} ({count}; --captions none ignores "
            f"them), the {encoder['name']} text encoder ({encoder.get('context')} tokens{words}), {cross}, caption "
            f"dropout {config.caption_dropout:g}")  # fmt: skip


def cross_attention(config: TrainConfig, data: ArrayDataset, device_type: str = "cpu") -> list[int]:
    """The resolutions given (--cross-attention; "none": pooled prompt only), else none on a CPU and the lowest
    resolution of the preset elsewhere."""
    if config.cross_attention is not None:
        given = [str(r) for r in config.cross_attention]
        return [] if given == ["none"] else [int(r) for r in given]
    if device_type == "cpu":
        return []
    from fmcli.models.presets import default_model_config

    preset = default_model_config(data.kind, data.shape, 0) | dict(config.model)
    levels = len(preset.get("channel_mults", [1]))
    return [int(data.shape[-1]) // 2 ** (levels - 1)]


def training_conditions(config: TrainConfig, data: ArrayDataset, num_classes: int, model) -> Conditions | None:
    """Each item's condition for the batches: its label, or its captions tokenized by the model's own encoder."""
    if getattr(model, "encoder", None) is not None:
        with torch.no_grad():
            return Conditions.of_captions(data.captions, model.tokenize, config.caption_dropout)
    if num_classes:
        return Conditions(data.labels, num_classes, config.label_dropout)
    return None
