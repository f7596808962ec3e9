"""The objective's convention: t = 0 is data, t = 1 is noise, target x1 - x0, per-sample t."""

import math

import torch
from helpers import flow_matching_loss

from fmcli.flow.path import interpolate, predicted_data, sample_time, target_velocity


def test_endpoints_follow_the_convention():
    x0, x1 = torch.randn(4, 1, 5, 5), torch.randn(4, 1, 5, 5)
    assert torch.equal(interpolate(x0, x1, torch.zeros(4)), x0)  # t = 0 is data
    assert torch.equal(interpolate(x0, x1, torch.ones(4)), x1)  # t = 1 is noise
    assert torch.equal(target_velocity(x0, x1), x1 - x0)


def test_per_sample_time_broadcasts_over_image_dimensions():
    x0, x1 = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0.1, 0.5, 0.9])
    batched = interpolate(x0, x1, t)
    for i in range(3):
        expected = (1 - t[i]) * x0[i] + t[i] * x1[i]
        torch.testing.assert_close(batched[i], expected)


def test_exact_velocity_of_a_point_mass_has_zero_loss_and_the_reverse_convention_does_not():
    # Data is a single point a: x_t = (1 - t) a + t x1, so x1 - x0 = (x_t - a) / t exactly.
    a = torch.randn(1, 1, 6, 6)
    x0 = a.expand(256, -1, -1, -1)
    x1 = torch.randn(256, 1, 6, 6)
    t = torch.rand(256).clamp(min=0.05)

    def exact(x, t):
        return (x - a) / t.reshape(-1, 1, 1, 1)

    def reversed_convention(x, t):  # what a model trained with t = 0 as noise would predict
        return -exact(x, t)

    assert flow_matching_loss(exact, x0, x1, t).item() < 1e-10
    # reversed field: error is 2 (x1 - x0), whose mean square is 4 E||x1 - a||^2 / D = 4 (1 + a^2 mean)
    expected = 4 * (1 + a.pow(2).mean().item())
    assert math.isclose(flow_matching_loss(reversed_convention, x0, x1, t).item(), expected, rel_tol=0.1)


def test_predicted_data_recovers_x0_on_straight_paths():
    x0, x1 = torch.randn(8, 3), torch.randn(8, 3)
    t = torch.rand(8)
    xt = interpolate(x0, x1, t)
    torch.testing.assert_close(predicted_data(xt, t, x1 - x0), x0)


def test_time_sampling_distributions():
    g = torch.Generator().manual_seed(0)
    uniform = sample_time(100_000, generator=g)
    assert 0 <= uniform.min() and uniform.max() < 1
    assert abs(uniform.mean().item() - 0.5) < 0.01
    logit_normal = sample_time(100_000, method="logit-normal", mean=0.5, std=0.8, generator=g)
    logits = torch.log(logit_normal / (1 - logit_normal))
    assert abs(logits.mean().item() - 0.5) < 0.02 and abs(logits.std().item() - 0.8) < 0.02
