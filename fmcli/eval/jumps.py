"""``fm eval --jumps``: how far an interval (MeanFlow) model's jumps land from the flow they stand for.

The same diagnostic ``fm distill`` logs while it trains (``fmcli.sampling.jumps``), for any interval checkpoint:
for held-out noise at t = 1 (noise end; t = 0 is data), the RMSE of the model's one jump to r in
{0.9, 0.75, 0.5, 0.25, 0} and of its 2- and 4-step grids against an accurate (dopri5) solve of the reference
flow, beside a single Euler step of that flow over the same interval: what an untrained interval branch gives.

The reference flow is the teacher's velocity, guided as the student learnt it (its folded ``train_cfg``), when
the checkpoint was distilled and its teacher can still be read; otherwise the model's own instantaneous
velocity u(x, t, t) = v(x, t), guided the same way.
"""

from pathlib import Path

import torch

from fmcli.errors import FMError
from fmcli.io.checkpoint import LoadedModel, load_checkpoint
from fmcli.sampling.guidance import balanced_classes, guided_velocity
from fmcli.sampling.jumps import jump_errors, jump_reference

JUMP_SEED = 2024  # its own noise, apart from fm eval's sampling seeds and the training diagnostics' draws


def evaluate_jumps(loaded: LoadedModel, num: int = 256, device: str | torch.device = "cpu") -> dict:
    """An interval model's jump errors (``jump_R``, ``euler_R``, ``grid_K``) and what they were measured against."""
    meta = loaded.meta
    if not meta.model_config.get("interval"):
        raise FMError("--jumps measures an interval (MeanFlow) model's jumps; this checkpoint is a flow model")
    if num < 1:
        raise FMError(f"--jumps needs at least one noise draw (got {num})")
    trained = meta.train_config or {}
    scale = float(trained.get("train_cfg") or 1.0)  # the guidance the student's jumps have folded in
    num_classes = meta.num_classes
    noise = torch.randn((num, *meta.shape), generator=torch.Generator().manual_seed(JUMP_SEED)).to(device)
    labels = balanced_classes(num, num_classes).to(device) if num_classes else None
    average = guided_velocity(loaded.model, 1.0, num_classes)  # the student samples at cfg 1
    teacher_path = trained.get("teacher")
    if teacher_path and Path(teacher_path).exists():
        teacher = load_checkpoint(Path(teacher_path), device=device)
        reference_velocity, against = guided_velocity(teacher.model, scale, num_classes), f"teacher {teacher_path}"
    else:
        reference_velocity, against = average, "the model's own velocity u(x, t, t)"
    reference = jump_reference(reference_velocity, noise, labels)
    return {
        "errors": jump_errors(average, reference),
        "reference": against,
        "guidance": scale,
        "num_samples": num,
        "reference_nfe": reference.nfe,
    }
