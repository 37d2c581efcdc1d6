"""Encoding and decoding (reference §8): reverse integration, exact inversion, the reversible
BDIA sampler, and every bad input of issue 4.

Round-trip error is max |decode(encode(x)) - x| over all elements, in x-space (data of unit
scale), unless a test says otherwise.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffode import (
    DenoiserField,
    EpsField,
    Schedule,
    decode,
    encode,
    karras_sigmas,
    oracles,
    sample,
    sigma_grid,
    solve,
)
from diffode.fixed_point import default_acceptance, default_tolerance, solve_fixed_point
from diffode.grids import spaced_timesteps
from diffode.solvers import BDIA, DDIM, AdamsBashforth, Bosh3, Euler, Heun, InverseOf, Midpoint, get_solver
from diffode.study import reference_solution
from diffode.testing import RandomEpsNet, assert_convergence_order
from tests.helpers import slope

SCHEDULE = Schedule.linear()
F64, F32 = torch.float64, torch.float32
EPS32 = torch.finfo(F32).eps
GAUSSIAN = oracles.Gaussian(torch.tensor([0.5, -1.0]), 0.5)
MIXTURE = oracles.GaussianMixture.ring()
NET = RandomEpsNet((2, 3), lipschitz=0.5, seed=3)


def data(name: str, n: int = 128) -> tuple[object, torch.Tensor]:
    """(model, float64 data x0) for an oracle or the random network."""
    g = torch.Generator().manual_seed(0)
    if name == "gaussian":
        return GAUSSIAN.model(SCHEDULE), GAUSSIAN.sample(n, g)
    if name == "mixture":
        return MIXTURE.model(SCHEDULE), MIXTURE.sample(n, g)
    return NET, torch.randn(n, 2, 3, generator=g, dtype=F64)


def round_trip(model, x0, **kwargs) -> float:
    info = encode(model, SCHEDULE, x0, return_info=True, **kwargs)
    back = decode(model, SCHEDULE, info)
    assert back.dtype == x0.dtype and back.shape == x0.shape
    return float((back.to(F64) - x0.to(F64)).abs().max())


# ---------------------------------------------------------------------------------------------
# Reverse integration: the round trip converges at the solver's order
# ---------------------------------------------------------------------------------------------

# Composing a method of order p with its own step taken backwards leaves a local error
# (1 + (-1)^(p+1)) C h^(p+1) + O(h^(p+2)): the leading terms add for odd p and cancel for even p,
# so the round trip converges at order p for Euler and at order p + 1 = 3 for Heun.
ROUND_TRIP_ORDER = {"euler": 1, "heun": 3}


@pytest.mark.parametrize("name", ["gaussian", "mixture", "network"])
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_reverse_round_trip_converges_at_the_solver_order(name, solver):
    model, x0 = data(name, 32)
    steps = (50, 100, 200)
    errors = [round_trip(model, x0, steps=s, solver=solver, method="reverse") for s in steps]
    order = -slope(steps, errors)
    assert abs(order - ROUND_TRIP_ORDER[solver]) <= 0.3, (order, errors)


def test_reverse_encoding_lifts_the_data_to_sigma_1_with_one_evaluation():
    # the first step is x̄₁ = x₀ + σ₁ f(σ₁, x₀); with one grid point there is nothing else to do
    model, x0 = data("network", 8)
    grid = torch.tensor([0.5, 0.0], dtype=F64)
    info = encode(model, SCHEDULE, x0, timesteps=grid, return_info=True)
    field = EpsField(model, SCHEDULE)
    expected = (x0 + 0.5 * field(0.5, x0)) / math.sqrt(1.25)
    torch.testing.assert_close(info.latents, expected, rtol=0, atol=1e-15)
    assert info.nfe == 1 and info.iterations == 0 and info.companion is None


def test_encoding_never_evaluates_the_field_at_zero():
    seen: list[float] = []

    def denoiser(xbar, sigma):
        seen.extend(sigma.tolist())
        return 0.9 * xbar / (1 + sigma[:, None] ** 2)

    field = DenoiserField(denoiser)
    x0 = torch.randn(4, 2, dtype=F64)
    grid = torch.tensor([3.0, 1.0, 0.2, 0.0], dtype=F64)
    for solver, method in [("euler", "reverse"), ("heun", "exact"), ("bdia", "exact")]:
        encode(field, SCHEDULE, x0, timesteps=grid, solver=solver, method=method, return_info=True)
    assert seen and min(seen) == pytest.approx(0.2)


def lift_error_bound(x0: torch.Tensor) -> float:
    """How far the lift x̄₁ = x₀ + σ₁ f(σ₁, x₀) puts Gaussian-oracle latents from the exact flow.

    Exactly x̄(σ₁) = μ + (x₀ - μ)√(1 + σ₁²/c²) = x₀ + (x₀ - μ)σ₁²/(2c²) + O(σ₁⁴), while the lift
    adds σ₁ ε = (x₀ - μ)σ₁²/(c² + σ₁²): the difference, (x₀ - μ)σ₁²/(2c²), grows by
    √(c² + σ_S²)/c ≈ σ_S/c up to σ_S and shrinks by √(1 + σ_S²) ≈ σ_S into x: |x₀ - μ|σ₁²/(2c³).
    """
    return float((x0 - GAUSSIAN.mean).abs().max()) * SCHEDULE.sigma_min**2 / (2 * GAUSSIAN.std**3)


def test_reverse_encoding_works_with_multistep_and_adaptive_solvers():
    model, x0 = data("gaussian", 32)
    s_top = float(sigma_grid(SCHEDULE, 100)[0])
    exact = GAUSSIAN.flow(x0, 0.0, s_top) / math.hypot(1, s_top)

    def error(solver):
        return float((encode(model, SCHEDULE, x0, steps=100, solver=solver) - exact).abs().max())

    # a tight adaptive solve leaves only the lift's error; second-order AB2 is far ahead of Euler
    assert error(Bosh3(rtol=1e-9, atol=1e-9)) == pytest.approx(lift_error_bound(x0), rel=0.01)
    assert error(AdamsBashforth(2)) < error("euler") / 10


# ---------------------------------------------------------------------------------------------
# Exact inversion of fixed-step samplers
# ---------------------------------------------------------------------------------------------

# float32: x̄ = x·√(1+σ²) resolves x at the top of the 10-step grid (σ = 60.8) only to one
# ulp of |x̄|, ≈ eps·σ_S·max|x|. The oracles' flows contract such errors (by c/σ on the Gaussian),
# which leaves the round trip within 1e-5; the random network's flow does not, so its bound is
# four of those ulps, 4·eps·√(1+σ_S²)·max|x₀|.
SIGMA_TOP_10 = float(sigma_grid(SCHEDULE, 10)[0])


@pytest.mark.parametrize("name", ["gaussian", "mixture", "network"])
@pytest.mark.parametrize("solver", ["euler", "ddim"])
def test_exact_inversion_of_euler_round_trips_at_10_steps(name, solver):
    model, x0 = data(name)
    assert round_trip(model, x0, steps=10, solver=solver, method="exact") <= 1e-10
    bound32 = 1e-5 if name != "network" else 4 * EPS32 * math.hypot(1, SIGMA_TOP_10) * float(x0.abs().max())
    assert round_trip(model, x0.float(), steps=10, solver=solver, method="exact") <= bound32


@pytest.mark.parametrize("name", ["gaussian", "mixture", "network"])
@pytest.mark.parametrize("solver", [Heun(), Midpoint(), get_solver("dpmpp-2s")], ids=lambda s: s.name)
def test_exact_inversion_of_second_order_solvers(name, solver):
    # on the ring mixture, Midpoint's first step (σ 0.01 -> 0.34 at 10 steps, -> 0.23 at 15)
    # crosses the region between modes too fast for the iteration: it is reported (below)
    # and converges from 20 steps on
    model, x0 = data(name, 32)
    steps = 20 if name == "mixture" else 10
    assert round_trip(model, x0, steps=steps, solver=solver, method="exact") <= 1e-10


def test_exact_inversion_reports_iterations_and_nfe():
    model, x0 = data("gaussian", 16)
    calls = rows = 0

    def counted(x, t):
        nonlocal calls, rows
        calls += 1
        rows += x.shape[0]
        return model(x, t)

    info = encode(counted, SCHEDULE, x0, steps=10, method="exact", return_info=True)
    # calls on the samples still iterating: NFE counts calls, the cost per step counts rows
    assert info.nfe == calls and calls >= 10 + info.iterations
    assert info.evaluations_per_step * 16 * 10 == pytest.approx(rows)
    assert info.sigmas.shape == (11,) and info.companion is None
    assert info.residual is not None and info.residual.shape == (16,)


def test_inverse_of_serves_any_ode_through_solve():
    def f(s, x):
        return torch.sin(x) + 0.3 * s

    x = torch.linspace(-2, 2, 12, dtype=F64).reshape(6, 2)
    up = torch.linspace(0.5, 2.0, 7, dtype=F64)
    y = solve(f, x, up, InverseOf(Heun(), tol=1e-14)).x
    back = solve(f, y, up.flip(0), Heun()).x
    torch.testing.assert_close(back, x, rtol=0, atol=1e-13)
    assert y.dtype == F64


def test_the_predictor_is_exact_for_a_denoiser_linear_in_log_sigma():
    # f = (x̄ - D(σ))/σ with D = a + b log σ: the Euler step undoes the flow with D held fixed, and
    # D at the step's end is extrapolated in log σ from two starts, so from the second step on the
    # predictor is the inverse itself and no step iterates; the first, with one start, does
    a, b = torch.tensor([0.3, -1.2], dtype=F64), torch.tensor([0.05, 0.4], dtype=F64)

    def f(s, x):
        return (x - a - b * math.log(s)) / s

    steps: list = []
    up = torch.logspace(-1, 1, 9, dtype=F64)
    x = torch.tensor([[0.5, -0.7], [1.5, 0.2]], dtype=F64)
    y = solve(f, x, up, InverseOf(Euler(), tol=1e-13, observer=steps.append)).x
    assert int(steps[0].iterations.max()) > 0
    assert [int(step.iterations.max()) for step in steps[1:]] == [0] * 7
    torch.testing.assert_close(solve(f, y, up.flip(0), Euler()).x, x, rtol=0, atol=1e-13)


def test_the_gain_is_the_first_step_of_the_fixed_point_iteration_and_is_measured():
    # forward(y) = 0.3 y: dividing the residual by the gain 0.3 solves it in one iteration, the
    # plain iteration (gain 1) contracts by 0.7 per iteration
    target = torch.tensor([[1.0, -2.0]], dtype=F64)

    def forward(y, rows):
        return 0.3 * y, None

    found = solve_fixed_point(forward, target, target, tol=1e-14, max_iter=100, memory=0, gain=0.3)
    assert int(found.iterations[0]) == 1 and float(found.residual[0]) <= 1e-15
    plain = solve_fixed_point(forward, target, target, tol=1e-14, max_iter=100, memory=0)
    assert int(plain.iterations[0]) > 30
    # the first iteration measures the derivative along its step: the next problem's gain
    assert float(plain.secant[0]) == pytest.approx(0.3, rel=1e-12)
    # one gain per sample
    two = torch.cat([target, 2 * target])
    per_sample = solve_fixed_point(
        forward, two, two, tol=1e-14, max_iter=100, memory=0, gain=torch.tensor([0.3, 1.0], dtype=F64)
    )
    assert per_sample.iterations.tolist()[0] == 1 and per_sample.iterations.tolist()[1] > 30
    for gain in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="gain must be positive and finite"):
            solve_fixed_point(forward, target, target, tol=1e-14, max_iter=3, gain=gain)
    with pytest.raises(ValueError, match="max_iter"):
        solve_fixed_point(forward, target, target, tol=1e-14, max_iter=0)
    with pytest.raises(ValueError, match="memory"):
        solve_fixed_point(forward, target, target, tol=1e-14, max_iter=3, memory=-1)
    for empty in (torch.zeros(0, 2, dtype=F64), torch.zeros(2, 0, dtype=F64)):
        with pytest.raises(ValueError, match="target holds no values"):
            solve_fixed_point(forward, empty, empty, tol=1e-14, max_iter=3)


def test_a_contracting_maps_round_off_floor_is_not_zero():
    # forward(y) = 1e-9 y absorbs a one-ulp nudge of y: the floor read 0, and a sample at its
    # real floor was reported as missing it by "4 times the round-off floor 0"
    target = torch.tensor([[1.0, -2.0]], dtype=F64)

    def forward(y, rows):
        return 1e-9 * y, None

    found = solve_fixed_point(forward, target, target, tol=1e-300, max_iter=4, memory=0, accept=1e-300)
    # at least one unit of round-off of the iterate's magnitude, relative to the scale
    iterate = float(found.y.abs().max())
    assert float(found.floor[0]) >= torch.finfo(F64).eps * iterate / float(found.scale[0]) > 0


def test_the_leap_is_the_next_anderson_step_for_no_evaluation():
    # a linear map near the identity (a sampling step): forward(y) = (I + 0.15 B) y
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(6, 6, dtype=F64, generator=gen)
    a = torch.eye(6, dtype=F64) + 0.15 * b / torch.linalg.matrix_norm(b, 2)
    target = torch.randn(3, 6, dtype=F64, generator=gen)
    exact = torch.linalg.solve(a, target.T).T

    def forward(y, rows):
        return y @ a.T, None

    options = {"tol": 1e-6, "max_iter": 100, "memory": 10}
    plain = solve_fixed_point(forward, target, target, **options)
    leapt = solve_fixed_point(forward, target, target, leap=True, **options)
    # the same evaluations and reported residuals (those of the last evaluated iterate) ...
    assert leapt.evaluations == plain.evaluations and torch.equal(leapt.residual, plain.residual)
    assert bool((plain.residual <= 1e-6).all())
    # ... and a returned state one step further: the iterate one more iteration evaluates
    first = target[:1]
    k = int(solve_fixed_point(forward, first, first, **options).iterations[0])
    one_more = solve_fixed_point(forward, first, first, tol=1e-300, max_iter=k + 1, memory=10)
    assert torch.equal(solve_fixed_point(forward, first, first, leap=True, **options).y, one_more.y)
    error_plain = (plain.y - exact).abs().amax(1)
    error_leapt = (leapt.y - exact).abs().amax(1)
    assert bool((error_leapt < error_plain / 5).all())
    # a guess that meets the tolerance already takes the plain first step, y + (target - A y) / gain,
    # which leaves at most 0.15 of its error in the 2-norm (A = I + 0.15 B, ‖B‖₂ = 1; the 1 % for
    # the round-off of a 1e-9 difference in values of order 1)
    close = exact[:1] + 1e-9
    found = solve_fixed_point(forward, target[:1], close, leap=True, gain=1.0, **options)
    assert int(found.iterations[0]) == 0 and found.evaluations == 1
    assert torch.equal(found.y, close + (target[:1] - close @ a.T))
    shrunk = torch.linalg.norm(found.y - exact[:1]) / torch.linalg.norm(close - exact[:1])
    assert float(shrunk) <= 0.15 * 1.01
    # the same in a batch whose other rows iterate (and fill Anderson's history), with a gain per row
    guess = target.clone()
    guess[1] = exact[1] + 1e-9
    gains = torch.tensor([1.0, 1.25, 1.0], dtype=F64)
    mixed = solve_fixed_point(forward, target, guess, leap=True, gain=gains, **options)
    assert int(mixed.iterations[1]) == 0 and bool((mixed.iterations[[0, 2]] > 0).all())
    expected = guess[1] + (1 / 1.25) * (target[1] - guess[1] @ a.T)
    torch.testing.assert_close(mixed.y[1], expected, rtol=0, atol=4 * torch.finfo(F64).eps)


@pytest.mark.parametrize("name", ["gaussian", "mixture"])
def test_exact_float32_round_trip_is_a_random_walk_of_round_off(name):
    # each inverted step ends at its round-off floor, so on the oracles (whose flows do not
    # magnify perturbations) the round trip grows like a random walk of ulps, bounded by
    # 8·eps·√S·max(1, |x₀|), its mean square by (eps·√S·max(1, |x₀|))². On fine grids the
    # predictor alone meets the tolerance on many steps; without the unevaluated step from
    # there, its error was left step after step (mixture, 1000 steps: 1.7e-4, mean square 5.3e-10)
    model, x0 = data(name)
    scale = max(1.0, float(x0.abs().max()))
    for steps in (10, 200, 1000):
        info = encode(model, SCHEDULE, x0.float(), steps=steps, method="exact", return_info=True)
        err = (decode(model, SCHEDULE, info).double() - x0).abs()
        walk = EPS32 * math.sqrt(steps) * scale
        assert float(err.max()) <= 8 * walk and float(err.square().mean()) <= walk**2, steps


def test_default_tolerance_follows_the_dtype():
    assert default_tolerance(F32) == 8 * EPS32
    assert default_tolerance(F64) == 8 * torch.finfo(F64).eps
    assert default_acceptance(F32) == 64 * EPS32
    assert default_acceptance(F64) == 64 * torch.finfo(F64).eps


# ---------------------------------------------------------------------------------------------
# The reversible sampler
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gaussian", "mixture"])
@pytest.mark.parametrize("solver", ["bdia", "bdia-edm"])
def test_bdia_round_trip_is_exact_to_round_off_at_any_step_count(name, solver):
    model, x0 = data(name)
    for steps in (2, 3, 10, 50, 200, 1000):
        assert round_trip(model, x0, steps=steps, solver=solver, method="exact") <= 1e-12


@pytest.mark.parametrize("name", ["gaussian", "mixture"])
@pytest.mark.parametrize("solver", ["bdia", "bdia-edm"])
def test_bdia_float32_round_trip_is_a_random_walk_of_round_off(name, solver):
    # every step rounds the state once each way (formed in float64, rounded once), and the
    # parasitic mode of the two-step method grows that little on these oracles, so the error
    # grows like a random walk of ulps: 8·eps·√S·max(1, |x₀|) bounds it; its mean square stays
    # below 1e-6. (Formed in float32 arithmetic, the published "bdia" exceeded it at S = 1000
    # on the ring mixture: 1.2e-4.)
    model, x0 = data(name)
    for steps in (2, 3, 10, 50, 200, 1000):
        info = encode(
            model, SCHEDULE, x0.float(), steps=steps, solver=solver, method="exact", return_info=True
        )
        back = decode(model, SCHEDULE, info.latents, steps=steps, solver=solver, companion=info.companion)
        err = (back.double() - x0).abs()
        assert float(err.max()) <= 8 * EPS32 * math.sqrt(steps) * max(1.0, float(x0.abs().max())), steps
        assert float(err.square().mean()) <= 1e-6


# in x̄ (σ_data → ∞) sampling amplifies the parasitic mode, and with it round-off, by up to the
# flow's contraction σ_S/c ≈ 64/0.15 on the ring mixture: a few hundred times the others' 1e-12
@pytest.mark.parametrize("sigma_data, bound", [(0.0, 1e-12), (1.0, 1e-12), (1e6, 5e-10)])
def test_bdia_round_trip_keeps_the_configured_coordinates(sigma_data, bound):
    model, x0 = data("mixture", 32)
    assert round_trip(model, x0, steps=20, solver=BDIA(sigma_data=sigma_data), method="exact") <= bound


def test_bdia_round_trip_on_a_random_network_in_float64():
    model, x0 = data("network")
    for steps in (10, 100):
        assert round_trip(model, x0, steps=steps, solver="bdia", method="exact") <= 1e-10


def test_bdia_step_is_its_own_inverse_on_any_ode():
    def f(s, x):
        return torch.tanh(x) * s

    x = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    down = torch.tensor([3.0, 2.2, 1.5, 0.9, 0.4, 0.1], dtype=F64)
    xs = solve(f, x, down, BDIA(), save=True).xs
    assert xs is not None
    # run back up from the last pair of states
    up = solve(f, xs[-1], down.flip(0), BDIA(companion=xs[-2]), save=True).xs
    assert up is not None
    torch.testing.assert_close(up.flip(0), xs, rtol=0, atol=1e-14)


@pytest.mark.parametrize("sigma_data", [0.0, 0.5, 1.0, 7.0])
def test_bdia_step_forms_its_difference_in_the_configured_coordinates(sigma_data):
    # x̄_{k-1} = D_{k-1} + c(σ_{k-1})/c(σ_{k+1}) (x̄_{k+1} - D_{k+1}), c(σ) = √(σ_data² + σ²), with the
    # DDIM predictions D_j = x̄_k + (σ_j - σ_k) f(σ_k, x̄_k); the round trips are exact whatever c
    # is, so only this checks that sigma_data reaches the step
    def f(s, x):
        return torch.tanh(x) * s

    x_up, x_mid = torch.randn(2, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    s_up, s_mid, s_down = 2.2, 1.5, 0.9
    solver = BDIA(sigma_data=sigma_data)
    out, _ = solver.step(f, s_mid, s_down, x_mid, (s_up, x_up))
    slope = f(s_mid, x_mid)
    ratio = math.sqrt(sigma_data**2 + s_down**2) / math.sqrt(sigma_data**2 + s_up**2)
    expected = x_mid + (s_down - s_mid) * slope + ratio * (x_up - (x_mid + (s_up - s_mid) * slope))
    torch.testing.assert_close(out, expected, rtol=1e-15, atol=1e-15)


def test_bdia_rounds_a_float32_step_once():
    # the combination is formed in float64 and rounded to the state's dtype once: its roundings
    # are what the parasitic mode grows while decoding
    def f(s, x):
        return torch.tanh(1.7 * x) * s

    x_up, x_mid = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(5))
    s_up, s_mid, s_down = 2.2, 1.5, 0.9
    out, _ = BDIA().step(f, s_mid, s_down, x_mid, (s_up, x_up))
    slope = f(s_mid, x_mid).double()
    wide = x_mid.double()
    ratio = math.hypot(1, s_down) / math.hypot(1, s_up)
    expected = wide + (s_down - s_mid) * slope + ratio * (x_up.double() - (wide + (s_up - s_mid) * slope))
    assert out.dtype == torch.float32 and torch.equal(out, expected.float())


def test_bdia_latents_are_standard_normal_for_gaussian_data():
    # the two-step difference is formed in x̄/√(σ_data² + σ²), where Gaussian data of std σ_data
    # follow a constant flow: encoding does not amplify the method's parasitic mode into the latents
    model, x0 = data("gaussian", 4096)
    solver = BDIA(sigma_data=GAUSSIAN.std)
    latents = encode(model, SCHEDULE, x0, steps=50, solver=solver, method="exact", return_info=True).latents
    assert abs(float(latents.var()) - 1) < 0.1


def test_bdia_has_order_two_and_beats_ddim_at_equal_evaluations():
    field = EpsField(MIXTURE.model(SCHEDULE), SCHEDULE)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = noise * math.hypot(1, SCHEDULE.sigma_max)

    def grid(n):
        return karras_sigmas(SCHEDULE.sigma_min, SCHEDULE.sigma_max, n + 1)

    assert_convergence_order(field, x, "bdia", 2, steps=(64, 128, 256), grid=grid)
    # equal evaluations on DDIM's uniform grid: BDIA evaluates once per step, as DDIM does
    uniform = sigma_grid(SCHEDULE, 50)
    start = noise * math.hypot(1, float(uniform[0]))
    ref = reference_solution(field, start, uniform)
    bdia = solve(field, start, uniform, "bdia")
    ddim = solve(field, start, uniform, "euler")
    assert bdia.nfe == ddim.nfe == 50
    assert float((bdia.x - ref).square().mean()) < 0.5 * float((ddim.x - ref).square().mean())


def test_bdia_samples_through_sample_and_by_name():
    model, _ = data("gaussian")
    noise = torch.randn(8, 2, dtype=F32)
    out = sample(model, SCHEDULE, noise, steps=20, solver="bdia")
    assert out.shape == noise.shape and out.dtype == F32 and bool(torch.isfinite(out).all())
    assert repr(get_solver("bdia")) == "BDIA(sigma_data=1.0)"
    assert repr(get_solver("bdia-edm")) == "BDIA(sigma_data=0.5)"
    assert BDIA(sigma_data=0.25).name == "bdia(sigma_data=0.25)"


@pytest.mark.parametrize("steps", [3, 10, 50])
def test_bdia_is_the_published_bdia_ddim(steps):
    # BDIA-DDIM with γ = 1 (Zhang, Lewis & Kleijn 2023, arXiv 2307.10829), written from the
    # paper in x-space with ᾱ and ε alone: z_{N-1} = DDIM(z_N; t_N → t_{N-1}), then
    # z_{i-1} = z_{i+1} - DDIM(z_i; t_i → t_{i+1}) + DDIM(z_i; t_i → t_{i-1}) down to the last
    # timestep, whose x̂₀ is the sample (diffode's step into σ = 0 for every solver)
    model, _ = data("mixture")
    ts = spaced_timesteps(SCHEDULE, steps)
    alpha_bars = [float(SCHEDULE.alphas_cumprod[int(t)]) for t in ts]
    z_top = torch.randn(16, 2, generator=torch.Generator().manual_seed(4), dtype=F64)

    def denoise(z, i):
        eps = model(z, ts[i].reshape(1).expand(z.shape[0]))
        return (z - math.sqrt(1 - alpha_bars[i]) * eps) / math.sqrt(alpha_bars[i]), eps

    def ddim(z, i, j):
        x0, eps = denoise(z, i)
        return math.sqrt(alpha_bars[j]) * x0 + math.sqrt(1 - alpha_bars[j]) * eps

    zs = [z_top, ddim(z_top, 0, 1)]
    for i in range(1, steps - 1):
        zs.append(zs[-2] - ddim(zs[-1], i, i - 1) + ddim(zs[-1], i, i + 1))
    expected = denoise(zs[-1], steps - 1)[0]
    ours = sample(model, SCHEDULE, z_top, steps=steps, solver="bdia")
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    # the EDM-scaled variant is a different method
    variant = sample(model, SCHEDULE, z_top, steps=steps, solver="bdia-edm")
    assert float((variant - expected).abs().max()) > 1e-3


# ---------------------------------------------------------------------------------------------
# Latent statistics
# ---------------------------------------------------------------------------------------------


def test_encoding_gaussian_data_gives_standard_normal_latents():
    # Gaussian data N(μ, c²) flow to x̄_S = μ + (x₀ - μ)√(c² + σ_S²)/c exactly, so the latents
    # x_S = x̄_S/√(1+σ_S²) have mean m = μ/√(1+σ_S²) and variance v = (c² + σ_S²)/(1 + σ_S²) per
    # dimension (≈ 0 and 1 at σ_S ≈ 125). With N samples, the sample mean has standard error
    # √(v/N) and the sample variance √(2/(N-1))·v; both are checked to four standard errors.
    # RK4 with 50 steps leaves only the lift's error (lift_error_bound, about 1e-3 here),
    # far below those.
    n = 20_000
    model, x0 = GAUSSIAN.model(SCHEDULE), GAUSSIAN.sample(n, torch.Generator().manual_seed(5))
    latents = encode(model, SCHEDULE, x0, steps=50, solver="rk4")
    s_top = float(sigma_grid(SCHEDULE, 50)[0])
    exact = GAUSSIAN.flow(x0, 0.0, s_top) / math.hypot(1, s_top)
    assert float((latents - exact).abs().max()) <= 1.01 * lift_error_bound(x0)
    mean = GAUSSIAN.mean / math.hypot(1, s_top)
    var = (GAUSSIAN.std**2 + s_top**2) / (1 + s_top**2)
    assert bool(((latents.mean(0) - mean).abs() <= 4 * math.sqrt(var / n)).all())
    assert bool(((latents.var(0) - var).abs() <= 4 * var * math.sqrt(2 / (n - 1))).all())
    assert bool((mean.abs() < 0.01).all()) and abs(var - 1) < 1e-4


# ---------------------------------------------------------------------------------------------
# Shapes, dtypes, front doors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, solver", [("reverse", "euler"), ("exact", "heun"), ("exact", "bdia")])
def test_image_batches_keep_shape_and_dtype(method, solver):
    net = RandomEpsNet((1, 4, 4), seed=2)
    x0 = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    info = encode(net, SCHEDULE, x0, steps=6, solver=solver, method=method, return_info=True)
    assert info.latents.shape == x0.shape and info.latents.dtype == F32
    back = decode(net, SCHEDULE, info)
    assert back.shape == x0.shape and back.dtype == F32


def test_encode_returns_latents_alone_by_default():
    model, x0 = data("gaussian", 4)
    latents = encode(model, SCHEDULE, x0, steps=5)
    assert isinstance(latents, torch.Tensor) and latents.shape == x0.shape


def test_one_step_grid_round_trips_through_the_final_step_alone():
    model, x0 = data("network", 8)
    # one inverted step: the round trip is the fixed-point residual, relative to max(1, |x|)
    bound = default_acceptance(F64) * max(1.0, float(x0.abs().max()))
    assert round_trip(model, x0, steps=1, timesteps="uniform", method="exact") <= bound
    info = encode(model, SCHEDULE, x0, steps=1, solver="bdia", method="exact", return_info=True)
    assert info.companion is None


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_a_stochastic_sampler_cannot_encode():
    model, x0 = data("gaussian", 4)
    for method in ("reverse", "exact"):
        with pytest.raises(ValueError, match=r"DDIM\(eta=0.5\) is stochastic.*solver='ddim' means eta=0"):
            encode(model, SCHEDULE, x0, steps=5, solver=DDIM(0.5), method=method)
    with pytest.raises(ValueError, match="stochastic: its steps add fresh noise"):
        InverseOf(DDIM(eta=1.0))


def test_a_grid_in_the_wrong_direction_is_refused():
    model, x0 = data("gaussian", 4)
    increasing = torch.tensor([0.1, 1.0, 10.0], dtype=F64)
    with pytest.raises(ValueError, match="timesteps must describe the sampling grid, decreasing.*flip"):
        encode(model, SCHEDULE, x0, timesteps=increasing)
    with pytest.raises(ValueError, match="timesteps must describe the sampling grid"):
        encode(model, SCHEDULE, x0, timesteps=torch.tensor([10, 500, 900]))
    field = EpsField(model, SCHEDULE)
    with pytest.raises(ValueError, match="runs on an increasing σ grid, got the decreasing grid"):
        solve(field, x0, increasing.flip(0), InverseOf(Euler()))


def test_a_fixed_point_iteration_that_does_not_converge_is_reported():
    model, x0 = data("gaussian", 4)
    with pytest.raises(
        ValueError,
        match=r"did not converge on the step σ .* for sample \d+ .*residual .* after 1 iterations, "
        r"above the acceptance .* \(tol ",
    ):
        encode(model, SCHEDULE, x0, steps=10, method="exact", max_iter=1)

    # a denoiser D = tanh(x̄) makes the final sampling step x̂₀ = tanh(x̄₁): data outside (-1, 1)
    # have no preimage, so no iteration can converge
    squashing = DenoiserField(lambda xbar, sigma: torch.tanh(xbar))
    with pytest.raises(ValueError, match=r"did not converge on the step σ 0 -> 0.01.*residual"):
        encode(squashing, SCHEDULE, torch.full((2, 2), 2.0, dtype=F64), steps=3, method="exact")
    # and a coarse Midpoint step across the mixture's modes on DDIM's uniform grid (see the
    # second-order test)
    mixture, x_mix = data("mixture", 32)
    with pytest.raises(
        ValueError, match=r"exact inversion of Midpoint\(\) did not converge on the step σ 0.01"
    ):
        encode(mixture, SCHEDULE, x_mix, steps=10, timesteps="uniform", solver="midpoint", method="exact")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("solver", ["bdia", "bdia-edm"])
def test_bdia_encodings_of_low_precision_data_decode(dtype, solver):
    # sample integrates float16/bfloat16 data in float32, and the Encoding keeps latents and
    # companion there: rounded to the data's dtype, the pair started decoding off the encoded
    # trajectory and the two-step method's parasitic mode grew that (bfloat16, 50 steps: 8.5 units)
    oracle = oracles.Gaussian(torch.zeros(4, dtype=torch.float64), 0.5)
    x0 = (0.5 * torch.randn(3, 4, generator=torch.Generator().manual_seed(0))).to(dtype)
    for steps in (10, 50):
        info = encode(
            oracle.model(SCHEDULE), SCHEDULE, x0, steps=steps, solver=solver, method="exact", return_info=True
        )
        assert info.dtype == dtype and info.latents.dtype == torch.float32
        assert info.companion is not None and info.companion.dtype == torch.float32
        back = decode(oracle.model(SCHEDULE), SCHEDULE, info)
        # the float32 round trip errs far below the data's resolution: back within one unit of it
        assert back.dtype == dtype
        torch.testing.assert_close(back.float(), x0.float(), rtol=0, atol=torch.finfo(dtype).eps)
    # without the Encoding, the latents come back in the data's dtype
    assert encode(oracle.model(SCHEDULE), SCHEDULE, x0, steps=10).dtype == dtype


def test_exact_inversion_refuses_multistep_and_adaptive_solvers():
    model, x0 = data("gaussian", 4)
    with pytest.raises(ValueError, match="carries state between steps"):
        encode(model, SCHEDULE, x0, steps=5, solver="ab2", method="exact")
    with pytest.raises(ValueError, match="a backend's integrator, whose steps diffode does not invert"):
        encode(model, SCHEDULE, x0, steps=5, solver="torchdiffeq:rk4", method="exact")
    with pytest.raises(ValueError, match="adaptive"):
        encode(model, SCHEDULE, x0, solver="bosh3", method="exact")
    with pytest.raises(ValueError, match="an inverse already"):
        InverseOf(InverseOf(Euler()))
    with pytest.raises(TypeError, match="must be a diffode Solver object"):
        InverseOf("euler")  # type: ignore[arg-type]


def test_bdia_exact_needs_the_companion():
    model, x0 = data("gaussian", 4)
    with pytest.raises(ValueError, match="pass return_info=True"):
        encode(model, SCHEDULE, x0, steps=5, solver="bdia", method="exact")
    info = encode(model, SCHEDULE, x0, steps=5, solver="bdia", method="exact", return_info=True)
    assert info.companion is not None
    with pytest.raises(ValueError, match="companion is the second state of the reversible solver 'bdia'"):
        decode(model, SCHEDULE, info.latents, steps=5, solver="euler", companion=info.companion)
    with pytest.raises(ValueError, match="companion must match the start state"):
        decode(model, SCHEDULE, info.latents, steps=5, solver="bdia", companion=info.companion[:2])
    with pytest.raises(ValueError, match="at least two positive σ"):
        decode(model, SCHEDULE, info.latents, steps=1, solver="bdia", companion=info.companion)


def test_other_bad_arguments():
    model, x0 = data("gaussian", 4)
    with pytest.raises(ValueError, match=r"method must be one of \('reverse', 'exact'\), got 'backward'"):
        encode(model, SCHEDULE, x0, method="backward")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="x0 contains 1 non-finite"):
        encode(model, SCHEDULE, torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match="tol must be a finite number > 0"):
        encode(model, SCHEDULE, x0, method="exact", tol=0.0)
    # the iteration's settings with explicit steps were ignored without a word
    for options in ({"tol": 1e-3}, {"max_iter": 5}):
        with pytest.raises(ValueError, match="set the fixed-point iteration of method='exact'"):
            encode(model, SCHEDULE, x0, **options)
    with pytest.raises(ValueError, match="max_iter must be at least 1, got 0"):
        encode(model, SCHEDULE, x0, method="exact", max_iter=0)
    with pytest.raises(ValueError, match="sigma_data must be a finite number >= 0"):
        BDIA(sigma_data=-1.0)
    ztsnr = Schedule.from_betas(torch.cat([torch.full((9,), 0.1, dtype=F64), torch.ones(1, dtype=F64)]))
    with pytest.raises(ValueError, match="zero terminal SNR"):
        encode(model, ztsnr, x0, steps=3, timesteps="trailing")


def test_decode_refuses_a_stochastic_solver():
    model = RandomEpsNet((4,))
    with pytest.raises(ValueError, match="is stochastic: decoding with it adds fresh noise"):
        decode(model, Schedule.linear(), torch.randn(2, 4), steps=5, solver=DDIM(eta=1.0))


@pytest.mark.parametrize("solver", ["euler", "bdia"])
def test_an_empty_batch_encodes_and_decodes_exactly_to_an_empty_batch(solver):
    model, schedule = RandomEpsNet((4,)), Schedule.linear()
    info = encode(
        model, schedule, torch.zeros(0, 4), steps=5, solver=solver, method="exact", return_info=True
    )
    assert info.latents.shape == (0, 4) and info.residual is not None and info.residual.shape == (0,)
    assert info.companion is None or info.companion.shape == (0, 4)
    assert decode(model, schedule, info).shape == (0, 4)
