"""Default model configs per data shape and device, and a FLOP counter for sizing them.

On a CPU a training run is bought with CPU-seconds: the 28x28 and 32x32 defaults are the configs
with the best sample quality (FID and conditional accuracy without guidance) after the same wall
time on 2 cores, among those measured by ``bench/demo_search.py`` (docs/measured/demo-model.md).
64, 128 and 256 px get U-Nets that train on a CPU at all (attention only at 8x8).

On CUDA wider models cost little wall time: the presets follow published image U-Nets at those
sizes (DDPM's CIFAR-10 and LSUN networks, ADM's 64 and 128 px ones), trimmed to 2 residual blocks
per level: channel multipliers per resolution, self-attention at 16x16 and 8x8.
"""

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from fmcli.errors import FMError

# Image size -> architecture, per device type. See bench/demo_search.py for the CPU 28 and 32 px choices.
CPU_PRESETS = {
    # Chosen by bench/demo_search.py (FID and accuracy after equal wall time on 2 cores), not by loss.
    28: {"base_channels": 16, "channel_mults": [1, 2, 4], "num_res_blocks": 1, "attention_resolutions": [7]},
    # 16 channels at the top: 2.4x the images per second of 32 channels, and the better samples after 10 minutes.
    32: {"base_channels": 16, "channel_mults": [1, 2, 2, 2], "num_res_blocks": 1, "attention_resolutions": [8]},
    # 64 px: the 32 px choice carried over (not searched at 64; docs/measured/64px.md measures it).
    64: {"base_channels": 16, "channel_mults": [1, 2, 2, 2], "num_res_blocks": 1, "attention_resolutions": [8]},
    128: {"base_channels": 32, "channel_mults": [1, 1, 2, 2, 4], "num_res_blocks": 1, "attention_resolutions": [8]},
    256: {"base_channels": 32, "channel_mults": [1, 1, 2, 2, 4, 4], "num_res_blocks": 1, "attention_resolutions": [8]},
}
CUDA_PRESETS = {
    28: {"base_channels": 64, "channel_mults": [1, 2, 2], "num_res_blocks": 2, "attention_resolutions": [14, 7]},
    # DDPM CIFAR-10: 128 channels, (1, 2, 2, 2), attention at 16x16.
    32: {"base_channels": 128, "channel_mults": [1, 2, 2, 2], "num_res_blocks": 2, "attention_resolutions": [16]},
    # ADM 64x64: (1, 2, 3, 4), attention at 16 and 8 (ADM also at 32; ADM's 192 channels trimmed to 128).
    64: {"base_channels": 128, "channel_mults": [1, 2, 3, 4], "num_res_blocks": 2, "attention_resolutions": [16, 8]},
    # ADM 128x128: (1, 1, 2, 3, 4), attention at 16 and 8.
    128: {
        "base_channels": 128,
        "channel_mults": [1, 1, 2, 3, 4],
        "num_res_blocks": 2,
        "attention_resolutions": [16, 8],
    },  # fmt: skip
    # DDPM LSUN 256x256: 128 channels, (1, 1, 2, 2, 4, 4), attention at 16x16.
    256: {
        "base_channels": 128,
        "channel_mults": [1, 1, 2, 2, 4, 4],
        "num_res_blocks": 2,
        "attention_resolutions": [16],
    },  # fmt: skip
}


def default_model_config(kind: str, shape: tuple, num_classes: int, device_type: str = "cpu") -> dict:
    """The config ``fm train`` uses when the user names no model: a U-Net for images, the MLP for points.

    kind: "image" (shape (C, H, W), H = W), "latent" (an autoencoder's latents (c, h, w): the preset of an image
    of that size, with c channels) or "points" (shape (D,)); num_classes: 0 = unconditional.
    """
    if kind == "points":
        (dim,) = shape
        return {"name": "mlp", "dim": int(dim), "hidden": 256, "depth": 4, "num_classes": int(num_classes)}
    if kind not in ("image", "latent"):
        raise FMError(f"no default model for data of kind {kind!r} (expected 'image', 'latent' or 'points')")
    channels, height, width = (int(s) for s in shape)
    if height != width:
        raise FMError(f"the U-Net needs square images, got {height}x{width}; resize with --image-size")
    cuda = device_type == "cuda"
    presets = CUDA_PRESETS if cuda else CPU_PRESETS
    arch = dict(presets[height]) if height in presets else _generic_image_arch(height, cuda)
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
