"""Exact log-likelihoods of a flow through the instantaneous change of variables.

Convention: t = 0 is data, t = 1 is noise, and the flow follows dx/dt = v(x, t). Along a
trajectory the density obeys d log p_t(x_t) / dt = -div v(x_t, t), so integrating from the
data point x0 (t = 0) to its noise image x1 (t = 1):

    log p1(x1) - log p0(x0) = -int_0^1 div v(x_t, t) dt
    =>  log p0(x0) = log N(x1; 0, I) + int_0^1 div v(x_t, t) dt.

Both the state and the integral are carried by one ODE on the augmented state [x, l] with
dl/dt = div v and l(0) = 0, solved by any registered solver from t = 0 to t = 1.

The divergence is exact (one backward pass per dimension) for small dimensions, or
Hutchinson's unbiased estimate eps^T (dv/dx) eps with a Rademacher probe eps, held fixed
along the trajectory (FFJORD); several probes give the estimator's spread.

Images: uniform dequantisation. 8-bit values k become w = k + u, u ~ U[0, 1)^D, a continuous
variable on [0, 256)^D, mapped to model space by x = w * 2/256 - 1. Since dx/dw = 2/256 per
dimension, log p_w(w) = log p_x(x) + D log(2/256), and the bits per dimension are

    bpd = -log2 p_w(w) / D = (-log p_x(x) - D log(2/256)) / (D ln 2),

an upper bound on the discrete model's code length (Theis et al. 2016).
"""

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fmcli.errors import FMError
from fmcli.sampling.guidance import guided_velocity
from fmcli.sampling.solvers import get_solver
from fmcli.sampling.solvers.base import Integration

EXACT_DIVERGENCE_MAX_DIM = 16
LIKELIHOOD = Integration(t_start=0.0, t_end=1.0, steps=20)  # dopri5 ignores the steps; 1e-5 tolerances


@dataclass(frozen=True)
class NLLOptions:
    """``fm eval --nll``: how many test items, and how to solve the likelihood ODE (data t = 0 -> noise t = 1):
    the solver and the same ``Integration`` spec every solve takes."""

    samples: int = 500
    solver: str = "dopri5"
    integration: Integration = LIKELIHOOD
    probes: int = 1  # Hutchinson probes per item (images); the spread is reported
    batch_size: int = 100

    def __post_init__(self) -> None:
        get_solver(self.solver)
        if min(self.samples, self.probes, self.batch_size) < 1:
            raise FMError("--nll-samples and --probes must be at least 1")
        if (self.integration.t_start, self.integration.t_end) != (0.0, 1.0):
            raise FMError("the likelihood integrates from data (t = 0) to noise (t = 1)")

    @classmethod
    def from_sampling(cls, sampling, *, samples: int, solver: str, steps: int, probes: int) -> "NLLOptions":
        """The likelihood solve with the sampling options' time grid and tolerances, from t = 0 to t = 1."""
        integration = sampling.integration().with_(t_start=0.0, t_end=1.0, steps=steps)
        return cls(samples=samples, solver=solver, integration=integration, probes=probes)


def standard_normal_log_prob(x: Tensor) -> Tensor:
    """log N(x; 0, I) per sample, summed over all non-batch dimensions."""
    flat = x.reshape(x.shape[0], -1).double()
    return -0.5 * (flat.pow(2).sum(1) + flat.shape[1] * math.log(2 * math.pi))


@dataclass
class LikelihoodResult:
    log_prob: Tensor  # [B] log p0(x0) in nats, in model space (mean over probes)
    probe_std: Tensor | None  # [B] standard deviation over Hutchinson probes (None: exact or 1 probe)
    nfe: int  # evaluations of the augmented velocity (each one a forward + backward pass)
    divergence: str  # "exact" or "hutchinson"
    probes: int


def exact_divergence(v: Tensor, x: Tensor) -> Tensor:
    """sum_i dv_i/dx_i for each sample: one backward pass per dimension."""
    flat_v = v.reshape(v.shape[0], -1)
    total = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    for i in range(flat_v.shape[1]):
        (grad,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=True)
        total = total + grad.reshape(grad.shape[0], -1)[:, i]
    return total


def hutchinson_divergence(v: Tensor, x: Tensor, probe: Tensor) -> Tensor:
    """eps^T (dv/dx) eps with one vector-Jacobian product; unbiased when E[eps eps^T] = I."""
    (vjp,) = torch.autograd.grad(v, x, grad_outputs=probe, retain_graph=False)
    return (vjp * probe).reshape(x.shape[0], -1).sum(1)


def rademacher(shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    return torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1


def log_likelihood(
    velocity,
    x0: Tensor,
    *,
    solver: str = "dopri5",
    integration: Integration = LIKELIHOOD,
    divergence: str = "auto",
    probes: int = 1,
    seed: int = 0,
    conditioning: dict[str, Any] | None = None,
) -> LikelihoodResult:
    """log p0(x0) in nats for a batch x0 [B, ...] under the flow of ``velocity(x, t, **conditioning)``.

    ``divergence``: "exact", "hutchinson" or "auto" (exact up to 16 dimensions).
    ``probes``: Hutchinson probes per sample (the batch is repeated once per probe).
    """
    shape = tuple(x0.shape[1:])
    dim = math.prod(shape)
    if divergence == "auto":
        divergence = "exact" if dim <= EXACT_DIVERGENCE_MAX_DIM else "hutchinson"
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact', 'hutchinson' or 'auto', not {divergence!r}")
    repeats = probes if divergence == "hutchinson" else 1
    batch = x0.shape[0]
    x = x0.repeat(repeats, *([1] * len(shape)))
    conditioning = {k: (v.repeat(repeats) if isinstance(v, Tensor) else v) for k, v in (conditioning or {}).items()}
    generator = torch.Generator().manual_seed(seed)
    probe = rademacher(tuple(x.shape), generator, x.dtype).to(x.device) if divergence == "hutchinson" else None

    def augmented(state: Tensor, t: Tensor) -> Tensor:
        """d/dt [x, l] = [v(x, t), div v(x, t)] on the flat state [B', D + 1]."""
        with torch.enable_grad():
            xt = state[:, :dim].detach().reshape(-1, *shape).requires_grad_(True)
            v = velocity(xt, t, **conditioning)
            div = exact_divergence(v, xt) if probe is None else hutchinson_divergence(v, xt, probe)
        return torch.cat([v.detach().reshape(-1, dim), div.detach().unsqueeze(1).to(state.dtype)], dim=1)

    start = torch.cat([x.reshape(-1, dim), torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
    result = get_solver(solver).solve(augmented, start, integration)
    x1, integral = result.x[:, :dim], result.x[:, dim]
    log_prob = (standard_normal_log_prob(x1) + integral.double()).cpu().reshape(repeats, batch)
    probe_std = log_prob.std(0) if repeats > 1 else None
    return LikelihoodResult(
        log_prob=log_prob.mean(0), probe_std=probe_std, nfe=result.nfe, divergence=divergence, probes=repeats
    )


def dequantise(images_uint8: Tensor, generator: torch.Generator) -> Tensor:
    """8-bit images k -> model space x = 2 (k + u) / 256 - 1 with u ~ U[0, 1) (uniform dequantisation)."""
    noise = torch.rand(images_uint8.shape, generator=generator)
    return (images_uint8.double() + noise) * (2.0 / 256.0) - 1.0


def bits_per_dim(log_prob: Tensor, dim: int, *, dequantised_8bit: bool) -> Tensor:
    """Bits per dimension from log p(x) in nats.

    For dequantised 8-bit images the density is first moved from model space to the
    [0, 256) scale of the pixel values: -log p_w = -log p_x - D log(2/256).
    """
    nats = -log_prob.double()
    if dequantised_8bit:
        nats = nats - dim * math.log(2.0 / 256.0)
    return nats / (dim * math.log(2.0))


def check_nll_model(nll: "NLLOptions | None", meta) -> None:
    """``--nll`` of a latent model is one line: its likelihood would be that of its latents, not of the pictures."""
    if nll is not None and meta.autoencoder:
        raise FMError("--nll: a latent model's likelihood is that of its latents, not of the pictures; fm eval "
                      "reports it for models of pixels and points")  # fmt: skip


def evaluate_nll(loaded, data, options: NLLOptions, *, seed: int, device: torch.device, progress=None) -> dict:
    """Negative log-likelihood of test items of ``data`` (an ``fmcli.eval.run.EvalData``): bits/dim for
    dequantised 8-bit images, nats for points. Conditional models are scored given each item's true class
    (no guidance)."""
    if "test" not in data.splits:
        raise FMError(f"--nll needs a test split, and data set {data.name!r} has none")
    test = data.load("test")
    count = min(options.samples, len(test))
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(test), generator=generator)[:count]
    dim = math.prod(test.shape)
    images = test.kind == "image"
    num_classes = loaded.meta.num_classes
    velocity = guided_velocity(loaded.model, 1.0, null_class=num_classes)
    conditional = num_classes > 0 and test.labels is not None
    log_probs, probe_stds, nfe, divergence = [], [], 0, "exact"
    start = time.perf_counter()
    for first in range(0, count, options.batch_size):
        index = chosen[first : first + options.batch_size]
        x = dequantise(test.data[index], generator) if images else test.data[index].double()
        conditioning = {"y": test.labels[index].to(device)} if conditional else {}
        result = log_likelihood(
            velocity,
            x.float().to(device),
            solver=options.solver,
            integration=options.integration,
            probes=options.probes,
            seed=seed + first,
            conditioning=conditioning,
        )
        log_probs.append(result.log_prob)
        if result.probe_std is not None:
            probe_stds.append(result.probe_std)
        nfe, divergence = max(nfe, result.nfe), result.divergence
        if progress:
            progress("likelihood", min(first + options.batch_size, count), count)
    log_prob = torch.cat(log_probs)
    bpd = bits_per_dim(log_prob, dim, dequantised_8bit=images)
    report = {
        "bits_per_dim": float(bpd.mean()),
        "bits_per_dim_stderr": float(bpd.std() / math.sqrt(count)) if count > 1 else None,
        "nll_nats": float(-log_prob.mean()),
        "num_samples": count,
        "dim": dim,
        "dequantisation": "uniform, 8-bit" if images else None,
        "conditional_on_true_class": conditional,
        "divergence": divergence,
        "probes": options.probes if divergence == "hutchinson" else None,
        "solver": options.solver,
        "steps": options.integration.steps,
        "rtol": options.integration.rtol,
        "nfe": nfe,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if probe_stds:
        # Hutchinson spread of one sample's estimate, converted to bits/dim.
        report["probe_std_bits_per_dim"] = float(torch.cat(probe_stds).mean() / (dim * math.log(2)))
    return report
