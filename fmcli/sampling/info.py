"""What a checkpoint holds, as one dictionary: ``fm info`` prints it, ``fm serve`` shows it, the API returns it.

Reads only the safetensors header, so it is instant on any size, and imports no torch. Tuned grids (fm tune)
and the tuned guidance (fm tune --guidance) are listed from the files beside the checkpoint (checked against
the checkpoint's content).
"""

import math
from pathlib import Path

from fmcli.io.header import read_header
from fmcli.models.condition import condition_kind
from fmcli.sampling.options import default_sampler
from fmcli.sampling.stored_guidance import listed_guidance
from fmcli.sampling.tuned import listed_grids


def condition_summary(model_config: dict) -> dict:
    """What the model takes as its condition: {"kind": "text", "encoder": ..., "context": L, "vocabulary": n} for a
    text model, {"kind": "class" | "none"} otherwise."""
    kind = condition_kind(model_config)
    if kind != "text":
        return {"kind": kind}
    text = model_config["text"]
    vocabulary = len(text["vocabulary"]) if "vocabulary" in text else None
    return {"kind": kind, "encoder": text.get("name"), "context": text.get("context"), "vocabulary": vocabulary,
            "cross_attention": model_config.get("cross_attention", [])}  # fmt: skip


def checkpoint_info(path: Path) -> dict:
    """Format, step, parameters, objective, guidance, teacher, default sampler, data, model and training config."""
    shapes, meta = read_header(path)
    trained = meta.train_config or {}
    solver, steps = default_sampler(meta)
    return {
        "path": str(path),
        "format_version": meta.format_version,
        "step": meta.step,
        "parameters": sum(math.prod(shape) for name, shape in shapes.items() if name.startswith("ema.")),
        "tensor_groups": sorted({name.split(".", 1)[0] for name in shapes}),
        "objective": trained.get("objective", "fm"),
        "training_guidance": trained.get("train_cfg", 1.0),
        "teacher": trained.get("teacher"),
        "default_sampling": {"solver": solver, "steps": steps},
        "condition": condition_summary(meta.model_config),
        "data": meta.data,
        "model_config": meta.model_config,
        "label_dropout": meta.label_dropout,
        "train_config": meta.train_config,
        "tuned_grids": listed_grids(path),
        "tuned_guidance": listed_guidance(path),
    }
