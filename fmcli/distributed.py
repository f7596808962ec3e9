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


def all_sum(info: DistInfo, values: torch.Tensor) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(values)
    return values


def all_max(info: DistInfo, value: torch.Tensor) -> torch.Tensor:
    """The largest value over ranks (a stop request seen by any rank stops all of them)."""
    if info.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value
