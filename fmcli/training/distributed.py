"""torch.distributed set-up for runs started by torchrun (never a launcher of our own).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; with WORLD_SIZE > 1 we join the process group
(NCCL on CUDA, gloo on the CPU). Every rank computes the same global batch indices and
noise, and takes its own slice, so N ranks at batch B/N do the maths of one rank at batch B.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> DistInfo:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_status(info: DistInfo, status: torch.Tensor) -> tuple[float, float, int]:
    """[loss, grad norm, stop signal] of this rank -> (mean loss, mean grad norm, largest signal) over all ranks.

    The one host sync of a training step: every rank learns the same loss (to decide on a
    non-finite step together) and whether any rank was asked to stop.
    """
    if info.enabled:
        sums, signal = status[:2].clone(), status[2:].clone()
        dist.all_reduce(sums)
        dist.all_reduce(signal, op=dist.ReduceOp.MAX)
        status = torch.cat([sums / info.world_size, signal])
    loss, grad_norm, signum = status.cpu().tolist()
    return loss, grad_norm, int(signum)


def all_max(info: DistInfo, value: float, device: torch.device) -> float:
    """The largest ``value`` over ranks (every rank must call it; NCCL needs ``device`` to be the GPU)."""
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor[0])


def average_gradients(info: DistInfo, parameters) -> None:
    """Replace every gradient by its mean over the ranks (what DDP does), in one all-reduce.

    For training steps that cannot run through DDP's wrapper (MeanFlow's torch.func.jvp). A
    parameter without a gradient on this rank counts as a zero gradient.
    """
    params = list(parameters)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()
