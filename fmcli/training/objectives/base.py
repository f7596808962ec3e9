"""The interface every training objective implements, and the pieces they share."""

from dataclasses import dataclass

import torch
from torch import Tensor

from fmcli.flow.path import sample_time


@dataclass
class Batch:
    """One (micro-)batch of a training step: data, paired noise, times and labels, on the training device."""

    x0: Tensor  # data, model space
    x1: Tensor  # noise N(0, I), paired with x0
    t: Tensor  # [B] times in (0, 1)
    labels: Tensor | None  # [B] class indices, ``num_classes`` (the null class) where dropped
    r: Tensor | None = None  # [B] interval starts r <= t (objectives with ``interval``), else None
    pool: Tensor | None = None  # [B] rows an objective takes from its own pool (index), -1 elsewhere; None: none

    def __getitem__(self, part: slice) -> "Batch":
        """The micro-batch ``part`` (gradient accumulation)."""
        take = lambda value: None if value is None else value[part]  # noqa: E731
        return Batch(self.x0[part], self.x1[part], self.t[part], take(self.labels), take(self.r), take(self.pool))

    def select(self, rows: Tensor) -> "Batch":
        """The samples ``rows`` (a boolean mask or indices) of this batch."""
        take = lambda value: None if value is None else value[rows]  # noqa: E731
        return Batch(self.x0[rows], self.x1[rows], self.t[rows], take(self.labels), take(self.r), take(self.pool))

    @property
    def conditioning(self) -> dict:
        return {} if self.labels is None else {"y": self.labels}


@dataclass
class Times:
    """What an objective draws for a global batch before the noise: t, and r and pool rows if it uses them."""

    t: Tensor  # [B]
    r: Tensor | None = None  # [B] interval starts
    pool: Tensor | None = None  # [B] pool row per sample, -1 for samples from the data


@dataclass
class LossOutput:
    loss: Tensor  # what to backpropagate (weighted, as the objective defines it)
    logged: Tensor  # the plain mean squared error, detached: the "loss" of metrics.jsonl


@dataclass(frozen=True)
class TimeDistribution:
    """Training times t in (0, 1): ``uniform``, or ``logit-normal`` (sigmoid of N(mean, std^2))."""

    method: str = "uniform"
    mean: float = 0.0
    std: float = 1.0

    def sample(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Tensor:
        return sample_time(
            batch_size, method=self.method, mean=self.mean, std=self.std, generator=generator, device=device
        )


class Objective:
    """What a training step optimises. Subclasses set the flags and implement ``draw_times`` and ``__call__``."""

    name: str = ""
    interval: bool = False  # the network takes MeanFlow's interval input r (model config "interval": true)
    model_extras: dict = {}  # what the objective adds to the model config (the interval input and its scale)
    uses_ddp: bool = True  # the forward pass may run through DDP's wrapper (not so for torch.func.jvp)
    compiles: bool = True  # torch.compile may wrap the network
    # Its CPU gradients have the same bits at any thread count (tests/test_threads.py checks it on the built-in
    # presets), so the thread governor may change the count during training and resume stays exact.
    thread_invariant: bool = True

    def draw_times(
        self, batch_size: int, generator: torch.Generator, device: torch.device
    ) -> tuple[Tensor, Tensor | None]:
        """(t, r) for a global batch: t [B], and r [B] for interval objectives (None otherwise)."""
        raise NotImplementedError

    def __call__(self, net, batch: Batch) -> LossOutput:
        raise NotImplementedError
