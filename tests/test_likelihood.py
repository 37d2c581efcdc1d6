"""diffode.likelihood against closed forms (reference §10, §11).

The computed log p(x) is the exact change of variables along the ODE, with one approximation, the
prior: the model's marginal at σ_max is read as N(0, I) in x. For an oracle that marginal is
known exactly, so each closed-form test compares ``nats + log p_T(latent) - log N(latent; 0, I)``
(the prior put right) with the oracle's exact log-density at σ_min. What is left is the solver's
error, bounded by :func:`solver_bound`.
"""

import math

import pytest
import torch

import diffode
import diffode.data
from diffode import DenoiserField, Schedule, oracles
from diffode.likelihood import Likelihood, likelihood, mean_and_stderr, snap
from tests.test_parameterizations import ZTSNR, oracle_denoiser, oracle_networks

F64 = torch.float64
LINEAR = Schedule.linear()
# a schedule whose σ_min = √(β₀/(1-β₀)) = 0.5 makes the x ↔ x̄ log-determinant at σ_min
# (D log √(1+σ_min²) ≈ 0.11 D) visible; on the linear schedule it is 5e-5 D
WIDE = Schedule.from_betas(
    torch.cat([torch.tensor([0.2], dtype=F64), torch.linspace(1e-3, 0.02, 999, dtype=F64)])
)


def x_log_prob(oracle: oracles.Oracle, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Exact log-density in x-space at noise level σ: x̄ = x √(1+σ²) has the oracle's p_σ, and
    the map x → x̄ adds D log √(1+σ²)."""
    dims = x[0].numel()
    return oracle.log_prob(x.to(F64) * math.sqrt(1 + sigma**2), sigma) + 0.5 * dims * math.log1p(sigma**2)


def prior_corrected(result: Likelihood, oracle: oracles.Oracle, schedule: Schedule) -> torch.Tensor:
    """The nats with the exact marginal at σ_max in place of the N(0, I) prior."""
    z = result.latent
    standard = -0.5 * (z.pow(2).flatten(1).sum(1) + result.dims * math.log(2 * math.pi))
    return result.nats - standard + x_log_prob(oracle, z, schedule.sigma_max)


def solver_bound(result: Likelihood, tol: float, c_min: float, sigma_min: float) -> torch.Tensor:
    """A bound on the solver's error in the nats, per sample, from the adaptive controller's
    acceptance test (rtol = atol = tol).

    Each accepted step keeps the RMS of its local error over the D + 1 components below
    tol·(1 + |component|), so a component's local error is at most √(D+1)·tol·(1 + |value|);
    over N accepted steps (the batch's total, a bound for every sample) the error of ℓ adds up
    to N√(D+1)·tol·(1 + |ℓ|), which goes straight into the nats. x̄'s errors grow with the
    flow, which scales x̄ - μ by at most 1/√(c² + σ_min²) from σ_min to x at σ_max: relative
    errors stay relative, absolute ones grow by that factor, and the prior's log N changes by
    |x_T|·|δx_T|. ℓ's part is the bound for the Gaussian (constant divergence); the mixture's
    divergence depends on x̄, which the |x_T| term bounds as well, to first order.
    """
    steps = result.stats["accepted"]
    per_step = math.sqrt(result.dims + 1) * tol * steps
    ell = result.log_density.abs() + result.dims  # |ℓ| is below |log p| + D·log-terms; generous
    z = result.latent.flatten(1).norm(dim=1)
    dz = per_step * (z + 1 / math.sqrt(c_min**2 + sigma_min**2))
    return per_step * (1 + ell) + z * dz


def gaussian(dims: int, mean: float, std: float) -> oracles.Gaussian:
    return oracles.Gaussian(torch.full((dims,), mean, dtype=F64), std)


@pytest.mark.parametrize("schedule", [LINEAR, WIDE], ids=["linear", "wide"])
def test_gaussian_closed_form(schedule):
    oracle = gaussian(4, 0.5, 0.5)
    x = oracle.sample(8, torch.Generator().manual_seed(0)) / math.sqrt(1 + schedule.sigma_min**2)
    tol = 1e-8
    result = likelihood(oracle.model(schedule), schedule, x, rtol=tol, atol=tol)
    error = (prior_corrected(result, oracle, schedule) - x_log_prob(oracle, x, schedule.sigma_min)).abs()
    assert (error <= solver_bound(result, tol, oracle.std, schedule.sigma_min)).all(), error
    assert result.nats.dtype == F64 and result.nats.shape == (8,) and result.nfe > 0


def test_gaussian_default_tolerances_within_1e_3_nats_per_dim():
    """The issue's bound, at the default tolerances, exact divergence, against the exact density."""
    oracle = gaussian(16, 0.3, 0.4)
    x = oracle.sample(4, torch.Generator().manual_seed(1))
    result = likelihood(oracle.model(LINEAR), LINEAR, x)
    error = (prior_corrected(result, oracle, LINEAR) - x_log_prob(oracle, x, LINEAR.sigma_min)).abs()
    assert float(error.max()) / 16 <= 1e-3


def test_the_prior_gap_is_the_only_approximation():
    """Uncorrected, the nats differ from the truth by log N(x_T; 0, I) - log p_T(x_T), and that
    gap vanishes for a zero-mean, unit-variance x-space marginal at σ_max."""
    oracle = gaussian(4, 0.0, 1.0)  # p_σ in x is N(0, I) at every σ
    x = oracle.sample(6, torch.Generator().manual_seed(2))
    tol = 1e-8
    result = likelihood(oracle.model(LINEAR), LINEAR, x, rtol=tol, atol=tol)
    error = (result.nats - x_log_prob(oracle, x, LINEAR.sigma_min)).abs()
    assert (error <= solver_bound(result, tol, 1.0, LINEAR.sigma_min)).all()


def test_mixture_within_solver_tolerance():
    oracle = oracles.GaussianMixture.ring()
    x = oracle.sample(8, torch.Generator().manual_seed(3))
    tol = 1e-7
    result = likelihood(oracle.model(LINEAR), LINEAR, x, rtol=tol, atol=tol)
    error = (prior_corrected(result, oracle, LINEAR) - x_log_prob(oracle, x, LINEAR.sigma_min)).abs()
    assert (error <= solver_bound(result, tol, float(oracle.stds.min()), LINEAR.sigma_min)).all(), error


@pytest.mark.parametrize("prediction", ["sample", "v_prediction", "score", "denoiser"])
def test_every_parameterisation_gives_the_same_nats(prediction):
    oracle = oracles.GaussianMixture.ring()
    x = oracle.sample(4, torch.Generator().manual_seed(4))
    tol = 1e-7
    reference = likelihood(oracle.model(LINEAR), LINEAR, x, rtol=tol, atol=tol)
    if prediction == "denoiser":
        model, kind = DenoiserField(oracle_denoiser(oracle)), "epsilon"
    else:
        model, kind = oracle_networks(oracle, LINEAR)[prediction], prediction
    result = likelihood(model, LINEAR, x, rtol=tol, atol=tol, prediction=kind)
    bound = solver_bound(reference, tol, 0.15, LINEAR.sigma_min) + solver_bound(
        result, tol, 0.15, LINEAR.sigma_min
    )
    assert ((result.nats - reference.nats).abs() <= bound).all()


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_within_its_standard_error(probe):
    """One point, 64 independent probe sets: the mean of the estimates is within 4 standard
    errors of the exact-divergence value (a false alarm once in 16,000 seeds)."""
    oracle = oracles.GaussianMixture.ring()
    point = torch.tensor([[1.2, 1.6]], dtype=F64)  # between two components: an off-diagonal Jacobian
    x = point.expand(64, 2)
    exact = likelihood(oracle.model(LINEAR), LINEAR, point)
    # a tuple of generators serves as a list does
    generators = tuple(torch.Generator().manual_seed(i) for i in range(64))
    estimate = likelihood(
        oracle.model(LINEAR), LINEAR, x, divergence="hutchinson", probe=probe, generator=generators
    )
    mean, stderr = mean_and_stderr(estimate.nats)
    assert stderr > 0  # the probes do vary the estimate
    assert abs(mean - float(exact.nats[0])) <= 4 * stderr


def test_hutchinson_probes_average_and_rademacher_is_exact_for_isotropic_jacobians():
    oracle = gaussian(3, 0.2, 0.7)  # ∂ε/∂x̄ = a(σ)·I, so vᵀJv = a·|v|² = a·D for ±1 probes
    x = oracle.sample(5, torch.Generator().manual_seed(5))
    exact = likelihood(oracle.model(LINEAR), LINEAR, x)
    rademacher = likelihood(
        oracle.model(LINEAR), LINEAR, x, divergence="hutchinson", generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(rademacher.nats, exact.nats, rtol=0, atol=1e-6)
    one = likelihood(
        oracle.model(LINEAR),
        LINEAR,
        x,
        divergence="hutchinson",
        probe="gaussian",
        generator=torch.Generator().manual_seed(0),
    )
    many = likelihood(
        oracle.model(LINEAR),
        LINEAR,
        x,
        divergence="hutchinson",
        probe="gaussian",
        probes=64,
        generator=torch.Generator().manual_seed(0),
    )
    # 64 probes: |v|²/D averages to 1 with std √(2/(64 D)), 64× less variance than one probe
    assert (many.nats - exact.nats).abs().mean() < (one.nats - exact.nats).abs().mean()


def test_per_sample_results_do_not_depend_on_the_batch():
    oracle = oracles.GaussianMixture.ring()
    x = oracle.sample(6, torch.Generator().manual_seed(6))
    gens = [torch.Generator().manual_seed(i) for i in range(6)]
    both = likelihood(oracle.model(LINEAR), LINEAR, x, divergence="hutchinson", generator=gens)
    alone = likelihood(
        oracle.model(LINEAR),
        LINEAR,
        x[2:3],
        divergence="hutchinson",
        generator=[torch.Generator().manual_seed(2)],
    )
    torch.testing.assert_close(both.nats[2:3], alone.nats, rtol=0, atol=1e-9)


def test_bpd_is_nats_per_dimension_in_bits():
    oracle = gaussian(4, 0.1, 0.5)
    x = oracle.sample(3, torch.Generator().manual_seed(7)).reshape(3, 1, 2, 2)
    result = likelihood(lambda x, t: oracle.model(LINEAR)(x.flatten(1), t).reshape(x.shape), LINEAR, x)
    torch.testing.assert_close(result.bpd, -result.nats / (4 * math.log(2)), rtol=1e-15, atol=0)
    assert result.latent.shape == x.shape and result.levels is None
    mean, stderr = result.summary()
    assert mean == pytest.approx(float(result.bpd.mean())) and stderr > 0


def test_levels_dequantise_and_bound_the_discrete_probability():
    """17 levels (Δ = 1/8) of a zero-mean Gaussian whose x-space marginal at σ_min has std s: the
    dequantised nats average E log p(x + u) + D log Δ = Σ_d [log N(x_d; 0, s²) - Δ²/(24 s²)] + D log Δ
    (exact, E u² = Δ²/12), which Jensen puts below the bin's log-probability."""
    dims, levels, n = 2, 17, 256
    oracle = gaussian(dims, 0.0, 0.5)
    s0 = LINEAR.sigma_min
    s = math.sqrt((0.25 + s0**2) / (1 + s0**2))
    point = torch.tensor([[0.25, -0.5]], dtype=F64)
    x = point.expand(n, dims)
    result = likelihood(
        oracle.model(LINEAR), LINEAR, x, levels=levels, generator=torch.Generator().manual_seed(8)
    )
    delta = 2 / (levels - 1)
    expected = float((-0.5 * (point / s) ** 2 - 0.5 * math.log(2 * math.pi * s * s)).sum())
    expected += dims * (math.log(delta) - delta**2 / (24 * s * s))
    mean, stderr = mean_and_stderr(result.nats)
    # the prior gap of this oracle is ½(1 - v_T)|x_T|² with 1 - v_T = 0.75/(1+σ_max²) = 3e-5: below 1e-4
    assert abs(mean - expected) <= 4 * stderr + 1e-4
    # and below the exact log-probability of the bins (Jensen), as the library's estimate
    normal = torch.distributions.Normal(0.0, s)
    bins = normal.cdf(point + delta / 2) - normal.cdf(point - delta / 2)
    assert mean <= float(bins.log().sum()) + 4 * stderr
    torch.testing.assert_close(result.bpd, -result.nats / (dims * math.log(2)))
    torch.testing.assert_close(result.nats, result.log_density + dims * math.log(delta))


def test_levels_refuse_data_off_the_grid_and_snap_moves_it_on():
    oracle = gaussian(2, 0.0, 0.5)
    model = oracle.model(LINEAR)
    with pytest.raises(ValueError, match="17 evenly spaced levels.*snap"):
        likelihood(model, LINEAR, torch.tensor([[0.3, 0.0]]), levels=17)
    with pytest.raises(ValueError, match="outside"):
        likelihood(model, LINEAR, torch.tensor([[1.125, 0.0]]), levels=17)
    eight_bit = torch.tensor([[round(0.125 * 127.5 + 127.5) / 127.5 - 1, -1.0]])  # digits via uint8
    torch.testing.assert_close(snap(eight_bit, 17, slack=1 / 255), torch.tensor([[0.125, -1.0]]))
    with pytest.raises(ValueError, match="not on 17 levels"):
        snap(torch.tensor([[0.06]]), 17, slack=1 / 255)
    with pytest.raises(ValueError, match="x contains 1 non-finite value"):
        snap(torch.tensor([[0.0, math.nan, 1.0]]), 17, slack=1 / 255)
    with pytest.raises(ValueError, match="slack must be a finite number >= 0, got nan"):
        snap(torch.tensor([[0.5]]), 17, slack=math.nan)
    # float16 data on 256 levels is off them by its own round-off, up to 0.06 bins: it was refused,
    # and snap could not help; bfloat16 cannot separate 256 levels at all
    on_grid = torch.tensor([[0, 37, 200, 255]], dtype=F64) / 127.5 - 1
    seed = torch.Generator().manual_seed(0)
    half = likelihood(model, LINEAR, on_grid.reshape(2, 2).half(), levels=256, generator=seed)
    exact = likelihood(model, LINEAR, on_grid.reshape(2, 2), levels=256, generator=seed.manual_seed(0))
    assert torch.equal(half.nats.double(), exact.nats.double())
    with pytest.raises(ValueError, match="bfloat16, whose resolution .* does not separate 256 levels"):
        likelihood(model, LINEAR, on_grid.reshape(2, 2).bfloat16(), levels=256)


def test_a_model_in_training_mode_is_told_to_call_eval():
    # torch's own error told the user to rewrite the function
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).double()
    with pytest.raises(ValueError, match=r"call model.eval\(\) first"):
        likelihood(lambda x, t: net(x), LINEAR, torch.randn(3, 2, dtype=F64))
    net.eval()
    assert bool(
        torch.isfinite(likelihood(lambda x, t: net(x), LINEAR, torch.randn(3, 2, dtype=F64)).nats).all()
    )


def test_conditioning_follows_the_samples():
    """A conditional oracle, data N(m, c²I) with the shift m as conditioning: each row's nats are
    those of its own Gaussian, also when per-sample step control evaluates part of the batch."""
    base = gaussian(2, 0.0, 0.5).model(LINEAR)

    def model(x, t, *, shift):
        # the zero-mean oracle at x̄ - m, read in x-space: x - m/√(1+σ²)
        alpha = (1 + LINEAR.sigma(t.to(F64)).reshape(-1, 1) ** 2).rsqrt()
        return base(x - shift * alpha, t)

    shifts = torch.tensor([0.0, 1.0, -2.0], dtype=F64)
    tol = 1e-8
    x = gaussian(2, 0.0, 0.5).sample(3, torch.Generator().manual_seed(9)) + shifts[:, None]
    result = likelihood(model, LINEAR, x, cond={"shift": shifts[:, None]}, rtol=tol, atol=tol)
    bound = solver_bound(result, tol, 0.5, LINEAR.sigma_min)
    for i, m in enumerate(shifts.tolist()):
        oracle = gaussian(2, m, 0.5)
        z = result.latent[i : i + 1]
        corrected = (
            result.nats[i]
            + 0.5 * (z.pow(2).sum() + 2 * math.log(2 * math.pi))
            + x_log_prob(oracle, z, LINEAR.sigma_max)
        )
        assert abs(float(corrected - x_log_prob(oracle, x[i : i + 1], LINEAR.sigma_min))) <= float(bound[i])

    # guidance w with the unshifted Gaussian as the unconditional model: ε is linear in the shift,
    # so ε_u + w (ε_c - ε_u) is the ε of the shift w m, and the guided likelihood is that model's
    zero = {"shift": torch.zeros(3, 1, dtype=F64)}
    guided = likelihood(
        model, LINEAR, x, cond={"shift": shifts[:, None]}, guidance=2.5, uncond=zero, rtol=tol, atol=tol
    )
    shifted = likelihood(model, LINEAR, x, cond={"shift": 2.5 * shifts[:, None]}, rtol=tol, atol=tol)
    torch.testing.assert_close(
        guided.nats, shifted.nats, rtol=0, atol=float(solver_bound(shifted, tol, 0.5, LINEAR.sigma_min).max())
    )
    assert float((guided.nats - result.nats).abs()[1:].min()) > 0.1


def test_no_graph_unless_asked_and_gradients_when_asked():
    # on the ring mixture, whose divergence depends on x (a Gaussian's does not, so a gradient
    # that skipped the divergence integral passed on one)
    oracle = oracles.GaussianMixture.ring()
    x = oracle.sample(4, torch.Generator().manual_seed(12)).requires_grad_()
    assert not likelihood(oracle.model(LINEAR), LINEAR, x).nats.requires_grad
    tol = 1e-8
    result = likelihood(oracle.model(LINEAR), LINEAR, x, rtol=tol, atol=tol, grad=True)
    grad = torch.autograd.grad(prior_corrected(result, oracle, LINEAR).sum(), x)[0]
    exact = x.detach().clone().requires_grad_()
    score = torch.autograd.grad(x_log_prob(oracle, exact, LINEAR.sigma_min).sum(), exact)[0]
    # the nats' solver bound, for their derivative too: the error of a tolerance-controlled solve
    # is smooth in x between changes of its steps (measured 6e-7 against a bound of 7e-5; without
    # the divergence's gradient the difference is of the score's own size, up to 7)
    bound = solver_bound(result, tol, float(oracle.stds.min()), LINEAR.sigma_min)
    assert bool(((grad - score).abs().amax(1) <= bound).all()), (grad - score).abs().amax(1)


@pytest.mark.parametrize("solver", ["bosh3", "torchdiffeq:dopri5", "scipy:RK45"])
def test_other_adaptive_solvers_agree(solver):
    oracle = gaussian(2, 0.3, 0.5)
    x = oracle.sample(3, torch.Generator().manual_seed(11))
    tol = 1e-7
    reference = likelihood(oracle.model(LINEAR), LINEAR, x, rtol=tol, atol=tol)
    result = likelihood(oracle.model(LINEAR), LINEAR, x, solver=solver, rtol=tol, atol=tol)
    bound = solver_bound(reference, tol, 0.5, LINEAR.sigma_min) + solver_bound(
        result, tol, 0.5, LINEAR.sigma_min
    )
    assert ((result.nats - reference.nats).abs() <= bound).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"solver": "euler"}, ValueError, "needs an adaptive solver"),
        # not the fixed-grid method's refusal of the tolerances likelihood itself passes
        ({"solver": "torchdiffeq:rk4"}, ValueError, "needs an adaptive solver"),
        ({"solver": "nope"}, ValueError, "unknown solver"),
        (
            {"solver": diffode.solvers.Dopri5(rtol=1e-4, atol=1e-4), "rtol": 1e-3},
            ValueError,
            "carries its own",
        ),
        ({"rtol": -1.0}, ValueError, "rtol"),
        ({"divergence": "trace"}, ValueError, "divergence must be one of"),
        ({"probe": "sphere"}, ValueError, "probe must be one of"),
        ({"probes": 0}, ValueError, "probes must be at least 1"),
        ({"probes": 4}, ValueError, "applies to divergence=.hutchinson. only"),
        ({"probe": "gaussian"}, ValueError, "probe='gaussian' applies to divergence=.hutchinson. only"),
        ({"levels": 1}, ValueError, "levels must be at least 2"),
        ({"levels": 2.5}, TypeError, "levels must be an int"),
        ({"generator": 3}, TypeError, "generator must be"),
        ({"divergence": "hutchinson", "generator": [torch.Generator()]}, ValueError, "one per sample"),
        ({"prediction": "flow"}, ValueError, "prediction must be one of"),
    ],
)
def test_bad_arguments_name_the_fix(kwargs, error, match):
    oracle = gaussian(2, 0.0, 0.5)
    with pytest.raises(error, match=match):
        likelihood(oracle.model(LINEAR), LINEAR, torch.zeros(2, 2), **kwargs)


def test_bad_inputs_name_the_fix():
    model = gaussian(2, 0.0, 0.5).model(LINEAR)
    with pytest.raises(TypeError, match=r"x\.float\(\)"):
        likelihood(model, LINEAR, torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="unsqueeze"):
        likelihood(model, LINEAR, torch.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        likelihood(model, LINEAR, torch.tensor([[math.nan, 0.0]]))
    with pytest.raises(TypeError, match="schedule must be"):
        likelihood(model, "linear", torch.zeros(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="zero terminal SNR"):
        likelihood(model, ZTSNR, torch.zeros(2, 2), prediction="v_prediction")
    # samples without dimensions gave NaN (Hutchinson) or a ZeroDivisionError (exact)
    for divergence in ("exact", "hutchinson"):
        with pytest.raises(ValueError, match=r"no dimensions per sample \(shape \(2, 0\)\)"):
            likelihood(model, LINEAR, torch.zeros(2, 0), divergence=divergence)


def test_mean_and_stderr_refuses_what_has_no_mean():
    assert mean_and_stderr(torch.tensor([1.0, 3.0])) == (2.0, 1.0)
    for values in (torch.tensor([]), torch.tensor([1.0, math.nan]), torch.tensor([math.inf])):
        with pytest.raises(ValueError, match="values must be finite and at least one"):
            mean_and_stderr(values)


def test_cli_prints_mean_bpd_with_its_standard_error(tmp_path, capsys):
    """Two test digits through the bundled network (Hutchinson, loose tolerance: the exact trace
    costs 64 products per evaluation); the bound is below the uniform distribution's log₂ 17."""
    from diffode.cli import main
    from diffode.images import to_uint8
    from diffode.runs import write_arrays

    images = diffode.data.digits("test")[0][:2]
    write_arrays(tmp_path / "two.npz", arr_0=to_uint8(images))  # 17 levels stored as 8 bits
    argv = [str(tmp_path / "two.npz"), "--levels", "17", "--divergence", "hutchinson", "--tol", "1e-2"]
    assert main(["likelihood", *argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "images=2" in out and "± " in out and "upper bound" in out
    assert 0 < float(out.split("bits/dim ")[1].split()[0]) < math.log2(17)
    # one image has no standard error ("± 0.0000" read as certainty)
    write_arrays(tmp_path / "one.npz", arr_0=to_uint8(images[:1]))
    argv[0] = str(tmp_path / "one.npz")
    assert main(["likelihood", *argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(one image: no standard error; " in out and "± " not in out
    assert main(["likelihood", str(tmp_path / "two.npz"), "--split", "test"]) == 2
    assert "not both or neither" in capsys.readouterr().err
    assert main(["likelihood", str(tmp_path / "two.npz"), "--levels", "5"]) == 2
    assert "--levels 5: the data is not on 5 levels" in capsys.readouterr().err
    # more levels than 8 bits hold were accepted, and gave a bound for data nobody has
    assert main(["likelihood", str(tmp_path / "two.npz"), "--levels", "300"]) == 2
    assert "at most 256 levels" in capsys.readouterr().err
    # the split's 17 levels are not 256: the advice named the Python API (snap, levels=None)
    assert main(["likelihood", "--split", "test", "--levels", "256"]) == 2
    err = capsys.readouterr().err
    assert "--levels 256: the data is not on 256 levels" in err and "--levels 0" in err
