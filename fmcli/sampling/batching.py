"""How many samples one solver call takes when the user gives no ``--batch-size``: chosen from the model, the
image size, the guidance and the memory this process may use.

The estimate of one sample's memory is the sum of the outputs of every layer of one forward pass (one sample,
forward hooks): an upper bound of what the pass keeps alive at once, since inference frees most outputs as it
goes. Measured on 2 cores (``bench/sampling_batch.py CKPT``): the peak RSS a sample adds is 0.25-0.5x this sum
(a 128 px model: 72 MB estimated, 17-36 MB measured).

On a CPU bigger batches stop paying long before memory runs out: the activations fall out of the caches.
Measured there (the same script; euler, 2 threads): the default MNIST model (2.5 MB a sample) is fastest at
50-250 samples a call (439 image-evaluations/s at 50, 400 at 500, 350 at 1,000); the 128 px preset (72 MB) at
8-16 (16.0/s at 16, 11.1/s at 64). Both are near their best when a call holds about 1 GiB of estimated
activations, so that is the CPU's budget per call, lowered to a quarter of the free memory (cgroup limits
included) when that is less.
On a GPU (not yet measured here) the budget is half its free memory; at most ``MAX_BATCH`` samples a call.
"""

import weakref

import torch
from torch import nn

from fmcli.runtime.machine import memory_free

MAX_BATCH = 500  # samples per call at most (fm 0.2's fixed default)
CPU_CALL_BUDGET = 1 << 30  # bytes of estimated activations per call on a CPU
_ESTIMATES: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()  # model -> bytes per sample


@torch.inference_mode()
def bytes_per_sample(model: nn.Module, shape: tuple[int, ...], null_class: int = 0) -> int:
    """Sum of every layer's output bytes in one forward pass of one sample (cached per model): an unconditional
    evaluation (the null class ``null_class`` of a class-conditional model), as guidance makes them."""
    if model not in _ESTIMATES:
        total = 0

        def add(_module, _inputs, output) -> None:
            nonlocal total
            for tensor in output if isinstance(output, (tuple, list)) else (output,):
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()

        leaves = [module for module in model.modules() if next(module.children(), None) is None]
        handles = [module.register_forward_hook(add) for module in leaves]
        try:
            device = next(model.parameters()).device
            labels = torch.full((1,), null_class, device=device) if null_class else None
            model(torch.zeros((1, *shape), device=device), torch.full((1,), 0.5, device=device), labels)
        finally:
            for handle in handles:
                handle.remove()
        _ESTIMATES[model] = max(total, 4 * int(torch.Size(shape).numel()))
    return _ESTIMATES[model]


def free_bytes(device: torch.device) -> int | None:
    """Memory this process may still use on ``device`` (None: unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return memory_free()


def sampling_batch(
    model: nn.Module, shape: tuple[int, ...], device: torch.device, passes: int, null_class: int = 0
) -> int:
    """Samples per solver call: ``passes`` model evaluations of each sample share one call (2 with guidance)."""
    per_sample = bytes_per_sample(model, shape, null_class) * passes
    free = free_bytes(device)
    if device.type == "cuda":
        budget = (free or 0) // 2
    else:
        budget = CPU_CALL_BUDGET if free is None else min(CPU_CALL_BUDGET, free // 4)
    return max(1, min(MAX_BATCH, budget // per_sample))
