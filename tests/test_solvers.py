"""Every registered solver, checked on ODEs with known answers.

Parametrised over ``fmcli.registry.solvers()``, so a plugged-in solver is covered too when its
plugin is loaded (tests/test_example_plugin.py re-uses the checks for the example plugin).
All computations are float64 so that discretisation error, not rounding, is measured.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from fmcli import registry
from fmcli.errors import FMError
from fmcli.flow.gaussian import GaussianFlow
from fmcli.sampling.solvers.base import Integration, needs_interval
from fmcli.sampling.solvers.grids import TIME_GRIDS, make_time_grid

BUILTIN_SOLVERS = (
    "euler",
    "midpoint",
    "heun",
    "rk4",
    "rk45",
    "dopri5",
    "dopri8",
    "bosh3",
    "adaptive_heun",
    "fehlberg2",
)
EXPECTED_ORDER = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "ab2": 2}
# NFE for N steps; a plugged-in fixed-step solver not listed here must report steps * evals_per_step.
EXPECTED_NFE = {
    "euler": lambda n: n,
    "midpoint": lambda n: 2 * n,
    "heun": lambda n: 2 * n,
    "rk4": lambda n: 4 * n,
    "ab2": lambda n: n + 1,
}
# Adaptive solvers' global error, in units of rtol = atol. Measured on the nonlinear ODE below:
# rk45 2-3, dopri5 2-5, dopri8 < 2, bosh3 7-8, adaptive_heun 4; fehlberg2 ~400 (its embedded
# error estimate is that of a 1st-order method weighted by 1/512, so it under-reports the error).
ADAPTIVE_ERROR_FACTOR = {"fehlberg2": 1000.0}
DEFAULT_ADAPTIVE_ERROR_FACTOR = 20.0
# States at save_at times come from the solvers' dense-output interpolants, which are less accurate
# than the steps. Measured at rtol = atol = 1e-6 (error / tol): adaptive_heun 2, rk45 14, dopri5 17,
# bosh3 400, dopri8 650 (long steps, 4th-order interpolant), fehlberg2 260.
INTERPOLATION_ERROR_FACTOR = {"bosh3": 2000.0, "dopri8": 2000.0, "fehlberg2": 2000.0}
DEFAULT_INTERPOLATION_ERROR_FACTOR = 50.0

# ODE solvers of dx/dt = v(x, t). Samplers that need an interval model (meanflow: velocity(x, t, r=...))
# are not ODE solvers of v; tests/test_meanflow.py checks them against the exact average velocity.
ALL = sorted(name for name, solver in registry.solvers().items() if not needs_interval(solver))
FIXED = [name for name in ALL if not registry.get_solver(name).adaptive]
ADAPTIVE = [name for name in ALL if registry.get_solver(name).adaptive]


# --- ODEs with known solutions ---------------------------------------------------------------

A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)  # rotation + decay
B = torch.tensor([1.0, -2.0], dtype=torch.float64)


def linear_velocity(x, t):
    """dx/dt = A x + b t: non-autonomous, so a solver that evaluates at the wrong t is caught."""
    return x @ A.T + t * B


def linear_exact(x, t0, t1):
    """x(t1) = expm(A (t1 - t0)) (x(t0) - p(t0)) + p(t1), with the particular solution p(t) = alpha t + beta."""
    alpha = -torch.linalg.solve(A, B)
    beta = torch.linalg.solve(A, alpha)
    p = lambda t: alpha * t + beta  # noqa: E731
    return (x - p(t0)) @ torch.linalg.matrix_exp(A * (t1 - t0)).T + p(t1)


def nonlinear_velocity(x, t):
    """A damped, forced pendulum: x0' = x1, x1' = -2 sin x0 - 0.3 x1 + 0.5 cos 2t."""
    return torch.stack([x[:, 1], -2 * torch.sin(x[:, 0]) - 0.3 * x[:, 1] + 0.5 * torch.cos(2 * t)], dim=1)


def nonlinear_reference(x, t0, t1):
    """Each sample solved separately by scipy's DOP853 at rtol 1e-10."""

    def rhs(t, y):
        return np.array([y[1], -2 * np.sin(y[0]) - 0.3 * y[1] + 0.5 * np.cos(2 * t)])

    ends = [solve_ivp(rhs, (t0, t1), row, method="DOP853", rtol=1e-10, atol=1e-12).y[:, -1] for row in x.numpy()]
    return torch.tensor(np.array(ends))


def start_points(n=6, seed=0):
    return 1.5 * torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def observed_order(solver, steps=(10, 20, 40, 80), t_start=1.0, t_end=0.0, time_grid="uniform"):
    """Slope of -log(error) against log(steps), fitted over several step counts."""
    x = start_points()
    exact = linear_exact(x, t_start, t_end)
    errors = [
        (
            solver.solve(linear_velocity, x, Integration(t_start=t_start, t_end=t_end, steps=n, time_grid=time_grid)).x
            - exact
        )
        .abs()
        .max()
        .item()
        for n in steps
    ]
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    return -slope


def fixed_step_tolerance(solver, steps):
    """Stated accuracy of a fixed-step solver on the pendulum: 10 h^order (measured constants are 0.1-3)."""
    return 10.0 * (1.0 / steps) ** solver.order


def adaptive_tolerance(solver, tol):
    return ADAPTIVE_ERROR_FACTOR.get(solver.name, DEFAULT_ADAPTIVE_ERROR_FACTOR) * tol


# --- Gaussian data: the exact flow in closed form ---------------------------------------------

GAUSS_MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
GAUSS_COV = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)  # correlated; eigenvalues 1.39, 0.11


def gaussian_exact_transport(x1, mean=GAUSS_MEAN, cov=GAUSS_COV):
    """The flow of v* maps noise x1 to x0 = Sigma^{1/2} x1 + mu (symmetric root).

    In Sigma's eigenbasis y = x - m_t obeys dy/dt = (t - (1-t) s^2) / S_t y = (1/2) d log S_t/dt y
    with S_t = (1-t)^2 s^2 + t^2, so y(0) = sqrt(S_0 / S_1) y(1) = s y(1).
    """
    eigenvalues, vectors = torch.linalg.eigh(cov)
    root = vectors @ torch.diag(eigenvalues.sqrt()) @ vectors.T
    return x1 @ root.T + mean


def gaussian_noise(n, seed=0):
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def check_gaussian_samples(solver, n=5000, steps=100):
    """N(0, I) noise -> samples whose mean and covariance match the data's within sampling error."""
    flow = GaussianFlow(GAUSS_MEAN, GAUSS_COV)
    x1 = gaussian_noise(n)
    x0 = solver.solve(flow.velocity, x1, Integration(t_start=1.0, t_end=0.0, steps=steps)).x
    # Standard errors: mean_i: sqrt(S_ii / n); cov_ij: sqrt((S_ii S_jj + S_ij^2) / n).
    var = torch.diag(GAUSS_COV)
    mean_se = (var / n).sqrt()
    cov_se = ((var[:, None] * var[None, :] + GAUSS_COV**2) / n).sqrt()
    assert ((x0.mean(0) - GAUSS_MEAN).abs() < 4 * mean_se).all(), (x0.mean(0), GAUSS_MEAN)
    assert ((torch.cov(x0.T) - GAUSS_COV).abs() < 4 * cov_se).all(), (torch.cov(x0.T), GAUSS_COV)
    return x1, x0


def gaussian_transport_error(solver, steps, n=500):
    flow = GaussianFlow(GAUSS_MEAN, GAUSS_COV)
    x1 = gaussian_noise(n, seed=1)
    x0 = solver.solve(flow.velocity, x1, Integration(steps=steps)).x
    return (x0 - gaussian_exact_transport(x1)).abs().max().item()


# --- tests --------------------------------------------------------------------------------------


def test_builtins_are_registered_with_their_attributes():
    table = registry.solvers()
    assert set(BUILTIN_SOLVERS) <= set(table)
    for name in BUILTIN_SOLVERS:
        solver = table[name]
        assert solver.name == name and solver.description
        assert solver.adaptive == (name not in EXPECTED_ORDER)
        if not solver.adaptive:
            assert solver.order == EXPECTED_ORDER[name]
            assert EXPECTED_NFE[name](1) == solver.evals_per_step


@pytest.mark.parametrize("name", FIXED)
@pytest.mark.parametrize("direction", [(1.0, 0.0), (0.0, 1.0)], ids=["1to0", "0to1"])
@pytest.mark.parametrize("time_grid", TIME_GRIDS)
def test_fixed_step_order_of_convergence(name, direction, time_grid):
    solver = registry.get_solver(name)
    order = observed_order(solver, t_start=direction[0], t_end=direction[1], time_grid=time_grid)
    assert abs(order - EXPECTED_ORDER.get(name, solver.order)) < 0.3, order


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("direction", [(1.0, 0.0), (0.0, 1.0)], ids=["1to0", "0to1"])
def test_linear_ode_both_directions(name, direction):
    solver = registry.get_solver(name)
    x = start_points()
    result = solver.solve(
        linear_velocity, x, Integration(t_start=direction[0], t_end=direction[1], steps=100, rtol=1e-6, atol=1e-6)
    )
    error = (result.x - linear_exact(x, *direction)).abs().max().item()
    tolerance = adaptive_tolerance(solver, 1e-6) if solver.adaptive else fixed_step_tolerance(solver, 100)
    assert error < tolerance


@pytest.mark.parametrize("name", ALL)
def test_nonlinear_ode_matches_tight_reference(name):
    solver = registry.get_solver(name)
    x = start_points()
    reference = nonlinear_reference(x, 1.0, 0.0)
    if solver.adaptive:
        loose, tight = 1e-4, 1e-6
        error = (
            (solver.solve(nonlinear_velocity, x, Integration(rtol=tight, atol=tight)).x - reference).abs().max().item()
        )
        assert error < adaptive_tolerance(solver, tight)
        # Error control is real: a looser tolerance gives a larger error.
        loose_error = (
            (solver.solve(nonlinear_velocity, x, Integration(rtol=loose, atol=loose)).x - reference).abs().max().item()
        )
        assert loose_error > error
    else:
        error = (solver.solve(nonlinear_velocity, x, Integration(steps=100)).x - reference).abs().max().item()
        assert error < fixed_step_tolerance(solver, 100)


@pytest.mark.parametrize("name", ALL)
def test_gaussian_flow_carries_noise_to_the_data_distribution(name):
    solver = registry.get_solver(name)
    x1, x0 = check_gaussian_samples(solver)
    error = (x0 - gaussian_exact_transport(x1)).abs().max().item()
    tolerance = adaptive_tolerance(solver, 1e-5) * 10 if solver.adaptive else fixed_step_tolerance(solver, 100)
    assert error < tolerance


@pytest.mark.parametrize("name", FIXED)
def test_gaussian_transport_error_shrinks_with_more_steps(name):
    solver = registry.get_solver(name)
    errors = [gaussian_transport_error(solver, steps) for steps in (4, 8, 16, 32)]
    assert all(finer < coarser for coarser, finer in itertools.pairwise(errors)), errors


@pytest.mark.parametrize("name", ALL)
def test_batch_equals_samples_one_at_a_time(name):
    solver = registry.get_solver(name)
    x = start_points(5)
    batch = solver.solve(nonlinear_velocity, x, Integration(steps=30, rtol=1e-5, atol=1e-5)).x
    singles = torch.cat(
        [solver.solve(nonlinear_velocity, row[None], Integration(steps=30, rtol=1e-5, atol=1e-5)).x for row in x]
    )
    # Fixed steps: the same arithmetic. Adaptive: one step size for the batch, equal within tolerance.
    tolerance = 2 * adaptive_tolerance(solver, 1e-5) if solver.adaptive else 1e-12
    assert (batch - singles).abs().max().item() < tolerance


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("direction", [(1.0, 0.0), (0.0, 1.0)], ids=["1to0", "0to1"])
def test_save_at_trajectory(name, direction):
    solver = registry.get_solver(name)
    t_start, t_end = direction
    x = start_points()
    calls = {"plain": 0, "saved": 0}

    def counted(key):
        def velocity(x, t):
            calls[key] += 1
            return nonlinear_velocity(x, t)

        return velocity

    options = dict(t_start=t_start, t_end=t_end, steps=50, rtol=1e-6, atol=1e-6)
    plain = solver.solve(counted("plain"), x, Integration(**options))
    requested = [0.35, t_end, 0.7, t_start]  # unsorted on purpose
    saved = solver.solve(counted("saved"), x, Integration(save_at=requested, **options))

    assert saved.times.tolist() == sorted(requested, reverse=t_start > t_end)
    assert saved.trajectory.shape == (4, *x.shape)
    assert saved.trajectory.device.type == "cpu"
    assert torch.equal(saved.trajectory[0], x)  # the state at t_start is the input itself
    assert torch.equal(saved.trajectory[-1], saved.x.cpu())
    assert torch.allclose(saved.x, plain.x, rtol=0, atol=1e-12)  # saving does not change the solve
    assert calls["saved"] == calls["plain"] == plain.nfe == saved.nfe
    # Intermediate states are right (fixed steps: linear interpolation between grid states).
    for index, time in ((1, 0.7 if t_start > t_end else 0.35), (2, 0.35 if t_start > t_end else 0.7)):
        reference = nonlinear_reference(x, t_start, time)
        if solver.adaptive:
            tolerance = INTERPOLATION_ERROR_FACTOR.get(name, DEFAULT_INTERPOLATION_ERROR_FACTOR) * 1e-6
        else:
            tolerance = fixed_step_tolerance(solver, 50) + 1e-3  # + linear interpolation, (h/2)^2 |x''| / 2
        assert (saved.trajectory[index] - reference).abs().max().item() < tolerance


@pytest.mark.parametrize("name", ALL)
def test_save_at_outside_the_interval_is_refused(name):
    with pytest.raises(FMError, match="outside"):
        registry.get_solver(name).solve(linear_velocity, start_points(), Integration(steps=4, save_at=[0.5, 1.5]))


@pytest.mark.parametrize("name", ALL)
def test_conditioning_reaches_the_velocity_untouched(name):
    token, guidance = object(), torch.tensor([3])
    seen = []

    def velocity(x, t, *, label, scale):
        assert label is token and scale is guidance
        assert t.dim() == 0 and t.device == x.device and t.dtype == x.dtype
        seen.append(float(t))
        return linear_velocity(x, t)

    result = registry.get_solver(name).solve(
        velocity, start_points(), Integration(steps=5), conditioning={"label": token, "scale": guidance}
    )
    assert len(seen) == result.nfe > 0
    assert all(0.0 <= t <= 1.0 for t in seen)


@pytest.mark.parametrize("name", ALL)
def test_reported_nfe_counts_every_evaluation(name):
    solver = registry.get_solver(name)
    calls = []

    def velocity(x, t):
        calls.append(t)
        return linear_velocity(x, t)

    steps = 7
    result = solver.solve(velocity, start_points(), Integration(steps=steps))
    assert result.nfe == len(calls)
    if not solver.adaptive:
        expected = EXPECTED_NFE.get(name, lambda n: n * solver.evals_per_step)(steps)
        assert result.nfe == expected


def test_float32_state_gets_float32_times_and_stays_float32():
    x = start_points().float()

    def velocity(x, t):
        assert x.dtype == t.dtype == torch.float32
        return linear_velocity(x.double(), t.double()).float()

    for name in ALL:
        solver = registry.get_solver(name)
        result = solver.solve(velocity, x, Integration(steps=10))
        assert result.x.dtype == torch.float32, name
        in_float64 = solver.solve(linear_velocity, start_points(), Integration(steps=10)).x
        assert (result.x.double() - in_float64).abs().max().item() < 1e-3, name  # float32 rounding only


# --- time grids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TIME_GRIDS)
@pytest.mark.parametrize("direction", [(1.0, 0.0), (0.0, 1.0), (0.8, 0.1)])
def test_time_grid_endpoints_and_monotone(name, direction):
    t_start, t_end = direction
    grid = make_time_grid(name, 13, t_start, t_end, device="cpu")
    assert grid.shape == (14,)
    assert grid[0].item() == t_start and grid[-1].item() == t_end
    steps = grid.diff()
    assert (steps < 0).all() if t_start > t_end else (steps > 0).all()


@pytest.mark.parametrize("name", [g for g in TIME_GRIDS if g != "uniform"])
def test_non_uniform_grids_are_dense_near_the_data_end(name):
    # Sampling (1 -> 0): steps shrink toward t = 0. Likelihood (0 -> 1): they grow away from it.
    sampling = make_time_grid(name, 20, 1.0, 0.0).diff().abs()
    likelihood = make_time_grid(name, 20, 0.0, 1.0).diff().abs()
    assert (sampling.diff() < 0).all() and (likelihood.diff() > 0).all()
    assert sampling[-1] < 0.5 / 20 and likelihood[0] < 0.5 / 20
    assert torch.allclose(sampling.flip(0), likelihood)


def test_non_uniform_grid_helps_where_the_velocity_changes_fastest():
    """A near-degenerate data direction (variance 1e-3, like an image's flat background) makes v*
    change within t ~ 0.03 of the data end; a grid dense there is much more accurate for rk4."""
    rotation = torch.tensor([[0.8, -0.6], [0.6, 0.8]], dtype=torch.float64)
    cov = rotation @ torch.diag(torch.tensor([1.0, 1e-3], dtype=torch.float64)) @ rotation.T
    flow = GaussianFlow(GAUSS_MEAN, cov)
    x1 = gaussian_noise(500)
    exact = gaussian_exact_transport(x1, GAUSS_MEAN, cov)
    rk4 = registry.get_solver("rk4")
    errors = {
        grid: (rk4.solve(flow.velocity, x1, Integration(steps=10, time_grid=grid)).x - exact).norm(dim=1).mean().item()
        for grid in TIME_GRIDS
    }
    for grid in TIME_GRIDS:
        if grid != "uniform":
            assert errors[grid] < errors["uniform"] / 5, errors


def test_unknown_time_grid_and_bad_steps_are_refused():
    with pytest.raises(FMError, match="time grid"):
        make_time_grid("linear-ish", 10, 1.0, 0.0)
    with pytest.raises(FMError, match="steps"):
        registry.get_solver("euler").solve(linear_velocity, start_points(), Integration(steps=0))


def test_rk45_and_dopri5_agree():
    """Same Dormand-Prince tableau, on scipy (float64, CPU) and on torch: same answer within tolerance."""
    x = start_points()
    rk45 = registry.get_solver("rk45").solve(nonlinear_velocity, x, Integration(rtol=1e-7, atol=1e-7))
    dopri5 = registry.get_solver("dopri5").solve(nonlinear_velocity, x, Integration(rtol=1e-7, atol=1e-7))
    assert (rk45.x - dopri5.x).abs().max().item() < 2 * DEFAULT_ADAPTIVE_ERROR_FACTOR * 1e-7
    assert math.isclose(rk45.nfe, dopri5.nfe, rel_tol=0.5)
