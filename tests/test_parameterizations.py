"""Every parameterization reduces to the same σ-space field (reference §7), and zero terminal SNR
works through the x̂0 form of the first step."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffode
from diffode import (
    DDIM,
    DenoiserField,
    EpsField,
    Schedule,
    ScoreField,
    StepInfo,
    VField,
    X0Field,
    field_for,
    oracles,
    sample,
    solve,
)
from tests.helpers import slope, wavy_model

F64 = torch.float64


def _coefficients(schedule: Schedule, t: torch.Tensor, x: torch.Tensor):
    """σ, α = √ᾱ and s = √(1-ᾱ) at the network's t, float64, shaped to broadcast over x."""
    sigma = schedule.sigma(t.to(F64)).reshape(-1, *([1] * (x.ndim - 1)))
    ab = 1 / (1 + sigma * sigma)
    return sigma, ab.sqrt(), (1 - ab).sqrt()


def oracle_networks(oracle: oracles.Oracle, schedule: Schedule) -> dict[str, diffode.field.Model]:
    """Networks model(x, t) of each prediction type, made from the oracle's exact ε by the §7
    identities in the forward direction (ε → output); the fields invert them."""

    def parts(x, t):
        sigma, alpha, s = _coefficients(schedule, t, x)
        xbar = x.to(F64) / alpha
        eps = oracle.eps(sigma.reshape(-1), xbar)
        return eps, xbar - sigma * eps, alpha, s

    def eps_net(x, t):
        return parts(x, t)[0].to(x.dtype)

    def x0_net(x, t):
        return parts(x, t)[1].to(x.dtype)

    def v_net(x, t):
        eps, x0, alpha, s = parts(x, t)
        return (alpha * eps - s * x0).to(x.dtype)

    def score_net(x, t):
        eps, _, _, s = parts(x, t)
        return (-eps / s).to(x.dtype)

    return {"epsilon": eps_net, "sample": x0_net, "v_prediction": v_net, "score": score_net}


def oracle_denoiser(oracle: oracles.Oracle):
    """An EDM denoiser D(x̄; σ) = x̄ - σ ε*(x̄, σ), called as model(xbar, sigma)."""

    def denoiser(xbar, sigma):
        s = sigma.to(F64).reshape(-1, *([1] * (xbar.ndim - 1)))
        return (xbar.to(F64) - s * oracle.eps(sigma.to(F64), xbar)).to(xbar.dtype)

    return denoiser


SCHEDULES = {
    "linear": Schedule.linear(),
    "cosine": Schedule.cosine(),
    "scaled_linear": Schedule.scaled_linear(),
}
ORACLES = {
    "gaussian": oracles.Gaussian(torch.tensor([0.7, -1.2, 0.3]), 0.6),
    "ring": oracles.GaussianMixture.ring(),
}


def rel_err(got: torch.Tensor, want: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    """max |got - want| over max |want|, or over ``scale`` when the conversion's inputs are larger."""
    size = want.abs().max() if scale is None else torch.maximum(want.abs().max(), scale)
    return float((got - want).abs().max() / size)


@given(
    schedule_name=st.sampled_from(sorted(SCHEDULES)),
    oracle_name=st.sampled_from(sorted(ORACLES)),
    log_sigma_frac=st.floats(0.0, 1.0),
    per_sample=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_parameterization_gives_the_eps_field(
    schedule_name, oracle_name, log_sigma_frac, per_sample, seed
):
    schedule, oracle = SCHEDULES[schedule_name], ORACLES[oracle_name]
    gen = torch.Generator().manual_seed(seed)
    batch = 5
    lo, hi = math.log(schedule.sigma_min), math.log(schedule.sigma_max)
    if per_sample:
        fracs = torch.rand(batch, generator=gen, dtype=F64)
        sigma = torch.exp(lo + fracs * (hi - lo))
        s_b = sigma.reshape(-1, 1)
    else:
        sigma = math.exp(lo + log_sigma_frac * (hi - lo))
        s_b = torch.tensor(sigma, dtype=F64)
    # x̄ = x0 + σ z: a state the field meets when sampling this data
    xbar = oracle.sample(batch, gen) + s_b * torch.randn(batch, *oracle.event_shape, generator=gen, dtype=F64)
    eps_exact = oracle(sigma, xbar)
    x0_exact = xbar - s_b * eps_exact

    # ε = (x̄ - x̂0)/σ and x̂0 = x̄ - σε lose digits to cancellation: round-off of size u·|x̄|
    # becomes u·|x̄|/σ in ε and u·|x̄| in x̂0, so errors are measured against those sizes too
    eps_scale = (xbar.abs() / s_b).max()
    x0_scale = xbar.abs().max()
    reference = EpsField(oracle.model(schedule), schedule)
    eps_ref, x0_ref = reference.predict(sigma, xbar)
    assert rel_err(eps_ref, eps_exact) <= 1e-12
    assert rel_err(x0_ref, x0_exact, x0_scale) <= 1e-12

    fields = [field_for(net, schedule, name) for name, net in oracle_networks(oracle, schedule).items()]
    fields.append(DenoiserField(oracle_denoiser(oracle)))
    for field in fields:
        eps, x0 = field.predict(sigma, xbar)
        assert eps.dtype == F64 and eps.shape == xbar.shape
        assert rel_err(eps, eps_ref, eps_scale) <= 1e-12, field.prediction
        assert rel_err(x0, x0_ref, x0_scale) <= 1e-12, field.prediction
        assert torch.equal(field(sigma, xbar), eps) and torch.equal(field.denoised(sigma, xbar), x0)


def test_field_for_builds_the_named_field(linear):
    net = wavy_model()
    expected = {"epsilon": EpsField, "sample": X0Field, "v_prediction": VField, "score": ScoreField}
    assert set(expected) == set(diffode.PREDICTIONS)
    for name, cls in expected.items():
        field = field_for(net, linear, name)
        assert type(field) is cls and field.prediction == name and field.schedule is linear


def test_float32_state_keeps_its_dtype(linear):
    oracle = ORACLES["gaussian"]
    xbar = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)) * 3
    exact = oracle(2.0, xbar.double())
    for name, net in oracle_networks(oracle, linear).items():
        got = field_for(net, linear, name)(2.0, xbar)
        assert got.dtype == torch.float32
        assert rel_err(got.double(), exact) <= 1e-5, name


def test_denoiser_call_convention():
    seen = []

    def denoiser(xbar, sigma):
        seen.append((xbar.clone(), sigma))
        return torch.zeros_like(xbar)

    field = DenoiserField(denoiser)
    xbar = torch.randn(3, 2, 4, dtype=F64)
    field(2.5, xbar)
    field(torch.tensor([0.5, 1.0, 2.0], dtype=F64), xbar)
    field(1.5, xbar.float())
    (x1, s1), (x2, s2), (x3, s3) = seen
    for x in (x1, x2):
        torch.testing.assert_close(x, xbar, rtol=1e-15, atol=0)  # x̄ itself, not the x-space input
    assert s1.dtype == F64 and s1.tolist() == [2.5] * 3
    assert s2.tolist() == [0.5, 1.0, 2.0]
    assert s3.dtype == torch.float32 and x3.dtype == torch.float32 and s3.shape == (3,)
    # D = 0 means x̂0 = 0, so ε = x̄/σ
    torch.testing.assert_close(field(2.5, xbar), xbar / 2.5, rtol=1e-14, atol=0)


# ---------------------------------------------------------------- zero terminal SNR


def zero_snr(schedule: Schedule) -> Schedule:
    """Lin et al. (2024), Algorithm 1: shift and scale √ᾱ so that ᾱ_{T-1} = 0 and ᾱ_0 is kept."""
    root = schedule.alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    rescaled = (root - last) * first / (first - last)
    return Schedule.from_alphas_cumprod(rescaled**2)


ZTSNR = zero_snr(Schedule.linear())


def gaussian_posterior_networks(mean: torch.Tensor, std: float, schedule: Schedule):
    """x̂0- and v-networks of data N(mean, std² I) from the posterior mean in x-space,
    E[x0 | x] = μ + α c² (x - αμ)/(α² c² + s²), which stays finite at ᾱ = 0."""

    def parts(x, t):
        _, alpha, s = _coefficients(schedule, t, x)
        x64 = x.to(F64)
        x0 = mean + alpha * std**2 * (x64 - alpha * mean) / (alpha**2 * std**2 + s**2)
        eps = (x64 - alpha * x0) / s
        return x0, eps, alpha, s

    def x0_net(x, t):
        return parts(x, t)[0].to(x.dtype)

    def v_net(x, t):
        x0, eps, alpha, s = parts(x, t)
        return (alpha * eps - s * x0).to(x.dtype)

    return {"sample": x0_net, "v_prediction": v_net}


def x_space_ddim(model, alphas_cumprod: torch.Tensor, seq: list[int], x: torch.Tensor, prediction: str):
    """Plain DDIM (η = 0) in x-space with the step formulas written per prediction type, ᾱ_{-1} = 1."""
    a = alphas_cumprod.to(F64)
    for i, t in enumerate(seq):
        at = a[t]
        a_next = a[seq[i + 1]] if i + 1 < len(seq) else torch.tensor(1.0, dtype=F64)
        out = model(x, torch.full((x.shape[0],), float(t), dtype=F64))
        if prediction == "v_prediction":
            x0 = at.sqrt() * x - (1 - at).sqrt() * out
            eps = at.sqrt() * out + (1 - at).sqrt() * x
        else:
            x0 = out
            eps = (x - at.sqrt() * x0) / (1 - at).sqrt()
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return x


def test_zero_snr_schedule_reaches_infinity():
    assert math.isinf(ZTSNR.sigma_max) and float(ZTSNR.alphas_cumprod[-1]) == 0.0
    assert float(diffode.sigma_grid(ZTSNR, 10, "trailing")[0]) == math.inf


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
@pytest.mark.parametrize("S", [1, 2, 5, 10, 50])
def test_zero_snr_sampling_matches_a_plain_ddim_loop(prediction, S):
    model = wavy_model(0.8)
    noise = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(S), dtype=F64)
    seq = diffode.spaced_timesteps(ZTSNR, S, "trailing").tolist()
    assert seq[0] == ZTSNR.T - 1
    expected = x_space_ddim(model, ZTSNR.alphas_cumprod, seq, noise, prediction)
    for solver in ("euler", DDIM(0.0)):
        got = sample(model, ZTSNR, noise, steps=S, timesteps="trailing", solver=solver, prediction=prediction)
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_first_step_from_infinity_uses_x0(prediction):
    mean, std = torch.tensor([1.5, -0.5]), 0.4
    net = gaussian_posterior_networks(mean.double(), std, ZTSNR)[prediction]
    field = field_for(net, ZTSNR, prediction)
    noise = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    eps, x0 = field.predict_x(math.inf, noise)
    # at ᾱ = 0 the posterior mean is the data mean and ε is the noise itself
    torch.testing.assert_close(x0, mean.double().expand(6, 2), rtol=0, atol=1e-14)
    torch.testing.assert_close(eps, noise, rtol=0, atol=1e-14)


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_zero_snr_gaussian_converges_to_the_exact_flow(prediction):
    # from σ = ∞ the flow of N(μ, c² I) data is x̄(σ) = μ + z √(c² + σ²), so the sample is μ + c z
    mean, std = torch.tensor([1.5, -0.5, 0.25]).double(), 0.4
    net = gaussian_posterior_networks(mean, std, ZTSNR)[prediction]
    noise = torch.randn(64, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    exact = mean + std * noise
    steps = [25, 50, 100, 200]
    errors = []
    for S in steps:
        got = sample(net, ZTSNR, noise, steps=S, timesteps="trailing", prediction=prediction)
        errors.append(float((got - exact).abs().max()))
    assert slope(steps, errors) == pytest.approx(-1.0, abs=0.15), errors


def test_zero_snr_callback_counts_the_first_step():
    infos: list[StepInfo] = []
    out = sample(
        wavy_model(),
        ZTSNR,
        torch.randn(2, 3, dtype=F64),
        steps=4,
        timesteps="trailing",
        prediction="v_prediction",
        callback=infos.append,
    )
    assert [(i.index, i.nfe) for i in infos] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert infos[0].sigma == math.inf and infos[0].sigma_next == infos[1].sigma
    assert infos[-1].sigma_next == 0.0
    torch.testing.assert_close(infos[-1].x, out)
    # the first step evaluates the network at σ = ∞ too: its x̂₀ there is the callback's denoised
    noise = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    infos.clear()
    sample(
        wavy_model(),
        ZTSNR,
        noise,
        steps=4,
        timesteps="trailing",
        prediction="v_prediction",
        callback=infos.append,
    )
    field = field_for(wavy_model(), ZTSNR, "v_prediction")
    assert all(i.denoised is not None for i in infos)
    torch.testing.assert_close(infos[0].denoised, field.predict_x(math.inf, noise)[1], rtol=0, atol=0)


@pytest.mark.parametrize("prediction", ["epsilon", "score"])
def test_zero_snr_with_eps_or_score_is_refused(prediction):
    with pytest.raises(ValueError, match=f"zero terminal SNR .* a {prediction} model is singular"):
        sample(wavy_model(), ZTSNR, torch.randn(2, 3), steps=5, timesteps="trailing", prediction=prediction)
    with pytest.raises(ValueError, match="zero terminal SNR"):
        field_for(wavy_model(), ZTSNR, prediction)


def test_eps_field_is_refused_at_infinity_on_a_finite_schedule(linear):
    inf_grid = torch.tensor([math.inf, 10.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=r"must lie in \[0, sigma_max = 157.4"):
        sample(wavy_model(), linear, torch.randn(2, 3), timesteps=inf_grid)
    with pytest.raises(ValueError, match="EpsField cannot be evaluated at sigma = inf"):
        solve(EpsField(wavy_model(), linear), torch.randn(2, 3), inf_grid)
    with pytest.raises(ValueError, match="DenoiserField cannot be evaluated at sigma = inf"):
        solve(DenoiserField(lambda xbar, sigma: xbar), torch.randn(2, 3), inf_grid)


def test_zero_snr_refuses_a_stochastic_first_step():
    with pytest.raises(ValueError, match="stochastic, but the first step out of sigma = inf"):
        sample(
            wavy_model(),
            ZTSNR,
            torch.randn(2, 3),
            steps=5,
            timesteps="trailing",
            solver="ddim",
            eta=1.0,
            prediction="v_prediction",
            generator=torch.Generator().manual_seed(0),
        )


def test_zero_snr_leading_grid_stays_finite():
    # "leading" never reaches t = T-1, so no step leaves σ = ∞
    noise = torch.randn(3, 2, dtype=F64)
    seq = diffode.spaced_timesteps(ZTSNR, 10, "leading").tolist()
    expected = x_space_ddim(wavy_model(), ZTSNR.alphas_cumprod, seq, noise, "v_prediction")
    got = sample(wavy_model(), ZTSNR, noise, steps=10, prediction="v_prediction")
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- sample with fields


def test_sample_accepts_a_field(linear):
    oracle = ORACLES["ring"]
    noise = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    grid = diffode.sigma_grid(linear, 12, "karras")
    by_eps = sample(oracle.model(linear), linear, noise, timesteps=grid)
    by_denoiser = sample(DenoiserField(oracle_denoiser(oracle)), linear, noise, timesteps=grid)
    torch.testing.assert_close(by_denoiser, by_eps, rtol=1e-12, atol=1e-12)
    v_net = oracle_networks(oracle, linear)["v_prediction"]
    by_name = sample(v_net, linear, noise, steps=12, prediction="v_prediction")
    by_field = sample(VField(v_net, linear), linear, noise, steps=12)
    assert torch.equal(by_name, by_field)


# ---------------------------------------------------------------- bad input


def test_unknown_prediction_lists_the_choices(linear):
    choices = "'epsilon', 'sample', 'v_prediction', 'score', got 'eps'"
    with pytest.raises(ValueError, match=f"prediction must be one of {choices}"):
        field_for(wavy_model(), linear, "eps")
    with pytest.raises(ValueError, match="prediction must be one of .*got 'x0'"):
        sample(wavy_model(), linear, torch.randn(2, 3), steps=3, prediction="x0")


@pytest.mark.parametrize(
    "make", [EpsField, X0Field, VField, ScoreField, lambda model, schedule: DenoiserField(model)]
)
def test_model_output_of_wrong_shape(linear, make):
    field = make(lambda x, t: x[:, :1], linear)
    with pytest.raises(
        ValueError, match="model output must have the input's shape \\(2, 3\\), got \\(2, 1\\)"
    ):
        field(1.0, torch.randn(2, 3))
    field = make(lambda x, t: None, linear)
    with pytest.raises(
        ValueError, match=f"got NoneType; the model must return its prediction \\({field.prediction}"
    ):
        field(1.0, torch.randn(2, 3))


def test_field_arguments_are_checked(linear):
    with pytest.raises(TypeError, match="model must be callable as model\\(xbar, sigma\\)"):
        DenoiserField("D")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="schedule must be a diffode.Schedule"):
        VField(wavy_model(), "linear")  # type: ignore[arg-type]


def test_a_field_is_not_read_at_sigma_zero_or_infinity(linear):
    # a torchdiffeq rk4 step ending at σ = 0 evaluated there: X0Field and DenoiserField divided by
    # σ = 0 (inf), the ε-fields called the network at t(0); at σ = ∞ x̂₀ was NaN
    fields = [EpsField(wavy_model(), linear), X0Field(wavy_model(), linear), DenoiserField(wavy_model())]
    x = torch.ones(2, 2)
    for field in fields:
        for sigma in (0.0, torch.tensor(0.0), math.inf):
            with pytest.raises(ValueError, match="the field cannot be read at sigma"):
                field(sigma, x)
            with pytest.raises(ValueError, match="the field cannot be read at sigma"):
                field.denoised(sigma, x)
        # a per-sample σ must have one value per sample
        with pytest.raises(ValueError, match=r"one value per sample: shape \(2,\) .* got shape \(3,\)"):
            field(torch.ones(3, dtype=torch.float64), x)


def test_the_networks_dtype_follows_loaded_parameters(linear):
    # load_state_dict(assign=True) puts new parameter objects in place: the field kept the old
    # one's dtype, cast a float64 state to float32, and the float64 network failed
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(2, 2)

        def forward(self, x, t):
            return self.inner(x)

    model = Net()
    field = EpsField(model, linear)
    assert field.network_dtype == torch.float32
    model.load_state_dict({k: v.double() for k, v in model.state_dict().items()}, assign=True)
    assert field.network_dtype == torch.float64
    x = torch.ones(2, 2, dtype=torch.float64)
    assert field(0.5, x).dtype == torch.float64


def test_a_field_must_agree_with_prediction_and_schedule(linear):
    field = VField(wavy_model(), linear)
    with pytest.raises(ValueError, match="prediction='sample' contradicts the VField"):
        sample(field, linear, torch.randn(2, 3), steps=3, prediction="sample")
    with pytest.raises(
        ValueError, match="the VField was built on Schedule\\(T=1000.* not on schedule=Schedule\\(T=1000"
    ):
        sample(field, Schedule.cosine(), torch.randn(2, 3), steps=3)
