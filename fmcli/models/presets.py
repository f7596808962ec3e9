"""Default model configs per data shape, and a FLOP counter for sizing them.

PLACEHOLDER - filled in after measurement.
"""

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, x: Tensor, t: Tensor, y: Tensor | None = None) -> int:
    """Forward FLOPs of one call model(x, t, y) (a multiply-add counts as 2), as counted by PyTorch."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t, y) if y is not None else model(x, t)
    return int(counter.get_total_flops())
