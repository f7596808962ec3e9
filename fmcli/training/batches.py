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
from fmcli.models.condition import drop_rows
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


class Conditions:
    """What each item is conditioned on in training: its class, or one of its captions' token ids drawn anew
    every time it is seen (``table`` holds every caption's ids; item i's are rows starts[i] .. starts[i] +
    counts[i] - 1; an item without any trains the empty prompt). ``dropout``: the share of rows trained as the
    null condition (the null class, the empty prompt), which is what classifier-free guidance needs."""

    def __init__(self, table: Tensor, null: int, dropout: float, starts: Tensor | None = None, counts=None):
        self.table, self.null, self.dropout, self.starts, self.counts = table, null, dropout, starts, counts

    @classmethod
    def of_captions(cls, captions: list[tuple[str, ...]], tokenize, dropout: float) -> "Conditions":
        counts = torch.tensor([len(c) for c in captions], dtype=torch.long)
        starts = torch.cumsum(counts, 0) - counts
        flat = [caption for item in captions for caption in item]
        table = tokenize(flat or [""])
        return cls(torch.as_tensor(table, dtype=torch.long), 0, dropout, starts, counts)

    @property
    def captioned(self) -> bool:
        return self.starts is not None

    def rows(self, index: Tensor, generator: torch.Generator, device: torch.device) -> Tensor:
        """The conditions of items ``index`` on ``device`` (captions: one drawn per item, from ``generator``)."""
        if self.starts is None:
            return self.table[index.to(self.table.device)].to(device)
        index = index.cpu()
        counts = self.counts[index]
        pick = torch.rand(len(index), generator=generator, device=device).cpu()
        offset = torch.minimum((pick * counts).long(), (counts - 1).clamp(min=0))
        ids = self.table[(self.starts[index] + offset).clamp(max=len(self.table) - 1)]  # uncaptioned: masked below
        return ids.masked_fill((counts == 0)[:, None], self.null).to(device)


class BatchSampler:
    """Draws this rank's slice of the global batch of any step, from (seed, step) alone."""

    def __init__(
        self,
        inputs: Tensor,
        conditions: Conditions | None,
        kind: str,
        config: TrainConfig,
        objective: Objective,
        rank: int,
        world_size: int,
        device: torch.device,
        mirrored: Tensor | None = None,
    ):
        self.inputs, self.conditions, self.kind, self.mirrored = inputs, conditions, kind, mirrored
        self.config, self.objective = config, objective
        self.rank, self.world_size, self.device = rank, world_size, device
        self.order = BatchOrder(len(inputs), config.batch_size, config.seed)

    def draw(self, step: int) -> Batch:
        """This rank's slice of step ``step``'s global batch. Only the rows of that slice are read from the
        data (a memory-mapped image folder is never read whole), except with OT pairing, which pairs the
        whole batch. Random draws, in this order: t (and r), the noise, label dropout, flips, caption choice."""
        config, device = self.config, self.device
        index = self.order.indices(step)
        batch = len(index)
        generator = torch.Generator(device=device).manual_seed(step_seed(config.seed, step, 1))
        times = self.objective.draw_times(batch, generator, device)
        t, r = times.t, times.r
        x1 = torch.randn((batch, *self.inputs.shape[1:]), generator=generator, device=device)
        labels, conditions = None, self.conditions
        if conditions is not None:
            drop = torch.rand(batch, generator=generator, device=device) < conditions.dropout
        flip = torch.rand(batch, generator=generator, device=device) < 0.5 if config.hflip else None
        if conditions is not None:  # the null condition: trains v(x, t) without a label or caption
            labels = drop_rows(conditions.rows(index, generator, device), drop, conditions.null)
        share = batch // self.world_size
        mine = slice(self.rank * share, (self.rank + 1) * share)
        rows = slice(None) if config.coupling == "ot" else mine  # which rows of the batch this rank reads
        x0 = self.read(self.inputs, index[rows])
        if flip is not None:  # a mirror image is as likely as the image itself (photos, not digits)
            # a latent's mirror image is another latent (encoded beside it), not the latent flipped
            mirror = x0.flip(-1) if self.mirrored is None else self.read(self.mirrored, index[rows])
            x0 = torch.where(broadcast_time(flip[rows], x0), mirror, x0)
        if config.coupling == "ot":
            x1 = x1[ot_pairing(x0, x1)]
            x0 = x0[mine]
        x1 = x1[mine]
        mine_of = lambda value: None if value is None else value[mine]  # noqa: E731
        return Batch(x0, x1, t[mine], mine_of(labels), mine_of(r), mine_of(times.pool))

    def read(self, source: Tensor, index: Tensor) -> Tensor:
        """Rows ``index`` of ``source`` on the device, as model-space floats (uint8 images normalised to [-1, 1])."""
        rows = source[index.to(source.device)]
        if rows.device != self.device:  # data kept in RAM or memory-mapped: copy just this batch
            cuda = self.device.type == "cuda"
            rows = rows.pin_memory().to(self.device, non_blocking=True) if cuda else rows.to(self.device)
        return to_model_space(rows) if self.kind == "image" else rows.float()
