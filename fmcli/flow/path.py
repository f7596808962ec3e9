"""The straight probability path of flow matching, its target velocity, and the training-time draws.

Convention (t = 0 is data, t = 1 is noise; some libraries use the opposite):

    x_t = (1 - t) * x0 + t * x1,       x0 ~ data,   x1 ~ N(0, I)
    u_t = d x_t / dt = x1 - x0          (constant along each path)
    loss = E_{t, x0, x1} || v(x_t, t) - (x1 - x0) ||^2     (``fmcli.training.objectives``)

The minimiser of the loss is the marginal velocity v*(x, t) = E[x1 - x0 | x_t = x], whose
flow carries N(0, I) at t = 1 to the data distribution at t = 0. Sampling therefore
integrates dx/dt = v(x, t) *backwards*, from t = 1 to t = 0 (``fmcli.sampling.solvers``).
"""

import torch
from torch import Tensor


def broadcast_time(t: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample times [B] to [B, 1, ..., 1] so they scale every dimension of x."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """The point x_t = (1 - t) x0 + t x1 on the straight path, for per-sample t of shape [B]."""
    t = broadcast_time(t, x0)
    return (1 - t) * x0 + t * x1


def target_velocity(x0: Tensor, x1: Tensor) -> Tensor:
    """d x_t / dt = x1 - x0: the regression target."""
    return x1 - x0


def sample_time(
    batch_size: int,
    *,
    method: str = "uniform",
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Training times in (0, 1): ``uniform`` (the seed) or ``logit-normal`` (sigmoid of N(mean, std^2)).

    Logit-normal puts more weight on intermediate t, where the target is hardest to predict.
    """
    if method == "uniform":
        return torch.rand(batch_size, generator=generator, device=device)
    if method == "logit-normal":
        z = torch.randn(batch_size, generator=generator, device=device)
        return torch.sigmoid(mean + std * z)
    raise ValueError(f"unknown time sampling {method!r} (use 'uniform' or 'logit-normal')")


def predicted_data(xt: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """The model's current guess of the end point, x̂0 = x_t - t * v (exact on a straight path)."""
    return xt - broadcast_time(t.expand(xt.shape[0]) if t.dim() == 0 else t, xt) * v
