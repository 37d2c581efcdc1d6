"""Each bad input named in the foundation issue raises a clear ValueError/TypeError."""

import math

import pytest
import torch

from diffode import DDIM, EpsField, Schedule, oracles, sample, solve
from tests.helpers import wavy_model


def test_non_finite_noise(linear):
    noise = torch.randn(2, 2)
    noise[0, 1] = float("nan")
    with pytest.raises(ValueError, match="noise contains 1 non-finite value"):
        sample(wavy_model(), linear, noise, steps=5)


def test_steps_take_any_integer_type_but_bool(linear):
    import numpy as np

    noise = torch.randn(2, 2, generator=torch.Generator().manual_seed(0))
    expected = sample(wavy_model(), linear, noise, steps=5)
    assert torch.equal(sample(wavy_model(), linear, noise, steps=np.int64(5)), expected)
    assert torch.equal(sample(wavy_model(), linear, noise, steps=torch.tensor(5)), expected)
    # operator.index reads a bool tensor and a one-element 1-D tensor as integers
    for bad in (True, 5.0, np.float64(5), np.bool_(True), torch.tensor(True), torch.tensor([5])):
        with pytest.raises(TypeError, match="steps must be an int, got"):
            sample(wavy_model(), linear, noise, steps=bad)


def test_numbers_too_large_for_a_float_are_out_of_range():
    from diffode.validation import require_nonnegative, require_positive

    for check in (require_positive, require_nonnegative):
        with pytest.raises(ValueError, match="lr must be a finite number"):
            check("lr", 10**400)


def test_non_finite_latents_are_not_interpolated():
    from diffode import interpolate

    z = torch.randn(1, 4)
    with pytest.raises(ValueError, match="z0 contains 4 non-finite value"):
        interpolate(torch.full((1, 4), float("nan")), z, 0.5)
    with pytest.raises(ValueError, match="z1 contains 1 non-finite value"):
        interpolate(z, torch.tensor([[0.0, math.inf, 1.0, 2.0]]), 0.5)


def test_a_callback_that_is_not_callable_is_refused_before_any_step(linear):
    calls = []

    def model(x, t):
        calls.append(t)
        return torch.zeros_like(x)

    with pytest.raises(TypeError, match="callback must be callable .* got 5"):
        sample(model, linear, torch.randn(2, 2), steps=3, callback=5)
    assert calls == []


def test_one_weight_may_be_a_0d_tensor_or_a_numpy_scalar():
    import numpy as np

    from diffode import interpolate

    z0, z1 = torch.randn(2, 4), torch.randn(2, 4)
    expected = interpolate(z0, z1, 0.25)
    for weight in (torch.tensor(0.25), np.float32(0.25)):
        assert torch.equal(interpolate(z0, z1, weight), expected)


def test_integer_noise_is_a_type_error(linear):
    with pytest.raises(TypeError, match="noise must be a floating-point tensor"):
        sample(wavy_model(), linear, torch.zeros(2, 2, dtype=torch.int64), steps=5)


@pytest.mark.parametrize(
    "timesteps, match",
    [
        (torch.tensor([10, 20]), "timesteps must be strictly decreasing"),
        (torch.tensor([20, 10, 10]), "no duplicates"),
        (torch.tensor([1000, 10]), "timesteps must lie in 0 … 999, got tensor\\(\\[1000, 10\\]"),
        (torch.tensor([10, -3]), "timesteps must lie in 0 … 999"),
    ],
)
def test_bad_timesteps(linear, timesteps, match):
    with pytest.raises(ValueError, match=match):
        sample(wavy_model(), linear, torch.randn(2, 2), timesteps=timesteps)


@pytest.mark.parametrize(
    "steps, match", [(0, "steps must be at least 1, got 0"), (1001, "steps must be at most 1000, got 1001")]
)
def test_bad_steps(linear, steps, match):
    with pytest.raises(ValueError, match=match):
        sample(wavy_model(), linear, torch.randn(2, 2), steps=steps)


def test_bad_betas_and_alphas():
    with pytest.raises(ValueError, match="betas must each lie in \\(0, 1\\)"):
        Schedule.from_betas(torch.tensor([0.5, 0.0, 0.1]))
    with pytest.raises(ValueError, match="alphas_cumprod must be strictly decreasing"):
        Schedule.from_alphas_cumprod(torch.tensor([0.9, 0.9, 0.1]))


def test_model_output_of_wrong_shape(linear):
    with pytest.raises(
        ValueError, match="model output must have the input's shape \\(2, 3\\), got \\(2, 1\\)"
    ):
        sample(lambda x, t: x[:, :1], linear, torch.randn(2, 3), steps=3)
    with pytest.raises(ValueError, match="model output must have the input's shape"):
        sample(lambda x, t: "eps", linear, torch.randn(2, 3), steps=3)


def test_non_finite_model_output(linear):
    def model(x, t):
        return torch.where(t[:, None] < 400, torch.full_like(x, math.nan), torch.zeros_like(x))

    with pytest.raises(ValueError, match="state became non-finite at step 3 .*model returns finite values"):
        sample(model, linear, torch.randn(2, 3), steps=5)


@pytest.mark.parametrize(
    "grid, match",
    [
        ([3.0, 1.0, 2.0], "strictly monotone"),
        ([3.0, 3.0, 0.0], "strictly monotone"),
        ([3.0, -1.0], "σ values >= 0"),
        ([float("nan"), 1.0], "without NaN"),
        ([1.0, float("inf")], "infinite only in its first entry"),
    ],
)
def test_bad_sigma_grid(linear, grid, match):
    with pytest.raises(ValueError, match=match):
        solve(EpsField(wavy_model(), linear), torch.randn(2, 2), torch.tensor(grid, dtype=torch.float64))


def test_a_sigma_grid_of_bools_is_refused(linear):
    with pytest.raises(TypeError, match="sigmas must hold numbers"):
        solve(EpsField(wavy_model(), linear), torch.randn(2, 2), [True, False])


def test_sigma_grid_must_be_float(linear):
    with pytest.raises(TypeError, match="sigmas must be a floating-point tensor"):
        solve(EpsField(wavy_model(), linear), torch.randn(2, 2), torch.tensor([3, 1, 0]))


def test_inputs_that_lost_gradients_or_samples_in_silence_are_refused(linear):
    field = EpsField(wavy_model(), linear)
    grid = torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)
    x = torch.randn(2, 2)
    # a grid that requires grad was detached: backward() then failed far from the cause
    with pytest.raises(ValueError, match=r"sigmas requires grad.*pass sigmas.detach\(\)"):
        solve(field, x, grid.clone().requires_grad_())
    # so was a state through scipy, which integrates in numpy
    with pytest.raises(ValueError, match="integrates in numpy.*x requires grad"):
        solve(field, x.clone().requires_grad_(), grid, "scipy:RK45")
    with torch.no_grad():
        solve(field, x.clone().requires_grad_(), grid, "scipy:RK45")
    # an empty batch sent adaptive solvers through max_nfe evaluations at σ = NaN: nothing to do
    for solver in ("dopri5", "euler"):
        empty = solve(field, torch.zeros(0, 2), grid, solver, save=True)
        assert empty.x.shape == (0, 2) and empty.nfe == 0 and empty.xs.shape == (3, 0, 2)
    # a seed is not a generator
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator \(e.g. torch.Generator"):
        solve(field, x, grid, DDIM(eta=1.0), generator=0)
    solve(field, x, grid, DDIM(eta=1.0), generator=[torch.Generator().manual_seed(k) for k in range(2)])


def test_unknown_solver_lists_known_ones(linear):
    with pytest.raises(ValueError, match="unknown solver 'rk7'; known solvers: .*ddim.*euler"):
        sample(wavy_model(), linear, torch.randn(2, 2), steps=3, solver="rk7")
    with pytest.raises(TypeError, match="solver must be a name or a diffode Solver"):
        sample(wavy_model(), linear, torch.randn(2, 2), steps=3, solver=42)  # type: ignore[arg-type]


def test_negative_eta(linear):
    with pytest.raises(ValueError, match="eta must be a finite number >= 0, got -0.5"):
        sample(wavy_model(), linear, torch.randn(2, 2), steps=3, solver="ddim", eta=-0.5)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        DDIM(eta=-1.0)


def test_eta_needs_the_ddim_solver(linear):
    with pytest.raises(ValueError, match="eta=0.5 applies only to solver='ddim'"):
        sample(wavy_model(), linear, torch.randn(2, 2), steps=3, solver="euler", eta=0.5)


def test_stochastic_ddim_refuses_an_increasing_grid(linear):
    field = EpsField(oracles.Gaussian(torch.zeros(2), 1.0).model(linear), linear)
    with pytest.raises(ValueError, match="stochastic and cannot run on an increasing σ grid"):
        solve(field, torch.randn(2, 2), torch.tensor([0.1, 1.0], dtype=torch.float64), DDIM(0.3))


def test_eps_field_rejects_zero_terminal_snr():
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 50, dtype=torch.float64), 0)
    ac[-1] = 0
    with pytest.raises(ValueError, match="zero terminal SNR"):
        EpsField(wavy_model(), Schedule.from_alphas_cumprod(ac))


def test_non_callable_model(linear):
    with pytest.raises(TypeError, match="model must be callable"):
        EpsField("unet", linear)  # type: ignore[arg-type]


def test_solver_flags_and_orders_are_checked_not_coerced():
    import numpy as np

    from diffode.solvers import DEIS, DPMSolverPP, UniPC

    # bool("False") is True: a flag given as a string is refused rather than read backwards
    with pytest.raises(TypeError, match="multistep must be True or False, got 'False'"):
        DPMSolverPP(2, multistep="False")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lower_order_final must be True or False"):
        DEIS(3, lower_order_final="false")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="exact must be True or False"):
        DPMSolverPP(3, exact="no")  # type: ignore[arg-type]
    # any integer type is an order, as for steps and max_nfe; a float is not
    assert DPMSolverPP(np.int64(3)).steps_order == 3 and UniPC(order=np.int32(2)).order == 3
    assert DEIS(np.int64(2)).name == "deis-2"
    assert DPMSolverPP(2, multistep=np.bool_(False)).evals_per_step == 2
    with pytest.raises(ValueError, match=r"order must be one of \(1, 2, 3\), got 2.0"):
        DPMSolverPP(2.0)  # type: ignore[arg-type]
    # the σ̂ variant has no η of its own: an η other than its mean's is refused, not ignored
    with pytest.raises(ValueError, match="no η of its own, got eta=0.5"):
        DDIM(0.5, sigma_hat=True)
    assert DDIM(1.0, sigma_hat=True).stochastic and repr(DDIM(sigma_hat=True)) == repr(
        DDIM(1.0, sigma_hat=True)
    )


def test_solve_refuses_a_field_that_is_not_callable_and_skips_states_without_elements():
    x = torch.randn(2, 2)
    with pytest.raises(TypeError, match="f must be a callable vector field"):
        solve(None, x, torch.tensor([5.0, 1.0]))  # type: ignore[arg-type]
    calls: list[float] = []

    def f(sigma, y):
        calls.append(float(sigma))
        return 0.1 * y

    # samples with no elements: an adaptive solver's error norm would be NaN, its step size too
    empty = torch.randn(2, 0)
    for solver in ("euler", "dopri5"):
        out = solve(f, empty, torch.tensor([5.0, 1.0]), solver)
        assert out.x.shape == (2, 0) and out.nfe == 0
    assert calls == []


def test_max_nfe_on_a_grid_denser_than_the_budget_names_the_grid():
    from diffode.solvers import Dopri5

    grid = torch.logspace(1, -1, 1701, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"fewer grid points: its 1700 intervals take at least one step"):
        solve(lambda s, y: -y, torch.ones(1, 1), grid, Dopri5(rtol=1.0, atol=1.0))
    # a budget that the tolerances, not the grid, exhaust gets no such advice
    with pytest.raises(ValueError, match=r"loosen rtol/atol or raise max_nfe$"):
        solve(lambda s, y: -y, torch.ones(1, 1), grid[[0, -1]], Dopri5(rtol=1e-12, atol=1e-12, max_nfe=60))


def test_malformed_schedule_timesteps_and_cond_name_the_argument(linear):
    from diffode.pretrained import digits_conditional

    noise = torch.randn(2, 1, 8, 8)
    with pytest.raises(TypeError, match="schedule must be a diffode NoiseSchedule"):
        sample(wavy_model, None, noise, steps=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"timesteps must be a non-empty 1-D tensor, got shape \(1, 2\)"):
        sample(wavy_model, linear, noise, timesteps=torch.tensor([[999, 500]]))
    model, schedule = digits_conditional()
    with pytest.raises(TypeError, match="cond must be tensors with the batch as first dimension"):
        sample(model, schedule, noise, steps=2, cond=torch.tensor(3))


def test_a_field_returning_nan_stops_an_adaptive_solve_at_once():
    # the first step size, chosen from a NaN slope, was NaN: 10,000 evaluations at σ = NaN followed
    calls = [0]

    def f(sigma, x):
        calls[0] += 1
        return x * float("nan")

    with pytest.raises(
        ValueError, match="non-finite value at σ = 5, while choosing the first step of σ 5 -> 1"
    ):
        solve(f, torch.ones(2, 2), torch.tensor([5.0, 1.0]), "dopri5")
    # named at the first evaluation (it went on to evaluate at σ = NaN before)
    assert calls[0] == 1
