"""What optimizer step k trains on: the data order, the noise, the times and the labels.

Everything random in step k is drawn from generators seeded by (seed, epoch) and (seed, k), so
resuming needs no saved RNG streams and continues bit for bit. Under torchrun every rank draws
the same GLOBAL batch (indices, t, noise, label dropout) and keeps its own slice, so N ranks at
B/N do the maths of one process at B.
"""

import torch
from torch import Tensor

from fmcli.data.base import to_model_space
from fmcli.flow.coupling import ot_pairing
from fmcli.flow.path import broadcast_time
from fmcli.training.config import TrainConfig
from fmcli.training.objectives import Batch, Objective


def step_seed(seed: int, step: int, salt: int) -> int:
    """One integer per (seed, step, purpose): the seed of a generator used only in that step."""
    return (seed * 1_000_003 + step) * 7 + salt


class BatchOrder:
    """Epoch permutations from (seed, epoch); the global batch of step k is a slice of one."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.batches_per_epoch = max(1, size // batch_size)
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> Tensor:
        epoch, position = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.size, generator=generator)
            self._epoch = epoch
        start = position * self.batch_size
        chunk = self._perm[start : start + self.batch_size]
        if len(chunk) < self.batch_size:  # data smaller than one batch: wrap around
            chunk = self._perm[torch.arange(start, start + self.batch_size) % self.size]
        return chunk


class BatchSampler:
    """Draws this rank's slice of the global batch of any step, from (seed, step) alone."""

    def __init__(
        self,
        inputs: Tensor,
        labels: Tensor | None,
        num_classes: int,
        kind: str,
        config: TrainConfig,
        objective: Objective,
        rank: int,
        world_size: int,
        device: torch.device,
    ):
        self.inputs, self.labels, self.num_classes, self.kind = inputs, labels, num_classes, kind
        self.config, self.objective = config, objective
        self.rank, self.world_size, self.device = rank, world_size, device
        self.order = BatchOrder(len(inputs), config.batch_size, config.seed)

    def draw(self, step: int) -> Batch:
        """This rank's slice of step ``step``'s global batch. Only the rows of that slice are read from the
        data (a memory-mapped image folder is never read whole), except with OT pairing, which pairs the
        whole batch. Random draws, in this order: t (and r), the noise, label dropout, flips."""
        config, device = self.config, self.device
        index = self.order.indices(step)
        batch = len(index)
        generator = torch.Generator(device=device).manual_seed(step_seed(config.seed, step, 1))
        times = self.objective.draw_times(batch, generator, device)
        t, r = times.t, times.r
        x1 = torch.randn((batch, *self.inputs.shape[1:]), generator=generator, device=device)
        labels = None
        if self.labels is not None:
            labels = self.labels[index.to(self.labels.device)].to(device)
            drop = torch.rand(batch, generator=generator, device=device) < config.label_dropout
            labels = labels.masked_fill(drop, self.num_classes)  # the null class: trains v(x, t) without a label
        flip = torch.rand(batch, generator=generator, device=device) < 0.5 if config.hflip else None
        share = batch // self.world_size
        mine = slice(self.rank * share, (self.rank + 1) * share)
        rows = slice(None) if config.coupling == "ot" else mine  # which rows of the batch this rank reads
        x0 = self.inputs[index[rows].to(self.inputs.device)]
        if x0.device != device:  # data kept in RAM or memory-mapped: copy just this batch
            x0 = x0.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x0.to(device)
        x0 = to_model_space(x0) if self.kind == "image" else x0.float()
        if flip is not None:  # a mirror image is as likely as the image itself (photos, not digits)
            x0 = torch.where(broadcast_time(flip[rows], x0), x0.flip(-1), x0)
        if config.coupling == "ot":
            x1 = x1[ot_pairing(x0, x1)]
            x0 = x0[mine]
        x1 = x1[mine]
        mine_of = lambda value: None if value is None else value[mine]  # noqa: E731
        return Batch(x0, x1, t[mine], mine_of(labels), mine_of(r), mine_of(times.pool))
