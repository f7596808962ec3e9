"""Guidance in an interval and autoguidance against the exact flow of Gaussian data, where the answer is known.

For data N(m, s^2) (per dimension) on straight paths, x_t has std sigma(t) = sqrt((1 - t)^2 s^2 + t^2) and the
exact velocity is v = a(t) (x - (1 - t) m) - m with a = d log sigma / dt. Then d(x / sigma)/dt = -m c(t) / sigma
with c = a (1 - t) + 1, so integrating from t = 1 to 0 gives x0 = s x1 + s * integral_0^1 m(t) c(t) / sigma(t) dt:

- classifier-free guidance (means m_c, m_u, one std s) at scale w for t in I gives the mean
  m_c + (w - 1) (m_c - m_u) W(I), W(I) = integral over I of s c / sigma, and leaves the std at exactly s;
- autoguidance by a guide of the same mean and std s_g gives the mean m and the std
  s * [(sigma(hi) / sigma(lo)) / (sigma_g(hi) / sigma_g(lo))]^-(w - 1), which is s^w s_g^(1 - w) over [0, 1].
"""

import math

import pytest
import torch
from scipy.integrate import quad

from fmcli.errors import FMError
from fmcli.sampling.guidance import guided_velocity
from fmcli.sampling.solvers import get_solver
from fmcli.sampling.solvers.base import Integration
from fmcli.sampling.stored_guidance import parse_interval


def sigma(t: float, s: float) -> float:
    return math.sqrt((1 - t) ** 2 * s**2 + t**2)


class ExactGaussian(torch.nn.Module):
    """The exact velocity of N(means[y], stds[y]^2) data; the last entry is the null class (unconditional)."""

    def __init__(self, means: list[float], stds: list[float]):
        super().__init__()
        self.means, self.stds = torch.tensor(means, dtype=torch.float64), torch.tensor(stds, dtype=torch.float64)
        self.rows = 0

    def forward(self, x, t, y=None):
        self.rows += x.shape[0]
        y = torch.full((x.shape[0],), len(self.means) - 1) if y is None else y
        m, s = self.means[y][:, None], self.stds[y][:, None]
        t = t.to(torch.float64)[:, None]
        a = (t - (1 - t) * s**2) / ((1 - t) ** 2 * s**2 + t**2)
        return a * (x - (1 - t) * m) - m


def solve(velocity, x1, y, steps=1000, solver="rk4"):
    spec = Integration(t_start=1.0, t_end=0.0, steps=steps, time_grid="uniform")
    return get_solver(solver).solve(velocity, x1, spec, {"y": y}).x


def weight(lo: float, hi: float, s: float) -> float:
    """W([lo, hi]) = integral of s c(t) / sigma(t): the share of the final mean decided in [lo, hi]."""

    def density(t):
        a = (t - (1 - t) * s**2) / sigma(t, s) ** 2
        return s * (a * (1 - t) + 1) / sigma(t, s)

    return quad(density, lo, hi, epsabs=1e-12)[0]


X1 = torch.randn(500, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_weights_integrate_to_one():
    """The exact flow carries any constant mean to itself: W([0, 1]) = 1 (the formula below rests on it)."""
    assert weight(0.0, 1.0, 0.3) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("interval", [None, (0.2, 0.8), (0.0, 0.4), (0.6, 1.0)])
def test_cfg_in_an_interval_shifts_the_mean_by_its_share_and_keeps_the_std(interval):
    s, w, m_c, m_u = 0.3, 3.0, 1.0, 0.0
    model = ExactGaussian([m_c, m_u], [s, s])
    y = torch.zeros(len(X1), dtype=torch.long)
    x0 = solve(guided_velocity(model, w, null_class=1, interval=interval), X1, y)
    lo, hi = interval or (0.0, 1.0)
    expected_mean = m_c + (w - 1) * (m_c - m_u) * weight(lo, hi, s)
    # The map x1 -> x0 is s x1 + a constant: the same per draw, so compare draw by draw, not only moments.
    assert torch.allclose(x0, s * X1 + expected_mean, atol=2e-3)
    if interval is not None:  # a real interval guides less than guidance everywhere (the known answer differs)
        assert abs(weight(lo, hi, s) - 1.0) > 0.05


def test_autoguidance_sharpens_by_the_known_power_and_keeps_the_mean():
    s, s_guide, w, m = 0.5, 0.8, 2.0, 0.7
    model, guide = ExactGaussian([m, 0.0], [s, 1.0]), ExactGaussian([m, 0.0], [s_guide, 1.0])
    y = torch.zeros(len(X1), dtype=torch.long)
    x0 = solve(guided_velocity(model, w, null_class=1, guide=guide, guide_label="same"), X1, y)
    expected_std = s**w * s_guide ** (1 - w)
    assert expected_std < s  # a worse (wider) guide makes the samples sharper than the model's own
    assert torch.allclose(x0, expected_std * X1 + m, atol=2e-3)
    lo, hi = 0.3, 0.9
    x0 = solve(guided_velocity(model, w, null_class=1, guide=guide, interval=(lo, hi), guide_label="same"), X1, y)
    ratio = (sigma(hi, s) / sigma(lo, s)) / (sigma(hi, s_guide) / sigma(lo, s_guide))
    assert torch.allclose(x0, s * ratio ** -(w - 1) * X1 + m, atol=2e-3)


def test_the_guide_label_picks_the_guides_unconditional_or_same_class_velocity():
    """null: v_g(x, null) is the reference, so the mean moves by (w - 1)(m_c - m_g_null); same: v_g(x, y) has the
    model's mean and std here, so nothing moves."""
    s, w = 0.4, 2.5
    model, guide = ExactGaussian([1.0, 0.0], [s, s]), ExactGaussian([1.0, 0.5], [s, s])
    y = torch.zeros(len(X1), dtype=torch.long)
    null = solve(guided_velocity(model, w, null_class=1, guide=guide, guide_label="null"), X1, y, steps=200)
    assert torch.allclose(null, s * X1 + 1.0 + (w - 1) * (1.0 - 0.5), atol=1e-4)
    same = solve(guided_velocity(model, w, null_class=1, guide=guide, guide_label="same"), X1, y, steps=200)
    assert torch.allclose(same, s * X1 + 1.0, atol=1e-4)


def test_a_guide_equal_to_the_model_or_scale_one_is_no_guidance():
    model = ExactGaussian([1.0, 0.0], [0.3, 1.0])
    twin = ExactGaussian([1.0, 0.0], [0.3, 1.0])
    y = torch.zeros(len(X1), dtype=torch.long)
    plain = solve(guided_velocity(model, 1.0, null_class=1), X1, y)
    assert torch.allclose(plain, 0.3 * X1 + 1.0, atol=1e-6)
    assert torch.allclose(
        solve(guided_velocity(model, 3.0, null_class=1, guide=twin, guide_label="same"), X1, y), plain, atol=1e-12
    )


def test_passes_count_the_unconditional_pass_only_inside_the_interval():
    """Euler 10 steps evaluates at t = 1.0, 0.9, ..., 0.1; [0.25, 0.75] holds 0.7 ... 0.3: 10 + 5 passes."""
    model = ExactGaussian([1.0, 0.0], [0.3, 1.0])
    y = torch.zeros(8, dtype=torch.long)
    velocity = guided_velocity(model, 2.0, null_class=1, interval=(0.25, 0.75))
    solve(velocity, X1[:8], y, steps=10, solver="euler")
    assert velocity.passes == 15 and model.rows == 15 * 8
    everywhere = guided_velocity(model, 2.0, null_class=1)
    solve(everywhere, X1[:8], y, steps=10, solver="euler")
    assert everywhere.passes == 20


@pytest.mark.parametrize(
    "text, expected",
    [("0.2,0.8", (0.2, 0.8)), ("0:1", (0.0, 1.0)), ("full", (0.0, 1.0)), (None, None)],
)
def test_interval_parsing(text, expected):
    assert parse_interval(text) == expected


@pytest.mark.parametrize(
    "text, says",
    [("0.8,0.2", "empty"), ("0.5,0.5", "empty"), ("-0.1,0.5", "outside"), ("0.2", "LO,HI"), ("a,b", "LO,HI")],
)
def test_bad_intervals_are_one_line(text, says):
    with pytest.raises(FMError, match=says):
        parse_interval(text)
