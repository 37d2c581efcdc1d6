"""Deterministic DDIM is Euler's method on the σ-space ODE (reference §4), and the η family."""

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffode
from diffode import DDIM, EpsField, Euler, Schedule, oracles, sample, solve
from tests.helpers import ddim_reference_loop, reference_quad, reference_uniform, slope, wavy_model


@st.composite
def schedule_and_grid(draw):
    T = draw(st.integers(2, 200))
    betas = torch.tensor(draw(st.lists(st.floats(1e-4, 0.2), min_size=T, max_size=T)), dtype=torch.float64)
    ts = sorted(draw(st.sets(st.integers(0, T - 1), min_size=1, max_size=min(T, 30))), reverse=True)
    return Schedule.from_betas(betas), ts


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@given(case=schedule_and_grid(), seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 3.0))
def test_euler_step_is_closed_form_ddim_update(dtype, rtol, case, seed, scale):
    schedule, ts = case
    model = wavy_model(scale)
    field = EpsField(model, schedule)
    x_t = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    ac = torch.cat([schedule.alphas_cumprod, torch.ones(1, dtype=torch.float64)])  # ac[-1] = ᾱ_{-1} = 1
    for t, t_next in zip(ts, [*ts[1:], -1], strict=True):
        s0 = float(schedule.sigmas[t])
        s1 = 0.0 if t_next < 0 else float(schedule.sigmas[t_next])
        # DDIM in x-space (reference §4), float64
        a, a_next = ac[t], ac[t_next]
        eps = model(x_t.double(), torch.full((3,), float(t), dtype=torch.float64))
        x0 = (x_t.double() - (1 - a).sqrt() * eps) / a.sqrt()
        expected = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        # the same step as Euler in x̄, mapped back to x
        xbar = x_t * math.sqrt(1 + s0 * s0)
        xbar_next, _ = Euler().step(field, s0, s1, xbar, None)
        assert xbar_next.dtype == dtype
        # relative error in the ODE's own state x̄ (the quantity Euler rounds), float64 reference
        expected_bar = expected * math.sqrt(1 + s1 * s1)
        size = max(float(xbar.double().abs().max()), float(expected_bar.abs().max()))
        assert float((xbar_next.double() - expected_bar).abs().max()) <= rtol * size
        x_t = (xbar_next / math.sqrt(1 + s1 * s1)).to(dtype)


@pytest.mark.parametrize("S", [1, 2, 3, 5, 10, 20, 50, 100, 250, 500, 1000])
@pytest.mark.parametrize(
    "spacing, reference", [("uniform", reference_uniform), ("quadratic", reference_quad)]
)
def test_sample_equals_reference_generalized_steps(linear, S, spacing, reference):
    model = wavy_model()
    noise = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(S), dtype=torch.float64)
    seq = reference(1000, S)
    expected = ddim_reference_loop(model, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), seq, noise)
    got = sample(model, linear, noise, steps=S, timesteps=spacing, solver="euler")
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@given(case=schedule_and_grid())
def test_sample_equals_reference_on_random_schedules(case):
    schedule, ts = case
    model = wavy_model()
    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(len(ts)), dtype=torch.float64)
    betas = 1 - schedule.alphas_cumprod / torch.cat(
        [torch.ones(1, dtype=torch.float64), schedule.alphas_cumprod[:-1]]
    )
    expected = ddim_reference_loop(model, betas, sorted(ts), noise)
    got = sample(model, schedule, noise, timesteps=torch.tensor(ts))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_float32_sample_matches_reference(linear):
    model = wavy_model()
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    expected = ddim_reference_loop(
        model, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), reference_uniform(1000, 50), noise
    )
    got = sample(model, linear, noise, steps=50)
    assert got.dtype == torch.float32
    # both loops run in float32, in different coordinates: each of the 50 steps rounds a few
    # operations at 6e-8 of the state's size, 50 × 2 × 6e-8 = 6e-6 of the largest value in all
    # (measured 8.5e-7 relative, on values up to 271)
    bound = 6e-6 * float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=6e-6, atol=bound)


def test_euler_converges_at_order_one_on_the_gaussian_oracle(linear):
    oracle = oracles.Gaussian(torch.tensor([0.5, -1.0]), 0.2)
    field = EpsField(oracle.model(linear), linear)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * linear.sigma_max
    steps, errors = [8, 16, 32, 64, 128, 256], []
    for n in steps:
        grid = diffode.karras_sigmas(linear.sigma_min, linear.sigma_max, n + 1)
        got = solve(field, x, grid, "euler").x
        exact = oracle.flow(x, linear.sigma_max, linear.sigma_min)
        errors.append(float((got - exact).abs().max()))
    order = -slope(steps, errors)
    assert abs(order - 1.0) <= 0.15, (order, errors)


def test_ddim_eta_zero_is_bitwise_euler(linear):
    model = wavy_model()
    noise = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    a = sample(model, linear, noise, steps=17, timesteps="trailing", solver="euler")
    b = sample(model, linear, noise, steps=17, timesteps="trailing", solver="ddim", eta=0.0)
    c = sample(model, linear, noise, steps=17, timesteps="trailing", solver=DDIM(0.0))
    assert torch.equal(a, b) and torch.equal(a, c)


def test_ddpm_ancestral_reproduces_gaussian_data(linear):
    mu, c, n = torch.tensor([0.5, -0.3]), 0.4, 20000
    oracle = oracles.Gaussian(mu, c)
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = sample(
        oracle.model(linear),
        linear,
        noise,
        steps=1000,
        solver="ddim",
        eta=1.0,
        generator=torch.Generator().manual_seed(1),
    )
    # standard errors of the sample mean and variance of n Gaussian draws
    se_mean, se_var = c / math.sqrt(n), c**2 * math.sqrt(2 / (n - 1))
    assert (x.mean(0) - mu).abs().max() <= 4 * se_mean
    assert (x.var(0) - c**2).abs().max() <= 4 * se_var


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_eta_sets_the_spread_of_samples_from_one_noise(linear, eta):
    # Every η reproduces the data's marginals, so those cannot tell η apart. From one fixed noise
    # the spread can: on Gaussian data N(μ, c²) each DDIM step is affine in x,
    # x_{t-1} - √ᾱ_{t-1} μ = A_t (x_t - √ᾱ_t μ) + σ_t z with
    # A_t = (c² √(ᾱ_t ᾱ_{t-1}) + √(1 - ᾱ_{t-1} - σ_t²) √(1 - ᾱ_t)) / (c² ᾱ_t + 1 - ᾱ_t),
    # σ_t = η √((1 - ᾱ_{t-1})/(1 - ᾱ_t)) √(1 - ᾱ_t/ᾱ_{t-1}), and the last step is x̂₀ (σ = 0):
    # the variance V obeys V ← A² V + σ², from V = 0.
    mu, c, n, steps = torch.tensor([0.5, -0.3]), 0.4, 20000, 50
    oracle = oracles.Gaussian(mu, c)
    ts = diffode.spaced_timesteps(linear, steps)
    ab = [float(linear.alphas_cumprod[int(t)]) for t in ts]
    variance = 0.0
    for now, below in itertools.pairwise(ab):
        sigma = eta * math.sqrt((1 - below) / (1 - now) * (1 - now / below))
        gain = (c**2 * math.sqrt(now * below) + math.sqrt(1 - below - sigma**2) * math.sqrt(1 - now)) / (
            c**2 * now + 1 - now
        )
        variance = gain**2 * variance + sigma**2
    variance *= (c**2 * math.sqrt(ab[-1]) / (c**2 * ab[-1] + 1 - ab[-1])) ** 2
    noise = torch.randn(1, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64).expand(n, 2)
    x = sample(
        oracle.model(linear),
        linear,
        noise,
        steps=steps,
        solver=DDIM(eta),
        generator=torch.Generator().manual_seed(1),
    )
    se_var = variance * math.sqrt(2 / (n - 1))
    assert (x.var(0) - variance).abs().max() <= 4 * se_var, (x.var(0), variance)


@pytest.mark.parametrize("solver", [DDIM(0.5), DDIM(sigma_hat=True), DDIM(1.0)])
def test_stochastic_samplers_are_seeded_deterministic(linear, solver):
    oracle = oracles.GaussianMixture.ring()
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))

    def run(seed):
        return sample(
            oracle.model(linear),
            linear,
            noise,
            steps=20,
            solver=solver,
            generator=torch.Generator().manual_seed(seed),
        )

    a, b, c = run(3), run(3), run(4)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_per_sample_generators_make_samples_independent_of_batch(linear):
    oracle = oracles.GaussianMixture.ring()
    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    gens = lambda: [torch.Generator().manual_seed(s) for s in (7, 8, 9)]  # noqa: E731
    batch = sample(oracle.model(linear), linear, noise, steps=10, solver="ddim", eta=1.0, generator=gens())
    alone = sample(
        oracle.model(linear),
        linear,
        noise[1:2],
        steps=10,
        solver="ddim",
        eta=1.0,
        generator=[torch.Generator().manual_seed(8)],
    )
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "solver", [DDIM(0.5), DDIM(1.0), DDIM(sigma_hat=True)], ids=["eta0.5", "eta1", "sigma_hat"]
)
def test_stochastic_step_is_the_papers_equation_12(solver):
    # DDIM's eq. 12 in x-space, written from ᾱ = 1/(1+σ²): x_{t-1} = √ᾱ' x̂₀ + √(1-ᾱ'-σ_t²) ε + σ_t z
    # with σ_t = η √((1-ᾱ')/(1-ᾱ)) √(1-ᾱ/ᾱ'); σ̂ keeps η = 1's mean and draws σ̂_t = √(1-ᾱ/ᾱ')
    # (a field ε ≠ 0, so the mean's coefficient is checked as well as the noise)
    s0, s1 = 3.0, 1.2
    gen = torch.Generator().manual_seed(4)
    xbar = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    eps = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    field = lambda s, y: eps  # noqa: E731
    state = solver.init(field, torch.tensor([s0, s1]), xbar, torch.Generator().manual_seed(5))
    out, _ = solver.step(field, s0, s1, xbar, state)
    z = torch.randn(xbar.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a0, a1 = 1 / (1 + s0**2), 1 / (1 + s1**2)
    x_t = xbar * math.sqrt(a0)
    x0_hat = (x_t - math.sqrt(1 - a0) * eps) / math.sqrt(a0)
    eta = 1.0 if solver.sigma_hat else solver.eta
    sigma_eta = eta * math.sqrt((1 - a1) / (1 - a0)) * math.sqrt(1 - a0 / a1)
    noise = math.sqrt(1 - a0 / a1) if solver.sigma_hat else sigma_eta
    x_prev = math.sqrt(a1) * x0_hat + math.sqrt(1 - a1 - sigma_eta**2) * eps + noise * z
    torch.testing.assert_close(out, x_prev / math.sqrt(a1), rtol=1e-13, atol=1e-13)


def test_generator_list_must_match_the_batch(linear):
    oracle = oracles.Gaussian(torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match="list of 1 generators for a batch of 3"):
        sample(
            oracle.model(linear),
            linear,
            torch.randn(3, 2),
            steps=5,
            solver="ddim",
            eta=1.0,
            generator=[torch.Generator().manual_seed(0)],
        )


def test_single_step_and_one_point_grid(linear):
    model = wavy_model()
    noise = torch.randn(2, 3, dtype=torch.float64)
    x = sample(model, linear, noise, steps=1)
    expected = ddim_reference_loop(model, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), [0], noise)
    torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)
    out = solve(EpsField(model, linear), noise, torch.tensor([3.0], dtype=torch.float64))
    assert torch.equal(out.x, noise) and out.nfe == 0
