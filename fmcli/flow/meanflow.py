"""MeanFlow (Geng et al. 2025): the average velocity over an interval, in fm's convention (t = 0 data, t = 1 noise).

For r <= t,

    u(x_t, r, t) = 1/(t - r) * integral_r^t v(x_s, s) ds     (along the ODE trajectory through x_t),

so one step x_r = x_t - (t - r) u(x_t, r, t) is exact and x0 = x1 - u(x1, 0, 1) samples in one step
(``fmcli.sampling.solvers.meanflow``). Differentiating (t - r) u = integral_r^t v in t gives the identity

    u = v - (t - r) du/dt,     du/dt = (du/dx) v + du/dt|_x     (total derivative along the flow),

whose right side, with v a velocity (x1 - x0, or a teacher's) and du/dt a Jacobian-vector product, is the
regression target of ``fmcli.training.objectives.MeanFlow``.
"""

import torch
from torch import Tensor

from fmcli.flow.path import broadcast_time, sample_time
from fmcli.models.forward_ad import detached_tangents

# The jumps the few-step sampler takes on its default uniform grids of 1, 2 and 4 steps: (t, r), t > r.
GRID_PAIRS = ((1.0, 0.0), (1.0, 0.5), (0.5, 0.0), (1.0, 0.75), (0.75, 0.5), (0.5, 0.25), (0.25, 0.0))


def sample_interval(
    batch_size: int,
    *,
    equal_fraction: float = 0.75,
    method: str = "logit-normal",
    mean: float = -0.4,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    interval_sampling: str = "pair",
    grid_fraction: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """MeanFlow's training intervals (r, t), r <= t, each [batch_size].

    ``interval_sampling``:
        pair    two times drawn by ``sample_time(method, mean, std)``; t is the larger, r the smaller (the paper's).
                Long intervals are rare: with logit-normal(-0.4, 1), t - r > 0.8 in about 1 draw of 1,000.
        length  t from ``sample_time``, then r uniform in [0, t]: the length t - r is uniform on [0, t], so long
                jumps (those the one- and two-step samplers take) are trained as often as short ones.
    A random share ``equal_fraction`` then gets r = t: plain flow matching, which teaches the instantaneous
    velocity u(x, t, t) = v(x, t). Of the rest, a share ``grid_fraction`` is placed exactly on the jumps of the
    sampler's default grids (``GRID_PAIRS``). Draws, in this order: the times, r = t, the grid placement (only when
    ``grid_fraction`` > 0), so the paper's setting draws what it always drew.
    """
    if not 0.0 <= equal_fraction <= 1.0:
        raise ValueError(f"equal_fraction must be in [0, 1], got {equal_fraction}")
    options = dict(method=method, mean=mean, std=std, generator=generator, device=device)
    if interval_sampling == "pair":
        a, b = sample_time(batch_size, **options), sample_time(batch_size, **options)
        t, r = torch.maximum(a, b), torch.minimum(a, b)
    elif interval_sampling == "length":
        t = sample_time(batch_size, **options)
        r = t * torch.rand(batch_size, generator=generator, device=device)
    else:
        raise ValueError(f"unknown interval sampling {interval_sampling!r} (use 'pair' or 'length')")
    equal = torch.rand(batch_size, generator=generator, device=device) < equal_fraction
    r = torch.where(equal, t, r)
    if grid_fraction > 0:
        on_grid = ~equal & (torch.rand(batch_size, generator=generator, device=device) < grid_fraction)
        pairs = torch.tensor(GRID_PAIRS, device=device, dtype=t.dtype)
        chosen = pairs[torch.randint(len(GRID_PAIRS), (batch_size,), generator=generator, device=device)]
        t, r = torch.where(on_grid, chosen[:, 0], t), torch.where(on_grid, chosen[:, 1], r)
    return r, t


def meanflow_target(u_fn, x_t: Tensor, r: Tensor, t: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """u = u_fn(x_t, r, t) and the MeanFlow target stopgrad(v - (t - r) du/dt).

    du/dt = (du/dx) v + 0 * du/dr + 1 * du/dt is the derivative along the flow (x moves with velocity v,
    r stays, t advances): one forward-mode pass, ``torch.func.jvp`` with tangent (v, 0, 1), whose primal
    output is u itself, so the network runs once. u keeps its graph to the parameters (backpropagate
    the loss through it); the target is detached, so the U-Net's layers need not record their tangents
    for backward (``detached_tangents``: less memory). r, t: [B] (or 0-dim); v has x_t's shape.

    The condition (class indices, or a prompt's token ids) is closed over by ``u_fn``, not a jvp input: what a
    text encoder makes of it (pooled prompt, cross-attention keys) depends on neither x nor t, so it carries no
    tangent and runs as in a plain forward pass (its weights still get gradients through u).
    """
    tangents = (v.to(x_t.dtype), torch.zeros_like(r), torch.ones_like(t))
    with detached_tangents():
        u, du_dt = torch.func.jvp(u_fn, (x_t, r, t), tangents)
    target = v - broadcast_time(t - r, x_t) * du_dt
    return u, target.detach()
