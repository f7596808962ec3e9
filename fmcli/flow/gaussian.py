"""The exact flow for Gaussian data: a closed form that tests every solver and the likelihood.

For data x0 ~ N(mu, Sigma) and noise x1 ~ N(0, I) on straight paths x_t = (1 - t) x0 + t x1,
x_t is Gaussian with

    m_t = (1 - t) mu,        S_t = (1 - t)^2 Sigma + t^2 I,

and the marginal velocity E[x1 - x0 | x_t = x] is affine in x:

    v*(x, t) = -mu + (t I - (1 - t) Sigma) S_t^{-1} (x - m_t).

Integrating dx/dt = v* from t = 1 to t = 0 carries N(0, I) exactly to N(mu, Sigma).

The flow itself is known in closed form. With Sigma = Q diag(lambda) Q^T, each eigen-direction
evolves on its own: y = Q^T (x - m_t) obeys dy_i/dt = g_i(t) y_i with

    g_i(t) = (t - (1 - t) lambda_i) / sigma_i(t)^2 = d log sigma_i(t) / dt,
    sigma_i(t)^2 = (1 - t)^2 lambda_i + t^2        (x_t's variance along direction i),

so y_i(s) = (sigma_i(s) / sigma_i(t)) y_i(t), and the flow map from time t to time s is

    phi_{t->s}(x) = m_s + Q diag(sigma(s) / sigma(t)) Q^T (x - m_t).

The average velocity over [r, t] (MeanFlow) is the secant of the flow, u*(x, r, t) = (x - phi_{t->r}(x)) / (t - r).
Since m_t - m_r = -(t - r) mu and sigma_i(t)^2 - sigma_i(r)^2 = (t - r) [(t + r) - lambda_i (2 - t - r)],

    u*(x, r, t) = -mu + Q diag(gamma) Q^T (x - m_t),
    gamma_i = [(t + r) - lambda_i (2 - t - r)] / (sigma_i(t) (sigma_i(t) + sigma_i(r))),

with no division by t - r: smooth at r = t, where gamma_i = g_i(t) and u*(x, t, t) = v*(x, t).
"""

import torch
from torch import Tensor


class GaussianFlow:
    def __init__(self, mean: Tensor, cov: Tensor):
        self.mean = mean.double()
        self.cov = cov.double()
        self.dim = mean.shape[0]
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(self.cov)

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

    # --- the exact flow map and average velocity (MeanFlow) ---------------------------------------

    def _std(self, t: Tensor) -> Tensor:
        """sigma_i(t) = sqrt((1 - t)^2 lambda_i + t^2) per eigen-direction: [B, 1] times -> [B, D]."""
        return ((1 - t) ** 2 * self.eigenvalues + t**2).sqrt()

    def flow_map(self, x: Tensor, t: float | Tensor, s: float | Tensor) -> Tensor:
        """phi_{t->s}(x): where the flow of v* carries x from time t to time s (either direction).

        t, s: numbers, 0-dim or [B] tensors. From t = 0 needs a positive definite Sigma (sigma_i(0)^2 = lambda_i).
        """
        t, s = _column(t, x), _column(s, x)
        q = self.eigenvectors
        y = (x.double() - (1 - t) * self.mean) @ q  # eigen-coordinates of x - m_t
        return ((y * self._std(s) / self._std(t)) @ q.T + (1 - s) * self.mean).to(x.dtype)

    def _gamma(self, r: Tensor, t: Tensor) -> Tensor:
        """gamma_i(r, t) of the module docstring: u* = -mu + Q diag(gamma) Q^T (x - m_t). [B, 1] times -> [B, D]."""
        lam = self.eigenvalues
        std_t, std_r = self._std(t), self._std(r)
        return ((t + r) - lam * (2 - t - r)) / (std_t * (std_t + std_r))

    def average_velocity(self, x: Tensor, r: float | Tensor, t: float | Tensor) -> Tensor:
        """u*(x, r, t) = (x - phi_{t->r}(x)) / (t - r), the exact MeanFlow target; u*(x, t, t) = v*(x, t).

        Plain torch operations of x, r and t (numbers, 0-dim or [B] tensors), so torch.func.jvp and
        autograd go through it.
        """
        r, t = _column(r, x), _column(t, x)
        q = self.eigenvectors
        y = (x.double() - (1 - t) * self.mean) @ q
        return (-self.mean + (self._gamma(r, t) * y) @ q.T).to(x.dtype)

    def average_velocity_time_derivative(self, x: Tensor, r: float | Tensor, t: float | Tensor) -> Tensor:
        """du*/dt = (du*/dx) v*(x, t) + du*/dt|_x along the flow (r fixed), in closed form.

        In eigen-coordinates y = Q^T (x - m_t), with dy_i/dt = g_i y_i along the flow and u* = -mu + Q gamma y
        (the mu terms cancel): du*_i/dt = (gamma_i g_i + d gamma_i / dt) y_i, where, writing gamma = N / D,
        N = (t + r) - lambda (2 - t - r), D = sigma(t) (sigma(t) + sigma(r)) and d sigma(t)/dt = g sigma(t):
        d gamma / dt = (1 + lambda) / D - N g sigma(t) (2 sigma(t) + sigma(r)) / D^2.
        """
        r, t = _column(r, x), _column(t, x)
        lam, q = self.eigenvalues, self.eigenvectors
        std_t, std_r = self._std(t), self._std(r)
        g = (t - (1 - t) * lam) / std_t**2
        numerator, denominator = (t + r) - lam * (2 - t - r), std_t * (std_t + std_r)
        dgamma_dt = (1 + lam) / denominator - numerator * g * std_t * (2 * std_t + std_r) / denominator**2
        y = (x.double() - (1 - t) * self.mean) @ q
        return (((numerator / denominator) * g + dgamma_dt) * y @ q.T).to(x.dtype)

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


def _column(t: float | Tensor, x: Tensor) -> Tensor:
    """A time (number, 0-dim or [B]) as a float64 column [B, 1] or [1, 1] that broadcasts over x [B, D]."""
    return torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1, 1)
