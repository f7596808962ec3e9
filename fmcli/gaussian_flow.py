"""The exact flow for Gaussian data: a closed form that tests every solver and the likelihood.

For data x0 ~ N(mu, Sigma) and noise x1 ~ N(0, I) on straight paths x_t = (1 - t) x0 + t x1,
x_t is Gaussian with

    m_t = (1 - t) mu,        S_t = (1 - t)^2 Sigma + t^2 I,

and the marginal velocity E[x1 - x0 | x_t = x] is affine in x:

    v*(x, t) = -mu + (t I - (1 - t) Sigma) S_t^{-1} (x - m_t).

Integrating dx/dt = v* from t = 1 to t = 0 carries N(0, I) exactly to N(mu, Sigma).
"""

import torch
from torch import Tensor


class GaussianFlow:
    def __init__(self, mean: Tensor, cov: Tensor):
        self.mean = mean.double()
        self.cov = cov.double()
        self.dim = mean.shape[0]

    def marginal(self, t: float) -> tuple[Tensor, Tensor]:
        """Mean and covariance of x_t."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        return (1 - t) * self.mean, (1 - t) ** 2 * self.cov + t**2 * eye

    def velocity(self, x: Tensor, t: Tensor, **conditioning) -> Tensor:
        """v*(x, t) for a batch x [B, D] and a 0-dim or [B] time (same t across the batch)."""
        tt = float(t.reshape(-1)[0])
        m_t, s_t = self.marginal(tt)
        eye = torch.eye(self.dim, dtype=torch.float64)
        gain = (tt * eye - (1 - tt) * self.cov) @ torch.linalg.inv(s_t)
        v = -self.mean + (x.double() - m_t) @ gain.T
        return v.to(x.dtype)

    def log_prob(self, x: Tensor, t: float = 0.0) -> Tensor:
        """log density of x_t at x (t = 0: the data density) per sample, in nats."""
        m_t, s_t = self.marginal(t)
        dist = torch.distributions.MultivariateNormal(m_t, covariance_matrix=s_t)
        return dist.log_prob(x.double())

    def divergence(self, t: float) -> float:
        """trace of dv*/dx at time t (constant in x, since v* is affine)."""
        _, s_t = self.marginal(t)
        eye = torch.eye(self.dim, dtype=torch.float64)
        return float(torch.trace((t * eye - (1 - t) * self.cov) @ torch.linalg.inv(s_t)))
