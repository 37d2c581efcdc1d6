import itertools
import math

import pytest
import torch

import diffode
from diffode import EpsField, Euler, StepInfo, oracles, sample, sigma_grid, solve
from diffode.solvers import get_solver, solver_names
from tests.helpers import slope, wavy_model


def test_solve_serves_any_ode_and_runs_in_both_directions():
    # dx/dσ = x has x(σ) = x0 exp(σ - σ0); Euler gives x0 (1 + h)^N exactly
    f = lambda s, x: x  # noqa: E731
    x0 = torch.ones(1, 3, dtype=torch.float64)
    grid = torch.linspace(0.1, 1.1, 11, dtype=torch.float64)
    out = solve(f, x0, grid, "euler")
    assert out.nfe == 10
    torch.testing.assert_close(out.x, x0 * 1.1**10, rtol=1e-13, atol=0)
    back = solve(f, x0, grid.flip(0), Euler())
    torch.testing.assert_close(back.x, x0 * 0.9**10, rtol=1e-13, atol=0)


def test_an_increasing_grid_leaves_zero_without_evaluating_there():
    # the first step of [0, σ1, …] is the explicit lift x̄1 = x0 + σ1 f(σ1, x0), then the solver
    seen = []

    def f(s, x):
        seen.append(s)
        return -x

    x0 = torch.ones(1, 2, dtype=torch.float64)
    out = solve(f, x0, torch.tensor([0.0, 0.5, 1.5], dtype=torch.float64), "euler")
    assert seen == [0.5, 0.5] and out.nfe == 2
    lifted = x0 * (1 - 0.5)
    torch.testing.assert_close(out.x, lifted * (1 - 1.0), rtol=0, atol=0)


def test_final_step_never_evaluates_at_zero(linear):
    seen = []

    def f(s, x):
        seen.append(s)
        return x

    grid = torch.tensor([2.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    out = solve(f, torch.ones(2, 1, dtype=torch.float64), grid)
    assert seen == [2.0, 1.0, 0.5] and out.nfe == 3
    # the last step lands on x̂₀ = x̄ - σ f(σ, x̄)
    assert float(out.x[0, 0]) == pytest.approx(1 * (1 - 1.0) * (1 - 0.5) * (1 - 0.5))


def test_callback_and_saved_states(linear):
    field = EpsField(wavy_model(), linear)
    infos: list[StepInfo] = []
    noise = torch.randn(2, 3, dtype=torch.float64)
    grid = torch.tensor([10.0, 5.0, 1.0, 0.0], dtype=torch.float64)
    out = solve(field, noise, grid, callback=infos.append, save=True)
    assert [(i.index, i.sigma, i.sigma_next, i.nfe) for i in infos] == [
        (0, 10.0, 5.0, 1),
        (1, 5.0, 1.0, 2),
        (2, 1.0, 0.0, 3),
    ]
    assert out.xs is not None and out.xs.shape == (4, 2, 3)
    assert (
        torch.equal(out.xs[0], noise)
        and torch.equal(out.xs[-1], out.x)
        and torch.equal(infos[1].x, out.xs[2])
    )
    assert out.nfe == 3


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp-2m", "bosh3", "dopri5"])
def test_callback_sees_the_denoised_estimate_at_each_step_start(linear, solver):
    # StepInfo.denoised is the field's own x̂0 at (σ_i, x_i): from the step's first evaluation, or
    # carried over from the previous step's last one when an FSAL solver evaluates nothing there
    field = EpsField(wavy_model(), linear)
    infos: list[StepInfo] = []
    noise = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    out = solve(field, noise, grid, solver, callback=infos.append, save=True)
    assert out.xs is not None
    for info, start in zip(infos, out.xs[:-1], strict=True):
        assert info.denoised is not None
        torch.testing.assert_close(info.denoised, field.denoised(info.sigma, start), rtol=1e-12, atol=1e-12)


def test_callback_denoised_is_none_for_a_plain_callable():
    infos: list[StepInfo] = []
    solve(lambda s, x: -x, torch.ones(1, 2), torch.tensor([2.0, 1.0, 0.0]), callback=infos.append)
    assert [i.denoised for i in infos] == [None, None]


def test_state_keeps_dtype_and_float64_grid(linear):
    oracle = oracles.Gaussian(torch.zeros(2), 0.5)
    grid = sigma_grid(linear, 5)
    reference = solve(EpsField(oracle.model(linear), linear), torch.ones(4, 2, dtype=torch.float64), grid).x
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = sample(oracle.model(linear), linear, torch.randn(4, 2).to(dtype), steps=5)
        assert x.dtype == dtype and bool(torch.isfinite(x).all())
        # a float32 grid given by the caller is followed in float64, the state stays in its dtype
        out = solve(EpsField(oracle.model(linear), linear), torch.ones(4, 2, dtype=dtype), grid.float())
        assert out.sigmas.dtype == torch.float64 and out.x.dtype == dtype
        # rounding only: of σ to float32 (6e-8) and of the state, 2^-8 per step in bfloat16 and
        # 2^-24 per operation in float32 (5 steps of a few operations each)
        tol = 5 * 2.0**-8 if dtype == torch.bfloat16 else 1e-6
        torch.testing.assert_close(out.x.double(), reference, rtol=tol, atol=tol)


def test_model_sees_reference_timesteps_and_float_t(linear):
    calls = []

    def model(x, t):
        calls.append(t.clone())
        return torch.zeros_like(x)

    sample(model, linear, torch.randn(3, 2), steps=4)
    assert [c.tolist() for c in calls] == [[750.0] * 3, [500.0] * 3, [250.0] * 3, [0.0] * 3]
    assert all(c.dtype == torch.float32 and c.shape == (3,) for c in calls)


def test_batch_equals_single_solves(linear):
    field = EpsField(wavy_model(), linear)
    x = torch.randn(5, 3, dtype=torch.float64)
    grid = torch.tensor([20.0, 3.0, 0.7, 0.0], dtype=torch.float64)
    batch = solve(field, x, grid).x
    singles = torch.cat([solve(field, x[i : i + 1], grid).x for i in range(5)])
    torch.testing.assert_close(batch, singles, rtol=0, atol=0)


def test_per_sample_sigma_in_the_field(linear):
    field = EpsField(wavy_model(), linear)
    x = torch.randn(3, 2, dtype=torch.float64)
    sig = torch.tensor([0.5, 2.0, 9.0], dtype=torch.float64)
    together = field(sig, x)
    apart = torch.cat([field(float(s), x[i : i + 1]) for i, s in enumerate(sig)])
    torch.testing.assert_close(together, apart, rtol=1e-15, atol=1e-15)


def test_gaussian_flow_is_exact_solution():
    oracle = oracles.Gaussian(torch.tensor([1.0, 2.0]), 0.3)
    x = torch.randn(4, 2, dtype=torch.float64)
    s0, s1, h = 5.0, 2.0, 1e-6
    # the closed-form flow satisfies dx̄/dσ = ε*(x̄, σ)
    mid = oracle.flow(x, s0, s1)
    deriv = (oracle.flow(x, s0, s1 + h) - oracle.flow(x, s0, s1 - h)) / (2 * h)
    torch.testing.assert_close(deriv, oracle.eps(s1, mid), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(oracle.flow(mid, s1, s0), x, rtol=1e-14, atol=1e-14)


def test_mixture_eps_is_the_score_of_its_marginal():
    oracle = oracles.GaussianMixture.ring(k=5)
    x = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    sigma = 0.8
    logp = oracle.log_prob(x, sigma).sum()
    (score,) = torch.autograd.grad(logp, x)
    # ε* = -σ ∇ log p_σ(x̄)
    torch.testing.assert_close(oracle.eps(sigma, x.detach()), -sigma * score, rtol=1e-12, atol=1e-12)


def test_mixture_with_one_component_is_the_gaussian():
    g = oracles.Gaussian(torch.tensor([0.3, -0.2]), 0.5)
    m = oracles.GaussianMixture(torch.ones(1), g.mean[None], torch.tensor([0.5]))
    x = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(m.eps(1.7, x), g.eps(1.7, x), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(m.log_prob(x, 0.4), g.log_prob(x, 0.4), rtol=1e-14, atol=1e-14)


def test_oracle_samples_have_the_data_moments():
    oracle = oracles.GaussianMixture.ring()
    x = oracle.sample(50000, torch.Generator().manual_seed(0))
    assert x.shape == (50000, 2)
    # ring of radius 2 with 8 equal modes: mean 0, E|x|² = r² + 2c²
    assert float(x.mean(0).abs().max()) < 5 * 2 / math.sqrt(50000)
    assert float(x.pow(2).sum(1).mean()) == pytest.approx(4 + 2 * 0.15**2, rel=0.02)


def test_solver_names_resolve():
    assert {"euler", "ddim"} <= set(solver_names())
    assert isinstance(get_solver("euler"), Euler)


def test_euler_order_on_mixture_against_fine_solution(linear):
    field = oracles.GaussianMixture.ring()
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20
    ref = solve(field, x, torch.logspace(math.log10(20), math.log10(0.05), 20001, dtype=torch.float64)).x
    steps, errors = [25, 50, 100, 200], []
    for n in steps:
        errors.append(
            float(
                (
                    solve(
                        field, x, torch.logspace(math.log10(20), math.log10(0.05), n + 1, dtype=torch.float64)
                    ).x
                    - ref
                )
                .abs()
                .max()
            )
        )
    assert abs(-slope(steps, errors) - 1.0) <= 0.15, errors


def test_gradients_flow_through_the_sampler(linear):
    # on the Gaussian oracle each Euler step scales x̄ - μ by 1 + hσ₀/(c² + σ₀²), so the Jacobian
    # of sample() with respect to the noise is a known scalar
    c = 0.5
    oracle = oracles.Gaussian(torch.tensor([0.3, -0.2]), c)
    noise = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    x = sample(oracle.model(linear), linear, noise, steps=7, timesteps="trailing", grad=True)
    x.sum().backward()
    grid = diffode.sigma_grid(linear, 7, "trailing").tolist()
    expected = math.sqrt(1 + grid[0] ** 2)
    for s0, s1 in itertools.pairwise(grid):
        expected *= 1 + (s1 - s0) * s0 / (c * c + s0 * s0)
    assert noise.grad is not None
    torch.testing.assert_close(noise.grad, torch.full_like(noise, expected), rtol=1e-12, atol=0)
