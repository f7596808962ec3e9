"""Likelihoods through the instantaneous change of variables, against the closed-form Gaussian flow."""

import math

import pytest
import torch

from fmcli.eval.nll import bits_per_dim, dequantise, log_likelihood
from fmcli.flow.gaussian import GaussianFlow
from fmcli.sampling.solvers.base import Integration


def gaussian_case(dim: int, seed: int, n: int):
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(dim, generator=generator, dtype=torch.float64)
    a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    cov = a @ a.T / dim + 0.2 * torch.eye(dim, dtype=torch.float64)
    flow = GaussianFlow(mean, cov)
    x0 = mean + torch.randn(n, dim, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    return flow, x0


@pytest.mark.parametrize("solver,steps", [("dopri5", 0), ("rk4", 40)])
def test_exact_divergence_matches_the_gaussian_log_density(solver, steps):
    flow, x0 = gaussian_case(dim=2, seed=0, n=32)
    spec = Integration(t_start=0.0, t_end=1.0, steps=steps or 20, rtol=1e-7, atol=1e-7)
    result = log_likelihood(flow.velocity, x0, solver=solver, integration=spec)
    exact = flow.log_prob(x0, t=0.0)
    assert result.divergence == "exact"
    assert torch.allclose(result.log_prob, exact, rtol=1e-3, atol=0)
    assert result.nfe > 0


def test_hutchinson_estimate_agrees_within_its_reported_spread():
    flow, x0 = gaussian_case(dim=6, seed=2, n=48)
    probes = 8
    result = log_likelihood(
        flow.velocity,
        x0,
        solver="dopri5",
        integration=Integration(t_start=0.0, t_end=1.0, rtol=1e-6, atol=1e-6),
        divergence="hutchinson",
        probes=probes,
        seed=3,
    )
    exact = flow.log_prob(x0)
    assert result.divergence == "hutchinson" and result.probe_std is not None
    # Standard error of the mean over samples of the probe-averaged estimate.
    spread = math.sqrt(float(result.probe_std.pow(2).mean()) / (probes * x0.shape[0]))
    assert spread > 0
    assert abs(float((result.log_prob - exact).mean())) < 4 * spread + 1e-3
    # And per sample, the error is of the size of the probe spread (not wildly off).
    per_sample = (result.log_prob - exact).abs() / (result.probe_std / math.sqrt(probes) + 1e-9)
    assert float(per_sample.median()) < 3


def test_dequantisation_stays_inside_each_pixel_bin():
    images = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = dequantise(images, torch.Generator().manual_seed(0))
    pixel = (x + 1) * 128  # back to [0, 256)
    k = images.double()
    assert bool(((pixel >= k) & (pixel < k + 1)).all())


def test_bits_per_dim_accounts_for_the_scaling_jacobian():
    # A standard normal in model space evaluated at 0: -log p = D/2 log(2 pi).
    dim = 10
    log_prob = torch.tensor([-dim / 2 * math.log(2 * math.pi)])
    expected = (dim / 2 * math.log(2 * math.pi) - dim * math.log(2 / 256)) / (dim * math.log(2))
    assert float(bits_per_dim(log_prob, dim, dequantised_8bit=True)) == pytest.approx(expected)
    assert float(bits_per_dim(log_prob, dim, dequantised_8bit=False)) == pytest.approx(0.5 * math.log2(2 * math.pi))
