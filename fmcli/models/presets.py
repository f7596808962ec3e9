"""Default model configs per data shape, and a FLOP counter for sizing them.

The 28x28 default is sized for the headline: ``fm train mnist-mini`` on 2 CPU cores in at most
5 minutes. On a CPU a training run is bought with CPU-seconds, so the default is the config
with the lowest held-out flow-matching loss after a fixed CPU time, among those measured
(see the comment on ``_MNIST_CPU``). On CUDA wider models
cost little wall time, so ``device_type="cuda"`` gets roughly 4-8x the FLOPs.
"""

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from fmcli.errors import FMError

# 28x28 on CPU, chosen by measurement (1 thread, batch 64, AdamW 1e-3, real MNIST, held-out FM loss
# after equal CPU time). Loss after 160 CPU-s (images per CPU-second): base 24 [1, 2, 2] 0.214 (69),
# base 16 [1, 2, 4] 0.221 (90), base 32 [1, 2, 2] 0.231 (51). 0.67 M parameters, 215 MFLOP/image.
_MNIST_CPU = {"base_channels": 24, "channel_mults": [1, 2, 2], "num_res_blocks": 1, "attention_resolutions": [7]}
_MNIST_CUDA = {"base_channels": 64, "channel_mults": [1, 2, 2], "num_res_blocks": 2, "attention_resolutions": [14, 7]}


def default_model_config(kind: str, shape: tuple, num_classes: int, device_type: str = "cpu") -> dict:
    """The config ``fm train`` uses when the user names no model: a U-Net for images, the MLP for points.

    kind: "image" (shape (C, H, W), H = W) or "points" (shape (D,)); num_classes: 0 = unconditional.
    """
    if kind == "points":
        (dim,) = shape
        return {"name": "mlp", "dim": int(dim), "hidden": 256, "depth": 4, "num_classes": int(num_classes)}
    if kind != "image":
        raise FMError(f"no default model for data of kind {kind!r} (expected 'image' or 'points')")
    channels, height, width = (int(s) for s in shape)
    if height != width:
        raise FMError(f"the U-Net needs square images, got {height}x{width}; resize with --image-size")
    cuda = device_type == "cuda"
    if height == 28:
        arch = dict(_MNIST_CUDA if cuda else _MNIST_CPU)
    else:
        arch = _generic_image_arch(height, cuda)
    return {
        "name": "unet",
        "in_channels": channels,
        "image_size": height,
        **arch,
        "num_classes": int(num_classes),
        "dropout": 0.0,
        "num_groups": 32,
    }


def _generic_image_arch(size: int, cuda: bool) -> dict:
    """4 levels from 32x32 up, else 3 (fewer when the size has too few factors of 2);
    attention at <= 16x16 (CPU: ~8x8 only)."""
    levels = 4 if size >= 32 else 3
    while levels > 1 and size % 2 ** (levels - 1):
        levels -= 1
    mults = [1, 2, 2, 2][:levels] if size <= 32 else [1, 2, 3, 4][:levels]
    resolutions = [size // 2**i for i in range(levels)]
    if cuda:
        attention = [r for r in resolutions if 8 <= r <= 16] or [resolutions[-1]]
        return {"base_channels": 64, "channel_mults": mults, "num_res_blocks": 2, "attention_resolutions": attention}
    # CPU: one attention level, as in the 28x28 default (7x7): around 8x8, else the lowest if small.
    attention = [r for r in resolutions if 7 <= r <= 8] or ([resolutions[-1]] if resolutions[-1] <= 16 else [])
    return {"base_channels": 32, "channel_mults": mults, "num_res_blocks": 1, "attention_resolutions": attention}


def count_flops(model: nn.Module, x: Tensor, t: Tensor, y: Tensor | None = None) -> int:
    """Forward FLOPs of one call model(x, t, y) (a multiply-add counts as 2), as counted by PyTorch.

    Counts matrix products, convolutions and attention; element-wise work (norms, SiLU) is not
    included, although on a CPU it costs a fair share of the time at high resolution.
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t, y) if y is not None else model(x, t)
    return int(counter.get_total_flops())
