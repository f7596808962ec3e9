"""The flow-matching objective: straight paths from data to noise, and their training loss.

Convention (t = 0 is data, t = 1 is noise; some libraries use the opposite):

    x_t = (1 - t) * x0 + t * x1,       x0 ~ data,   x1 ~ N(0, I)
    u_t = d x_t / dt = x1 - x0          (constant along each path)
    loss = E_{t, x0, x1} || v(x_t, t) - (x1 - x0) ||^2

The minimiser of the loss is the marginal velocity v*(x, t) = E[x1 - x0 | x_t = x], whose
flow carries N(0, I) at t = 1 to the data distribution at t = 0. Sampling therefore
integrates dx/dt = v(x, t) *backwards*, from t = 1 to t = 0 (see ``fmcli.solvers``).

MeanFlow (Geng et al. 2025, same convention) learns instead the average velocity over [r, t], r <= t,

    u(x_t, r, t) = 1/(t - r) * integral_r^t v(x_s, s) ds     (along the ODE trajectory through x_t),

so that one step x_r = x_t - (t - r) u(x_t, r, t) is exact and x0 = x1 - u(x1, 0, 1) samples in one
step (``fmcli.solvers.meanflow``). Differentiating (t - r) u = integral_r^t v in t gives the identity

    u = v - (t - r) du/dt,     du/dt = (du/dx) v + du/dt|_x     (total derivative along the flow),

whose right side, with v = x1 - x0 and du/dt a Jacobian-vector product, is the regression target.
"""

import torch
from torch import Tensor

from fmcli.models.forward_ad import detached_tangents


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


def flow_matching_loss(model, x0: Tensor, x1: Tensor, t: Tensor, **conditioning) -> Tensor:
    """Mean squared error between v(x_t, t, **conditioning) and the target x1 - x0."""
    xt = interpolate(x0, x1, t)
    v = model(xt, t, **conditioning)
    return (v.float() - target_velocity(x0, x1).float()).pow(2).mean()


def sample_interval(
    batch_size: int,
    *,
    equal_fraction: float = 0.75,
    method: str = "logit-normal",
    mean: float = -0.4,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """MeanFlow's training intervals (r, t), r <= t, each [batch_size].

    Two times are drawn by ``sample_time(method, mean, std)``; t is the larger, r the smaller. A random
    share ``equal_fraction`` of the samples then gets r = t: plain flow matching, which teaches the
    instantaneous velocity u(x, t, t) = v(x, t). Defaults: the paper's ImageNet setting (75% r = t,
    logit-normal(-0.4, 1)); they are for measurement to settle here.
    """
    if not 0.0 <= equal_fraction <= 1.0:
        raise ValueError(f"equal_fraction must be in [0, 1], got {equal_fraction}")
    options = dict(method=method, mean=mean, std=std, generator=generator, device=device)
    a, b = sample_time(batch_size, **options), sample_time(batch_size, **options)
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    equal = torch.rand(batch_size, generator=generator, device=device) < equal_fraction
    return torch.where(equal, t, r), t


def meanflow_target(u_fn, x_t: Tensor, r: Tensor, t: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """u = u_fn(x_t, r, t) and the MeanFlow target stopgrad(v - (t - r) du/dt).

    du/dt = (du/dx) v + 0 * du/dr + 1 * du/dt is the derivative along the flow (x moves with velocity v,
    r stays, t advances): one forward-mode pass, ``torch.func.jvp`` with tangent (v, 0, 1), whose primal
    output is u itself, so the network runs once. u keeps its graph to the parameters (backpropagate
    the loss through it); the target is detached, so the U-Net's layers need not record their tangents
    for backward (``detached_tangents``: less memory). r, t: [B] (or 0-dim); v has x_t's shape.
    """
    tangents = (v.to(x_t.dtype), torch.zeros_like(r), torch.ones_like(t))
    with detached_tangents():
        u, du_dt = torch.func.jvp(u_fn, (x_t, r, t), tangents)
    target = v - broadcast_time(t - r, x_t) * du_dt
    return u, target.detach()


def meanflow_loss(
    model,
    x0: Tensor,
    x1: Tensor,
    r: Tensor,
    t: Tensor,
    *,
    weighting_power: float = 1.0,
    eps: float = 1e-3,
    velocity: Tensor | None = None,
    **conditioning,
) -> tuple[Tensor, Tensor]:
    """MeanFlow's loss and, for logging, its unweighted mean squared error (detached): (loss, mse).

    r, t: [B]. The model is called as model(x_t, t, r=r, **conditioning) (an interval model). With
    Delta = u(x_t, r, t) - stopgrad(v - (t - r) du/dt) and the per-sample L = ||Delta||^2 (summed over
    the data dimensions), the loss is the batch mean of stopgrad(w) L with the adaptive weight
    w = 1 / (L + eps)^weighting_power (power 1 gives the gradient of log(L + eps); 0 the plain L2).
    v = x1 - x0, the conditional velocity: the target is linear in v, so its mean given x_t is the target
    built from the marginal v* (for which the identity holds), as in flow matching. Or ``velocity``: a
    teacher's v_T(x_t, t), which distills a trained flow into an average-velocity model.

    Samples with r = t have the target v itself ((t - r) du/dt = 0): they get a plain forward pass, and
    only the others go through the jvp (most of the batch at MeanFlow's usual 75% r = t). The model
    therefore sees the batch in two parts, which changes nothing for models whose samples do not
    interact (no batch norm); per-sample conditioning tensors (first dimension = batch) are split with it.
    """
    xt = interpolate(x0, x1, t)
    v = target_velocity(x0, x1) if velocity is None else velocity.detach().to(xt.dtype)
    equal = r == t
    plain, jvp = equal.nonzero().squeeze(1), (~equal).nonzero().squeeze(1)
    errors = []
    if plain.numel():
        u = model(xt[plain], t[plain], r=r[plain], **_take(conditioning, plain, len(t)))
        errors.append(u.float() - v[plain].float())
    if jvp.numel():
        cond = _take(conditioning, jvp, len(t))
        u, target = meanflow_target(lambda x, r, t: model(x, t, r=r, **cond), xt[jvp], r[jvp], t[jvp], v[jvp])
        errors.append(u.float() - target.float())
    error = torch.cat([e.flatten(1) for e in errors])
    per_sample = error.pow(2).sum(1)
    weight = (per_sample.detach() + eps).pow(-weighting_power)
    return (weight * per_sample).mean(), error.detach().pow(2).mean()


def _take(conditioning: dict, index: Tensor, batch_size: int) -> dict:
    """The conditioning of the samples ``index``: per-sample tensors (first dimension = batch) are indexed."""
    return {
        key: value[index] if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch_size else value
        for key, value in conditioning.items()
    }


def predicted_data(xt: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """The model's current guess of the end point, x̂0 = x_t - t * v (exact on a straight path)."""
    return xt - broadcast_time(t.expand(xt.shape[0]) if t.dim() == 0 else t, xt) * v


def ot_pairing(x0: Tensor, x1: Tensor) -> Tensor:
    """Minibatch optimal transport: the permutation of x1 minimising sum_i ||x0_i - x1_perm(i)||^2.

    Pairing each data point with nearby noise makes the paths cross less, so the learned flow
    is straighter (fewer solver steps for the same error). Exact, by the Hungarian algorithm.
    """
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x0.flatten(1).float(), x1.flatten(1).float()).pow(2).cpu().numpy()
    _, columns = linear_sum_assignment(cost)
    return torch.as_tensor(columns, device=x1.device)
