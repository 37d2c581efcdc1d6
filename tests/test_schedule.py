import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from diffode import Schedule

betas_strategy = st.lists(st.floats(1e-4, 0.3), min_size=2, max_size=80).map(
    lambda b: torch.tensor(b, dtype=torch.float64)
)


def test_linear_known_values(linear):
    # reference §2: σ_min ≈ 0.0100, σ_max ≈ 157.4 for the DDPM linear schedule
    assert linear.T == 1000
    assert linear.sigma_min == pytest.approx(0.0100, abs=5e-5)
    assert linear.sigma_max == pytest.approx(157.4, abs=0.05)
    assert linear.alphas_cumprod.dtype == torch.float64
    assert linear.alphas_cumprod[0] == pytest.approx(1 - 1e-4, abs=1e-15)


def test_constructors_agree_with_their_formulas():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert torch.equal(Schedule.from_betas(betas).alphas_cumprod, Schedule.linear().alphas_cumprod)
    ac = torch.cumprod(1 - betas, 0)
    assert torch.equal(Schedule.from_alphas_cumprod(ac).alphas_cumprod, ac)
    sl = Schedule.scaled_linear()
    assert float(1 - sl.alphas_cumprod[0]) == pytest.approx(0.00085, rel=1e-12)
    # √β linear from √0.00085 to √0.012 (latent diffusion), ᾱ_t = Π_{k≤t} (1 - β_k), written out
    # (plain linear β with the same ends has the same ᾱ_0 but ᾱ_999 = 1.6e-3, not 4.7e-3)
    root = lambda k: math.sqrt(0.00085) + k * (math.sqrt(0.012) - math.sqrt(0.00085)) / 999  # noqa: E731
    for t in (1, 500, 999):
        product = math.exp(math.fsum(math.log1p(-(root(k) ** 2)) for k in range(t + 1)))
        assert float(sl.alphas_cumprod[t]) == pytest.approx(product, rel=1e-12)
    cos = Schedule.cosine()
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert float(cos.alphas_cumprod[10]) == pytest.approx(f(11) / f(0), rel=1e-12)


@given(betas_strategy)
def test_t_sigma_round_trip_and_monotonicity(betas):
    s = Schedule.from_betas(betas)
    ts = torch.arange(s.T, dtype=torch.float64)
    # on table entries t(σ) returns the very integer, so networks see the reference code's t
    assert torch.equal(s.t(s.sigmas), ts)
    assert torch.equal(s.sigma(ts), s.sigmas)
    assert bool((s.sigmas[1:] > s.sigmas[:-1]).all())
    frac = torch.linspace(0, s.T - 1, 7 * s.T, dtype=torch.float64)
    sig = s.sigma(frac)
    assert bool((sig[1:] > sig[:-1]).all())
    torch.testing.assert_close(s.t(sig), frac, rtol=0, atol=1e-9)
    torch.testing.assert_close(s.sigma(s.t(sig)), sig, rtol=1e-12, atol=0)


def test_t_clamps_outside_the_table(linear):
    assert float(linear.t(1e-6)) == 0.0
    assert float(linear.t(1e6)) == 999.0


def test_continuous_vp_closed_forms():
    vp = Schedule.vp()
    t = torch.linspace(1e-3, 1, 101, dtype=torch.float64)
    ab = torch.exp(-0.5 * t**2 * 19.9 - 0.1 * t)
    torch.testing.assert_close(vp.sigma(t), torch.sqrt((1 - ab) / ab), rtol=1e-12, atol=0)
    torch.testing.assert_close(vp.t(vp.sigma(t)), t, rtol=1e-10, atol=0)
    assert vp.sigma_min == pytest.approx(float(vp.sigma(1e-3)), rel=1e-12)


def test_network_time_is_clamped_below_the_table_for_negative_sigma():
    linear, vp = Schedule.linear(), Schedule.vp()
    for schedule in (linear, vp):
        at_zero = float(schedule.t(0.0))
        assert float(schedule.t(-1.0)) == at_zero
        assert schedule.t(torch.tensor([-1.0, 0.0], dtype=torch.float64)).tolist() == [at_zero, at_zero]
    assert float(linear.t(-1.0)) == 0.0 and float(vp.t(-1.0)) == pytest.approx(vp.eps * vp.time_scale)


def test_zero_terminal_snr_is_representable():
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100, dtype=torch.float64), 0)
    ac[-1] = 0.0
    s = Schedule.from_alphas_cumprod(ac)
    assert math.isinf(s.sigma_max)
    assert float(s.t(math.inf)) == 99.0
    assert float(s.t(s.sigmas[50])) == 50.0
    # between the last finite entry and the infinite one, σ is infinite (lerp towards inf gave NaN)
    assert math.isinf(float(s.sigma(98.5)))
    got = s.sigma(torch.tensor([98.0, 98.25, 98.75, 99.0], dtype=torch.float64))
    assert float(got[0]) == float(s.sigmas[98]) and bool(torch.isinf(got[1:]).all())


def test_signal_and_noise_hold_for_huge_and_infinite_sigma():
    from diffode import EpsField, oracles
    from diffode.field import signal_and_noise

    x = torch.zeros(3, 2, dtype=torch.float64)
    for sigma in (0.0, 0.5, 1.0, 2.0, 1e3, 1e200, math.inf):
        alpha, s = signal_and_noise(sigma, x)
        alphas, ss = signal_and_noise(torch.full((3,), sigma, dtype=torch.float64), x)
        # α² + s² = 1 and s/α = σ, also where σ² overflows (it gave α = s = 0 at 1e200)
        assert alpha**2 + s**2 == pytest.approx(1.0, rel=1e-15) and (alpha, s) == (
            float(alphas[0]),
            float(ss[0]),
        )
        if 0 < sigma < math.inf:
            assert s / alpha == pytest.approx(sigma, rel=1e-15)
    # an ε-field read at a per-sample σ = ∞ refuses, as it does for a scalar σ = ∞
    field = EpsField(oracles.GaussianMixture.ring().model(Schedule.linear()), Schedule.linear())
    with pytest.raises(ValueError, match="cannot be evaluated at sigma = inf"):
        field.predict_x(
            torch.tensor([math.inf, 1.0], dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64)
        )


@pytest.mark.parametrize(
    "betas, match",
    [
        (torch.tensor([0.1, 0.0, 0.2]), "betas must each lie in \\(0, 1\\)"),
        (torch.tensor([0.1, -0.1]), "betas must each lie in"),
        (torch.tensor([0.1, 1.5]), "betas must each lie in"),
        (torch.tensor([1.0, 0.5]), "betas must each lie in"),
        (torch.tensor([float("nan"), 0.5]), "betas must each lie in"),
    ],
)
def test_bad_betas(betas, match):
    with pytest.raises(ValueError, match=match):
        Schedule.from_betas(betas)


def test_bad_alphas_cumprod():
    with pytest.raises(ValueError, match="alphas_cumprod must be strictly decreasing"):
        Schedule.from_alphas_cumprod(torch.tensor([0.9, 0.95, 0.5]))
    with pytest.raises(ValueError, match="alphas_cumprod must lie in"):
        Schedule.from_alphas_cumprod(torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="at least 2 entries"):
        Schedule.from_alphas_cumprod(torch.tensor([0.5]))
    # a denormal last ᾱ is not zero terminal SNR: its σ is infinite
    with pytest.raises(ValueError, match=r"not finite and strictly increasing in t \(at t = 1, 2"):
        Schedule.from_alphas_cumprod(torch.tensor([0.9, 0.5, 1e-310], dtype=torch.float64))
    assert math.isinf(
        Schedule.from_alphas_cumprod(torch.tensor([0.9, 0.5, 0.0], dtype=torch.float64)).sigma_max
    )


def test_betas_whose_product_underflows_name_the_step():
    # the message blamed alphas_cumprod, which the caller never passed
    with pytest.raises(ValueError, match=r"betas drive ᾱ_t = Π\(1 - β\) to 0 .* at t = 842 of 2000"):
        Schedule.linear(T=2000, beta_start=0.5, beta_end=0.9)


def test_sigma_rejects_t_outside_range(linear):
    with pytest.raises(ValueError, match="t must lie in \\[0, 999\\]"):
        linear.sigma(1000.0)
