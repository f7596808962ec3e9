"""MeanFlow, checked against known answers.

Gaussian data N(mu, Sigma) has a closed-form flow (``fmcli.flow.gaussian``), hence an exact average
velocity u*(x, r, t): the MeanFlow target built from it must give it back, and the few-step sampler
driven by it must reproduce the exact flow map at any number of steps. The networks' jvp is checked
against central differences (float64), and the interval input against the model without it.
"""

import hashlib

import pytest
import torch
from helpers import meanflow_loss
from helpers import randomise_zero_init as randomise
from torch import nn

from fmcli import registry
from fmcli.errors import FMError
from fmcli.flow.gaussian import GaussianFlow
from fmcli.flow.meanflow import meanflow_target, sample_interval
from fmcli.flow.path import broadcast_time, interpolate
from fmcli.io.checkpoint import CheckpointMeta, LoadedModel
from fmcli.models import build_model, forward_ad
from fmcli.models.mlp import MLPVelocity
from fmcli.models.presets import default_model_config
from fmcli.models.unet import UNet
from fmcli.sampling.generate import generate
from fmcli.sampling.guidance import guided_velocity
from fmcli.sampling.options import SamplingOptions
from fmcli.sampling.solvers.base import Integration
from fmcli.sampling.solvers.grids import TIME_GRIDS, make_time_grid

F64 = torch.float64
MEAN = torch.tensor([1.0, -0.5, 0.3], dtype=F64)
_A = torch.tensor([[1.0, 0.4, 0.0], [0.2, 0.6, 0.3], [0.0, -0.3, 0.5]], dtype=F64)
COV = _A @ _A.T + 0.05 * torch.eye(3, dtype=F64)  # correlated, eigenvalues from ~0.1 to ~1.4
FLOW = GaussianFlow(MEAN, COV)
# (r, t) pairs: one-step (0, 1), r = t (plain flow matching; also at both ends), short and long intervals.
PAIRS = [(0.0, 1.0), (0.3, 0.3), (1.0, 1.0), (0.0, 0.0), (0.2, 0.7), (0.0, 0.5), (0.6, 0.95), (0.49, 0.5)]

TINY_UNET = dict(
    in_channels=1,
    image_size=16,
    base_channels=8,
    channel_mults=[1, 2],
    num_res_blocks=1,
    attention_resolutions=[8],
    num_groups=4,
)  # attention at 8x8 and in the middle
TINY_MLP = dict(dim=3, hidden=32, depth=2)


def exact_u(x, r, t):
    return FLOW.average_velocity(x, r, t)


def exact_v(x, t):
    """v*(x, t) per sample (u*(x, t, t) = v*; ``GaussianFlow.velocity`` takes one t for the batch)."""
    return FLOW.average_velocity(x, t, t)


def exact_average_velocity_fn(x, t, r=None):
    """u* with the model's calling convention, for the solver: velocity(x, t, r=r)."""
    return FLOW.average_velocity(x, t if r is None else r, t)


def tiny(kind: str, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "unet":
        return randomise(UNet(**(TINY_UNET | {"interval": True} | overrides)), seed)
    return randomise(MLPVelocity(**(TINY_MLP | {"interval": True} | overrides)), seed)


def inputs(kind: str, batch: int = 3, dtype=torch.float32, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 1, 16, 16) if kind == "unet" else (batch, 3)
    return torch.randn(shape, generator=gen, dtype=dtype), torch.randn(shape, generator=gen, dtype=dtype)


def covariance_standard_errors(n):
    var = torch.diag(COV)
    return (var / n).sqrt(), ((var[:, None] * var[None, :] + COV**2) / n).sqrt()


# --- the exact Gaussian answers -----------------------------------------------------------------


def test_flow_map_is_the_flow_of_the_marginal_velocity():
    x = torch.randn(8, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    rk4 = registry.get_solver("rk4")
    for t, s in [(0.9, 0.15), (0.2, 0.8), (1.0, 0.0)]:
        integrated = rk4.solve(FLOW.velocity, x, Integration(t_start=t, t_end=s, steps=200)).x
        torch.testing.assert_close(FLOW.flow_map(x, t, s), integrated, rtol=0, atol=1e-9)
    # a flow: maps compose, and 1 -> 0 is x1 -> Sigma^{1/2} x1 + mu (symmetric root)
    torch.testing.assert_close(FLOW.flow_map(FLOW.flow_map(x, 0.9, 0.4), 0.4, 0.1), FLOW.flow_map(x, 0.9, 0.1))
    eigenvalues, vectors = torch.linalg.eigh(COV)
    root = vectors @ torch.diag(eigenvalues.sqrt()) @ vectors.T
    torch.testing.assert_close(FLOW.flow_map(x, 1.0, 0.0), x @ root.T + MEAN)


def test_average_velocity_is_the_secant_of_the_flow_and_v_star_at_r_equal_t():
    x = torch.randn(8, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    for r, t in PAIRS:
        if r < t:
            secant = (x - FLOW.flow_map(x, t, r)) / (t - r)
            torch.testing.assert_close(exact_u(x, r, t), secant, rtol=1e-12, atol=1e-12)
        else:
            torch.testing.assert_close(exact_u(x, r, t), FLOW.velocity(x, torch.tensor(t, dtype=F64)))


def test_meanflow_target_of_the_exact_average_velocity_is_itself():
    """u = v - (t - r) du/dt with v = v* (the identity holds for the marginal field), every (r, t) pair
    at once (per-sample times), float64; the jvp's du/dt equals the closed form."""
    n = 4
    r = torch.tensor([p[0] for p in PAIRS for _ in range(n)], dtype=F64)
    t = torch.tensor([p[1] for p in PAIRS for _ in range(n)], dtype=F64)
    x = torch.randn(len(t), 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    v = exact_v(x, t)
    u, target = meanflow_target(exact_u, x, r, t, v)
    torch.testing.assert_close(u, exact_u(x, r, t), rtol=0, atol=0)
    torch.testing.assert_close(target, u, rtol=1e-12, atol=1e-12)
    _, du_dt = torch.func.jvp(exact_u, (x, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    torch.testing.assert_close(du_dt, FLOW.average_velocity_time_derivative(x, r, t), rtol=1e-10, atol=1e-10)
    # The check has teeth: dropping the time tangent (du/dx v only) gives a wrong target where r < t.
    _, partial = torch.func.jvp(exact_u, (x, r, t), (v, torch.zeros_like(r), torch.zeros_like(t)))
    wrong = v - broadcast_time(t - r, x) * partial
    assert (wrong - u)[r < t].abs().max() > 1e-2


# --- the few-step sampler -------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize("time_grid", TIME_GRIDS)
def test_meanflow_solver_with_exact_u_is_the_exact_flow_map(steps, time_grid):
    solver = registry.get_solver("meanflow")
    x1 = torch.randn(50, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    result = solver.solve(exact_average_velocity_fn, x1, Integration(steps=steps, time_grid=time_grid))
    assert result.nfe == steps
    torch.testing.assert_close(result.x, FLOW.flow_map(x1, 1.0, 0.0), rtol=0, atol=1e-12)
    part = solver.solve(
        exact_average_velocity_fn, x1, Integration(t_start=0.8, t_end=0.3, steps=steps, time_grid=time_grid)
    )
    torch.testing.assert_close(part.x, FLOW.flow_map(x1, 0.8, 0.3), rtol=0, atol=1e-12)


def test_one_and_two_step_sampling_match_the_data_unlike_one_euler_step():
    """20,000 noise samples: mean and covariance within 4 standard errors after 1 and 2 meanflow steps.
    One Euler step with the exact v* instead maps every x1 to v*(x, 1) = x - mu, i.e. to x0 = mu."""
    n = 20_000
    x1 = torch.randn(n, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    mean_se, cov_se = covariance_standard_errors(n)
    for steps in (1, 2):
        x0 = registry.get_solver("meanflow").solve(exact_average_velocity_fn, x1, Integration(steps=steps)).x
        assert ((x0.mean(0) - MEAN).abs() < 4 * mean_se).all(), (steps, x0.mean(0))
        assert ((torch.cov(x0.T) - COV).abs() < 4 * cov_se).all(), (steps, torch.cov(x0.T))
    euler = registry.get_solver("euler").solve(FLOW.velocity, x1, Integration(steps=1)).x
    torch.testing.assert_close(euler, MEAN.expand_as(euler))  # collapsed onto the mean: covariance 0
    assert ((torch.cov(euler.T) - COV).abs() / cov_se).max() > 50
    euler2 = registry.get_solver("euler").solve(FLOW.velocity, x1, Integration(steps=2)).x
    assert ((torch.cov(euler2.T) - COV).abs() / cov_se).max() > 10  # still far off at 2 steps


def test_meanflow_solver_calls_velocity_with_r_and_conditioning():
    token = object()
    calls = []

    def velocity(x, t, *, r, label):
        assert label is token and t.dim() == r.dim() == 0 and t.dtype == r.dtype == x.dtype
        calls.append((float(t), float(r)))
        return exact_average_velocity_fn(x, t, r=r)

    x1 = torch.randn(4, 3, dtype=F64)
    result = registry.get_solver("meanflow").solve(
        velocity, x1, Integration(steps=4, time_grid="cosine"), conditioning={"label": token}
    )
    grid = make_time_grid("cosine", 4, 1.0, 0.0).tolist()
    assert calls == list(zip(grid[:-1], grid[1:], strict=True)) and result.nfe == 4


def test_meanflow_solver_save_at_registry_and_direction():
    solver = registry.get_solver("meanflow")
    assert "meanflow" in registry.solvers() and solver.description
    assert (solver.adaptive, solver.order, solver.evals_per_step, solver.needs_interval) == (False, None, 1, True)
    x1 = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    plain = solver.solve(exact_average_velocity_fn, x1, Integration(steps=4))
    saved = solver.solve(exact_average_velocity_fn, x1, Integration(steps=4, save_at=[0.5, 0.0, 0.6, 1.0]))
    assert saved.times.tolist() == [1.0, 0.6, 0.5, 0.0] and saved.trajectory.shape == (4, 6, 3)
    assert saved.nfe == plain.nfe == 4 and torch.equal(saved.x, plain.x)
    assert torch.equal(saved.trajectory[0], x1) and torch.equal(saved.trajectory[-1], saved.x)
    torch.testing.assert_close(saved.trajectory[2], FLOW.flow_map(x1, 1.0, 0.5))  # a grid time: exact
    between = torch.lerp(FLOW.flow_map(x1, 1.0, 0.75), FLOW.flow_map(x1, 1.0, 0.5), 0.6)  # 0.6: interpolated
    torch.testing.assert_close(saved.trajectory[1], between)
    with pytest.raises(FMError, match="noise toward data"):
        solver.solve(exact_average_velocity_fn, x1, Integration(t_start=0.0, t_end=1.0, steps=2))
    with pytest.raises(FMError, match="outside"):
        solver.solve(exact_average_velocity_fn, x1, Integration(steps=2, save_at=[1.5]))


def test_guided_velocity_passes_r_through_and_guides_average_velocities():
    seen = []

    class Recorder(nn.Module):
        def forward(self, x, t, y=None, r=None):
            seen.append(r)
            scale = 1.0 if r is None else 1.0 + (t - r)[:, None]
            return scale * (x + (0.0 if y is None else y[:, None].to(x.dtype)))

    x, t, r, y = torch.randn(2, 3), torch.tensor(0.9), torch.tensor(0.4), torch.tensor([1, 2])
    velocity = guided_velocity(Recorder(), cfg=3.0, null_class=5)
    guided = velocity(x, t, y, r=r)
    assert torch.equal(seen[-1], torch.full((4,), 0.4))  # conditional and null halves, per sample
    u_cond, u_null = 1.5 * (x + y[:, None]), 1.5 * (x + 5)
    torch.testing.assert_close(guided, u_null + 3.0 * (u_cond - u_null))
    velocity(x, t, y)  # no r: the model is called without it (models without the interval input)
    assert seen[-1] is None

    class NoInterval(nn.Module):
        def forward(self, x, t, y=None):
            return x

    assert torch.equal(guided_velocity(NoInterval(), 1.0, 0)(x, t), x)


def test_generate_samples_in_one_step_and_refuses_a_model_without_the_interval_input():
    def loaded(model):
        meta = CheckpointMeta(
            format_version=1, model_config=model.config, step=0, data={"shape": [2], "kind": "points", "num_classes": 0}
        )
        return LoadedModel(model=model, meta=meta)

    one_step = SamplingOptions(solver="meanflow", steps=1)
    result = generate(loaded(MLPVelocity(dim=2, hidden=16, depth=1, interval=True).eval()), one_step, num=5)
    assert result.nfe == 1 and result.samples.shape == (5, 2)
    with pytest.raises(FMError, match="no interval input"):
        generate(loaded(MLPVelocity(dim=2, hidden=16, depth=1).eval()), one_step, num=5)


# --- the jvp through the networks ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_jvp_matches_a_central_difference(kind):
    """du/dt along (v, 0, 1), float64, against (u(x + h v, r, t + h) - u(x - h v, r, t - h)) / 2h.
    The U-Net has attention (scaled_dot_product_attention) and GroupNorm; r < t, r = 0 and classes."""
    model = tiny(kind, num_classes=3).double()
    x, v = inputs(kind, 4, F64)
    r, t = torch.tensor([0.1, 0.5, 0.0, 0.3], dtype=F64), torch.tensor([0.3, 0.6, 1.0, 0.9], dtype=F64)
    y = torch.tensor([0, 2, 3, 1])

    def u_fn(x, r, t):
        return model(x, t, y, r=r)

    u, target = meanflow_target(u_fn, x, r, t, v)
    du_dt = (v - target) / broadcast_time(t - r, x)
    h = 1e-6
    central = (u_fn(x + h * v, r, t + h) - u_fn(x - h * v, r, t - h)) / (2 * h)
    assert central.abs().max() > 1  # a non-trivial derivative
    torch.testing.assert_close(du_dt, central, rtol=1e-5, atol=1e-5 * central.abs().max().item())
    torch.testing.assert_close(u, u_fn(x, r, t), rtol=0, atol=0)


def test_gradients_through_the_jvp_primal_equal_those_of_a_plain_forward():
    model = tiny("unet", num_classes=3).double()
    x, v = inputs("unet", 3, F64)
    r, t = torch.tensor([0.1, 0.5, 0.2], dtype=F64), torch.tensor([0.3, 0.6, 0.9], dtype=F64)
    y = torch.tensor([0, 1, 2])
    weights = torch.cos(x)

    def grads(u):
        model.zero_grad()
        (u * weights).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    via_jvp = grads(meanflow_target(lambda x, r, t: model(x, t, y, r=r), x, r, t, v)[0])
    plain = grads(model(x, t, y, r=r))
    for a, b in zip(via_jvp, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_jvp_with_gradient_checkpointing_gives_the_same_target_and_gradients():
    """Checkpointing is skipped inside the jvp (its recomputation would run without the tangent)."""
    model = tiny("unet", num_classes=3).train()
    x0, x1 = inputs("unet", 3)
    r, t, y = torch.tensor([0.1, 0.5, 0.2]), torch.tensor([0.3, 0.5, 0.9]), torch.tensor([0, 1, 2])

    def run():
        model.zero_grad()
        loss, _ = meanflow_loss(model, x0, x1, r, t, y=y)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    plain_loss, plain_grads = run()
    model.set_grad_checkpointing(True)
    loss, checkpointed = run()
    torch.testing.assert_close(loss, plain_loss)
    for a, b in zip(plain_grads, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_jvp_under_bf16_autocast():
    """With PyTorch's own conv jvp, autocast fails (the tangent stays float32 against bfloat16 weights);
    with fmcli.models.forward_ad's it runs, within bfloat16 rounding of the float32 answer."""
    model = tiny("unet", num_classes=3)
    x, v = inputs("unet", 3)
    r, t, y = torch.tensor([0.1, 0.5, 0.2]), torch.tensor([0.3, 0.6, 0.9]), torch.tensor([0, 1, 2])

    def u_fn(x, r, t):
        return model(x, t, y, r=r)

    u32, target32 = meanflow_target(u_fn, x, r, t, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u, target = meanflow_target(u_fn, x, r, t, v)
    assert u.dtype == torch.bfloat16
    assert (u.float() - u32).abs().max() < 0.05 * u32.abs().max()
    assert (target.float() - target32).abs().max() < 0.05 * target32.abs().max()


@pytest.mark.parametrize("layer", ["conv", "conv-strided", "group_norm"])
@pytest.mark.parametrize("parameter_tangents", [False, True])
def test_cheap_forward_mode_layers_equal_pytorchs(layer, parameter_tangents, monkeypatch):
    """fmcli.models.forward_ad's Conv2d / GroupNorm: the same tangent and gradients as PyTorch's formulas,
    with and without tangents on the parameters (then the full product rule applies)."""
    torch.manual_seed(0)
    module = {
        "conv": lambda: forward_ad.Conv2d(4, 6, 3, padding=1),
        "conv-strided": lambda: forward_ad.Conv2d(4, 4, 3, stride=2, padding=1),
        "group_norm": lambda: forward_ad.GroupNorm(2, 4),
    }[layer]().double()
    randomise(module)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))  # GroupNorm starts at weight 1, bias 0
    x, dx = torch.randn(2, 4, 6, 6, dtype=F64), torch.randn(2, 4, 6, 6, dtype=F64)
    params = dict(module.named_parameters())
    tangents = {k: torch.randn_like(p) if parameter_tangents else torch.zeros_like(p) for k, p in params.items()}

    def run():
        if parameter_tangents:
            fn = lambda x, p: torch.func.functional_call(module, p, (x,))  # noqa: E731
            out, out_t = torch.func.jvp(fn, (x, params), (dx, tangents))
        else:
            out, out_t = torch.func.jvp(module, (x,), (dx,))
        module.zero_grad()
        (out * torch.sin(out.detach())).sum().backward()
        return out_t.detach(), [p.grad.clone() for p in module.parameters()]

    cheap_t, cheap_grads = run()
    monkeypatch.setattr(forward_ad, "in_forward_ad", lambda x: False)  # PyTorch's own formulas
    builtin_t, builtin_grads = run()
    torch.testing.assert_close(cheap_t, builtin_t, rtol=1e-10, atol=1e-12)
    for a, b in zip(cheap_grads, builtin_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# --- the interval input ---------------------------------------------------------------------------


def _state_dict_summary(model: nn.Module) -> tuple[int, int, str]:
    state = model.state_dict()
    keys = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    return len(state), sum(v.numel() for v in state.values()), hashlib.sha256(keys.encode()).hexdigest()[:16]


def test_models_without_the_interval_input_are_todays_models():
    """Key names and shapes as before the interval input existed (measured on the commit before it), so
    existing checkpoints load with strict=True; the config gains no key."""
    preset_0_1_0 = {"base_channels": 24, "channel_mults": [1, 2, 2], "num_res_blocks": 1, "attention_resolutions": [7]}
    unet_config = default_model_config("image", (1, 28, 28), 10, "cpu") | preset_0_1_0  # the 28 px CPU preset then
    mlp_config = default_model_config("points", (2,), 0, "cpu")
    unet, mlp = build_model(unet_config), build_model(mlp_config)
    assert _state_dict_summary(unet) == (167, 672721, "9a69d3a13280fa67")
    assert _state_dict_summary(mlp) == (32, 889602, "16c01672854554d5")
    assert unet.config == unet_config and mlp.config == mlp_config and "interval" not in unet.config
    for config, model in ((unet_config, unet), (mlp_config, mlp)):
        with_interval = build_model(config | {"interval": True})
        # an interval model records its interval scale; one built from a 0.1 config (no key) gets 0.1's 1000
        assert with_interval.config == config | {"interval": True, "interval_scale": 1000.0}
        added = set(with_interval.state_dict()) - set(model.state_dict())
        assert added and all(key.startswith("embedding.interval_mlp.") for key in added)
        assert set(model.state_dict()) < set(with_interval.state_dict())
        build_model(dict(with_interval.config)).load_state_dict(with_interval.state_dict(), strict=True)


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_a_fresh_interval_model_equals_the_same_weights_without_it_for_any_r(kind):
    plain = tiny(kind, interval=False)
    model = (UNet(**TINY_UNET, interval=True) if kind == "unet" else MLPVelocity(**TINY_MLP, interval=True)).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("interval_mlp" in key for key in missing)
    x, _ = inputs(kind, 3)
    t = torch.tensor([0.2, 0.7, 1.0])
    with torch.no_grad():
        reference = plain(x, t)
        for r in (None, t, torch.tensor([0.0, 0.1, 0.5]), 0.0, torch.tensor(0.2)):
            assert torch.equal(model(x, t, r=r), reference), r


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_r_none_is_r_equal_t_and_r_broadcasts_like_t(kind):
    model = tiny(kind)  # interval_mlp randomised too: as after training, r now matters
    x, _ = inputs(kind, 4)
    t = torch.tensor([0.3, 0.5, 0.8, 0.9])
    r = torch.tensor([0.1, 0.2, 0.3, 0.4])
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t, r=t))  # u(x, t, t) = v(x, t)
        assert (model(x, t, r=r) - model(x, t)).abs().max() > 1e-4
        torch.testing.assert_close(model(x, t, r=torch.tensor(0.2)), model(x, t, r=torch.full((4,), 0.2)))
        torch.testing.assert_close(model(x, t, r=0.2), model(x, t, r=torch.full((4,), 0.2)))
        torch.testing.assert_close(model(x, torch.tensor(0.9), r=torch.tensor([0.2])), model(x, 0.9, r=0.2))
        changed = r.clone()
        changed[2] = 0.0
        diff = (model(x, t, r=changed) - model(x, t, r=r)).flatten(1).abs().amax(1)
    assert diff[2] > 1e-4 and torch.all(diff[[0, 1, 3]] < 1e-6)


def test_interval_input_errors():
    x, t = torch.randn(2, 3), torch.tensor([0.5, 0.5])
    with pytest.raises(FMError, match="^this model has no interval input; it was not trained for few-step sampling$"):
        MLPVelocity(**TINY_MLP)(x, t, r=torch.zeros(2))
    with pytest.raises(FMError, match="no interval input"):
        UNet(**TINY_UNET)(torch.randn(2, 1, 16, 16), t, r=0.0)
    model = MLPVelocity(**TINY_MLP, interval=True)
    with pytest.raises(FMError, match="must not exceed t"):
        model(x, t, r=torch.tensor([0.2, 0.6]))
    with pytest.raises(FMError, match=r"shape \[2\]"):
        model(x, t, r=torch.zeros(3))


# --- sampling intervals and the loss -------------------------------------------------------------


def test_sample_interval():
    gen = torch.Generator().manual_seed(0)
    r, t = sample_interval(100_000, equal_fraction=0.25, method="uniform", generator=gen)
    assert (r <= t).all() and (0 <= r).all() and (t < 1).all()
    equal = r == t
    assert abs(equal.float().mean().item() - 0.25) < 0.01
    # r < t: the min and max of two uniforms, means 1/3 and 2/3
    assert abs(r[~equal].mean().item() - 1 / 3) < 0.01 and abs(t[~equal].mean().item() - 2 / 3) < 0.01
    r, t = sample_interval(1000, equal_fraction=0.0, method="logit-normal", mean=-0.4, std=1.0, generator=gen)
    assert (r < t).all()
    r, t = sample_interval(1000, equal_fraction=1.0, generator=gen)
    assert torch.equal(r, t)
    with pytest.raises(ValueError, match="equal_fraction"):
        sample_interval(4, equal_fraction=1.5)


def test_meanflow_loss_vanishes_for_the_exact_average_velocity_of_a_teacher():
    """Distillation: with the teacher's v* as ``velocity`` and the model u*, the loss is 0 for every (r, t).
    With the conditional v = x1 - x0 instead, it is not (the identity holds for v* only in expectation)."""
    gen = torch.Generator().manual_seed(0)
    n = 256
    x0 = MEAN + torch.randn(n, 3, dtype=F64, generator=gen) @ torch.linalg.cholesky(COV).T
    x1 = torch.randn(n, 3, dtype=F64, generator=gen)
    r, t = sample_interval(n, equal_fraction=0.25, method="uniform", generator=gen)
    r, t = r.double(), t.double()
    model = lambda x, t, r: FLOW.average_velocity(x, r, t)  # noqa: E731
    teacher = exact_v(interpolate(x0, x1, t), t)
    loss, mse = meanflow_loss(model, x0, x1, r, t, velocity=teacher, weighting_power=0.0)
    assert loss.item() < 1e-20 and mse.item() < 1e-20
    loss, mse = meanflow_loss(model, x0, x1, r, t, weighting_power=0.0)
    assert mse.item() > 0.1


def test_adaptive_weighting():
    """A model off by c_i per coordinate at r = t: L_i = D c_i^2, loss = mean(L / (L + eps)^p), mse = mean(c^2)."""
    c = torch.tensor([0.01, 0.1, 1.0, 3.0], dtype=F64)
    x0, x1 = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    t = torch.rand(4, dtype=F64)
    model = lambda x, t, r: (x1 - x0) + c[:, None]  # noqa: E731
    per_sample = 3 * c**2
    for p in (0.0, 0.5, 1.0):
        loss, mse = meanflow_loss(model, x0, x1, t, t, weighting_power=p, eps=1e-3)
        torch.testing.assert_close(loss, (per_sample / (per_sample + 1e-3) ** p).mean().float())
        torch.testing.assert_close(mse, (c**2).mean().float())


def test_split_batch_equals_one_jvp_over_the_whole_batch():
    """meanflow_loss sends r = t samples through a plain forward pass; the per-sample errors (and the
    loss) are those of one jvp over the whole batch, and labels follow their samples."""
    model = tiny("mlp", num_classes=3).double()
    x0, x1 = inputs("mlp", 6, F64)
    r = torch.tensor([0.1, 0.5, 0.0, 0.9, 0.2, 0.0], dtype=F64)
    t = torch.tensor([0.3, 0.5, 1.0, 0.9, 0.7, 0.0], dtype=F64)
    y = torch.tensor([0, 2, 1, 1, 3, 2])
    loss, mse = meanflow_loss(model, x0, x1, r, t, y=y, weighting_power=0.5)
    u, target = meanflow_target(lambda x, r, t: model(x, t, y, r=r), interpolate(x0, x1, t), r, t, x1 - x0)
    per_sample = (u - target).pow(2).sum(1)
    torch.testing.assert_close(loss, (per_sample / (per_sample.detach() + 1e-3) ** 0.5).mean().float())
    torch.testing.assert_close(mse, (u - target).pow(2).mean().float())


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_backward_through_meanflow_loss_gives_finite_gradients_for_every_parameter(kind):
    torch.manual_seed(0)
    model = (
        UNet(**TINY_UNET, num_classes=3, interval=True)
        if kind == "unet"
        else MLPVelocity(**TINY_MLP, num_classes=3, interval=True)
    ).train()  # fresh, as in training
    x0, x1 = inputs(kind, 4)
    r, t = torch.tensor([0.1, 0.4, 0.0, 0.5]), torch.tensor([0.6, 0.4, 1.0, 0.8])
    loss, mse = meanflow_loss(model, x0, x1, r, t, y=torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(mse)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    if kind == "mlp":  # (a fresh U-Net's zero output conv passes no gradient back yet)
        assert model.embedding.interval_mlp[-1].weight.grad.abs().sum() > 0  # r < t samples reach it
