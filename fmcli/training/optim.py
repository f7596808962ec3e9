"""Optimisation pieces of training: AdamW, the learning-rate schedule and the EMA of the weights.

Everything measured in steps scales with the run's planned length, however the length was given (``--steps``,
``--epochs`` or ``--max-time``): the warm-up is ``WARMUP_SHARE`` of the planned steps, capped at
``WARMUP_CAP`` (fm 0.1's fixed value), so a 300-step run warms up for 30 steps, not 200; the EMA's own warm-up,
min(decay, (1 + step) / (10 + step)), averages over about the last tenth of the steps taken until the decay
is reached, at any length. ``planned_schedule`` fixes the warm-up once the length is known and records why.
"""

import math
from dataclasses import replace

import torch
from torch import nn

from fmcli.runtime.threads import invariant_sum
from fmcli.training.config import TrainConfig


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for all parameters) where this torch and device support it."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError):  # e.g. a device without a fused kernel
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def lr_at(step: int, config: TrainConfig, total_steps: int) -> float:
    """Linear warm-up to --lr over --warmup-steps, then cosine decay to 0 at ``total_steps`` (or constant)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def ema_decay_at(step: int, decay: float) -> float:
    """min(decay, (1 + step) / (10 + step)): a warm-up so early averages are not dominated by the random init."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * weights; buffers are copied."""
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


@torch.no_grad()
def clip_gradients(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale the gradients to a total norm of at most ``max_norm``; returns the norm before clipping.

    On the CPU the norm is summed so that its bits do not depend on the thread count (``invariant_sum``):
    the thread governor may change the count between steps, and resume must stay exact. Elsewhere torch's own.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads or grads[0].device.type != "cpu":
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    total = invariant_sum(torch.cat([g.detach().reshape(-1).float() for g in grads]).square()).sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, scale)
    return total


WARMUP_SHARE = 0.1  # of the planned steps
WARMUP_CAP = 200


def planned_schedule(config: TrainConfig, total_steps: int) -> TrainConfig:
    """``config`` with its warm-up fixed for a run of ``total_steps`` (unless the user gave one), and why."""
    if config.warmup_steps is not None:
        return config
    warmup = max(1, min(WARMUP_CAP, round(WARMUP_SHARE * total_steps)))
    why = f"{WARMUP_SHARE:.0%} of the {total_steps:,} planned steps, at most {WARMUP_CAP}"
    return replace(config, warmup_steps=warmup, decisions=config.decisions | {"warmup_steps": why})
