"""The oracles against closed forms derived here, and their input checks."""

import math

import pytest
import torch

from diffode import oracles

F64 = torch.float64


def normal_log_prob(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, var I) per sample, written out: -(|x - m|²/var + D log(2π var))/2."""
    d = (x - mean).reshape(x.shape[0], -1)
    return -0.5 * (d.pow(2).sum(1) / var + d.shape[1] * torch.log(2 * math.pi * var))


def test_a_scalar_mean_log_prob_counts_the_datas_dimensions():
    # a scalar mean broadcasts over any sample shape; the normalising term is the data's
    # dimension's (it took the mean's one dimension: off by (D - 1)/2 log(2π var))
    x = torch.tensor([[0.3, 0.1], [1.0, -2.0]], dtype=F64)
    for sigma in (0.0, 0.7):
        var = torch.tensor(0.25 + sigma**2, dtype=F64)
        want = normal_log_prob(x, torch.tensor(0.3, dtype=F64), var)
        torch.testing.assert_close(oracles.Gaussian(0.3, 0.5).log_prob(x, sigma), want, rtol=1e-14, atol=0)
        mixture = oracles.GaussianMixture(
            torch.ones(1), torch.full((1, 2), 0.3, dtype=F64), torch.tensor([0.5])
        )
        torch.testing.assert_close(mixture.log_prob(x, sigma), want, rtol=1e-14, atol=0)


def test_gaussian_log_prob_takes_one_sigma_per_sample():
    gauss = oracles.Gaussian(torch.zeros(2), 1.0)
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=F64)
    want = normal_log_prob(x, torch.zeros(2, dtype=F64), 1.0 + sigmas**2)
    torch.testing.assert_close(gauss.log_prob(x, sigmas), want, rtol=1e-14, atol=0)
    torch.testing.assert_close(
        gauss.log_prob(x, sigmas),
        oracles.GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.ones(1)).log_prob(x, sigmas),
        rtol=1e-14,
        atol=0,
    )


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: oracles.Gaussian(math.nan, 1.0), "mean contains 1 non-finite value"),
        (lambda: oracles.Gaussian(math.inf, 1.0), "mean contains 1 non-finite value"),
        (lambda: oracles.Gaussian(0.0, 1e-200), "std must be finite and in"),
        (lambda: oracles.Gaussian(0.0, 1e200), "std must be finite and in"),
        (
            lambda: oracles.GaussianMixture(torch.tensor([1.0, math.nan]), torch.zeros(2, 2), torch.ones(2)),
            "weights",
        ),
        (
            lambda: oracles.GaussianMixture(torch.tensor([1.0, math.inf]), torch.zeros(2, 2), torch.ones(2)),
            "weights",
        ),
        (
            lambda: oracles.GaussianMixture(torch.ones(2), torch.full((2, 2), math.nan), torch.ones(2)),
            "means contains .* non-finite value",
        ),
        (
            lambda: oracles.GaussianMixture(torch.ones(2), torch.zeros(2, 2), torch.tensor([1.0, math.nan])),
            "stds must be finite",
        ),
        (
            lambda: oracles.GaussianMixture(torch.ones(2), torch.zeros(2, 2), torch.tensor([1e-200, 1.0])),
            "stds must be finite",
        ),
        (lambda: oracles.GaussianMixture.ring(radius=math.nan), "radius must be a finite number >= 0"),
        (lambda: oracles.GaussianMixture.ring(0), "k must be at least 1"),
    ],
)
def test_bad_parameters_are_refused(build, match):
    # each of these gave NaN ε later, or an error that did not name the argument
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("oracle", [oracles.Gaussian(torch.zeros(2), 1.0), oracles.GaussianMixture.ring()])
def test_sample_counts_are_validated(oracle):
    # a negative count reached torch ("negative dimension"), a float one its argument parser
    with pytest.raises(ValueError, match="n must be at least 1, got -1"):
        oracle.sample(-1)
    with pytest.raises(TypeError, match="n must be an int, got"):
        oracle.sample(2.0)
    assert oracle.sample(3).shape == (3, 2)


@pytest.mark.parametrize("oracle", [oracles.Gaussian(torch.zeros(2), 1.0), oracles.GaussianMixture.ring()])
def test_sigma_outside_the_oracles_range_is_refused(oracle):
    x = torch.ones(3, 2, dtype=F64)
    for sigma in (math.nan, math.inf, -1.0, 1e200, torch.tensor([1.0, -1.0, 1.0])):
        with pytest.raises(ValueError, match="sigma must be finite and in"):
            oracle.eps(sigma, x)
        with pytest.raises(ValueError, match="sigma must be finite and in"):
            oracle.log_prob(x, sigma)
    # the ends of the range: ε = 0 at σ = 0; at σ = 1e150, ε = σ(x̄ - μ)/(c² + σ²) stays finite
    assert torch.equal(oracle.eps(0.0, x), torch.zeros_like(x))
    assert bool(torch.isfinite(oracle.eps(1e150, x * 1e150)).all())


@pytest.mark.parametrize("oracle", [oracles.Gaussian(torch.zeros(2), 1.0), oracles.GaussianMixture.ring()])
def test_states_of_another_shape_are_refused(oracle):
    # broadcast against the means, (3, 1) gave a 2-D density normalised as 1-D (ring: -87.9)
    for x in (torch.zeros(3, 1, dtype=F64), torch.zeros(3, 2, 1, dtype=F64)):
        for call, args in ((oracle.eps, (1.0, x)), (oracle.log_prob, (x,)), (oracle.log_prob, (x, 0.5))):
            with pytest.raises(ValueError, match=r"must have shape \(batch, 2\) for this oracle"):
                call(*args)
    if isinstance(oracle, oracles.Gaussian):
        with pytest.raises(ValueError, match="xbar must have shape"):
            oracle.flow(torch.zeros(3, 1, dtype=F64), 1.0, 0.5)
    # a scalar mean still broadcasts over samples of any shape
    assert oracles.Gaussian(0.0, 1.0).eps(1.0, torch.ones(3, 2, 1)).shape == (3, 2, 1)


def test_numbers_of_any_numeric_type_are_taken_and_bools_refused():
    np = pytest.importorskip("numpy")
    assert oracles.GaussianMixture.ring(np.int64(4)).means.shape == (4, 2)
    assert oracles.Gaussian(0.0, np.float32(0.5)).std == 0.5
    for build in (
        lambda: oracles.GaussianMixture.ring(std=True),
        lambda: oracles.GaussianMixture.ring(radius=True),
        lambda: oracles.Gaussian(True, 0.5),
        lambda: oracles.GaussianMixture(torch.tensor([True, True]), torch.zeros(2, 2), torch.ones(2)),
        lambda: oracles.Gaussian(0.0, 1.0).eps(True, torch.ones(2, 1)),
    ):
        with pytest.raises(TypeError, match="must (be a number|hold numbers)"):
            build()


def test_mixture_log_prob_and_eps_with_unequal_weights_and_stds():
    # against torch.distributions (log p) and ε = -σ ∇ log p_σ (autograd), at σ = 0, 0.7 and 30
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    means = torch.tensor([[0.0, 1.0], [-1.5, 0.5], [2.0, -1.0]], dtype=F64)
    stds = torch.tensor([0.3, 0.8, 0.15], dtype=F64)
    mixture = oracles.GaussianMixture(weights, means, stds)
    x = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    for sigma in (0.0, 0.7, 30.0):
        scale = torch.sqrt(stds**2 + sigma**2)[:, None].expand(3, 2)
        reference = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(probs=weights),
            torch.distributions.Independent(torch.distributions.Normal(means, scale), 1),
        )
        xs = x * math.hypot(1.0, sigma)
        torch.testing.assert_close(mixture.log_prob(xs, sigma), reference.log_prob(xs), rtol=1e-13, atol=0)
        if sigma > 0:
            probe = xs.clone().requires_grad_(True)
            (score,) = torch.autograd.grad(reference.log_prob(probe).sum(), probe)
            torch.testing.assert_close(mixture.eps(sigma, xs), -sigma * score, rtol=1e-12, atol=1e-14)
