"""Fixed-step solvers: Runge–Kutta tableaux, variable-step Adams–Bashforth and DPM-Solver++.

Every solver is checked against exact answers: its empirical convergence order on the Gaussian
oracle (closed-form flow) and on a Gaussian mixture (float64 scipy reference), identities to
round-off, exactness on polynomials, batch and NFE bookkeeping, and every front door.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from itertools import pairwise

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.integrate import solve_ivp
from torch import Tensor

from diffode import (
    DenoiserField,
    EpsField,
    Schedule,
    field_for,
    karras_sigmas,
    oracles,
    pretrained,
    sample,
    sigma_grid,
    solve,
    spaced_timesteps,
)
from diffode.solvers import (
    DEIS,
    IPNDM,
    RK4,
    AdamsBashforth,
    ButcherTableau,
    DPMSolverPP,
    Euler,
    Heun,
    Heun3,
    Midpoint,
    Ralston,
    RungeKutta,
    Solver,
    UniPC,
    UnstableStepError,
    get_solver,
    without_stability_check,
)
from diffode.solvers.exponential import phi
from diffode.solvers.multistep import MultistepState, interpolation_weights
from diffode.solvers.runge_kutta import (
    BOGACKI_SHAMPINE,
    DENOISER_GAIN_LIMIT,
    HEUN3_TABLEAU,
    HEUN_TABLEAU,
    MIDPOINT_TABLEAU,
    RALSTON3_TABLEAU,
    RK4_TABLEAU,
)
from diffode.testing import RandomEpsNet
from tests.helpers import ddim_reference_loop, slope, wavy_model
from tests.solver_cases import FIXED_STEP_SOLVERS, is_multistep, needs_schedule, solver_id

SCHEDULE = Schedule.linear()
F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# Runge–Kutta tableaux
# ---------------------------------------------------------------------------------------------

TABLEAUX = [HEUN_TABLEAU, MIDPOINT_TABLEAU, RALSTON3_TABLEAU, HEUN3_TABLEAU, RK4_TABLEAU]


def order_conditions(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> dict[int, list[tuple[float, float]]]:
    """The rooted-tree order conditions, (value, required), grouped by the order they belong to."""
    return {
        1: [(b.sum(), 1.0)],
        2: [(b @ c, 1 / 2)],
        3: [(b @ c**2, 1 / 3), (b @ a @ c, 1 / 6)],
        4: [(b @ c**3, 1 / 4), (b @ (c * (a @ c)), 1 / 8), (b @ a @ c**2, 1 / 12), (b @ a @ a @ c, 1 / 24)],
        5: [(b @ c**4, 1 / 5), (b @ a @ a @ a @ c, 1 / 120)],
    }


@pytest.mark.parametrize("tableau", TABLEAUX, ids=lambda t: t.name)
def test_tableau_is_consistent_and_of_exactly_its_order(tableau):
    a, b, c = (np.array(v, dtype=float) for v in (tableau.a, tableau.b, tableau.c))
    s = len(b)
    assert a.shape == (s, s) and c.shape == (s,)
    assert np.all(np.triu(a) == 0), "explicit methods need a strictly lower-triangular a"
    np.testing.assert_allclose(a.sum(1), c, rtol=0, atol=1e-15)
    conditions = order_conditions(a, b, c)
    for p in range(1, tableau.order + 1):
        for value, required in conditions[p]:
            assert value == pytest.approx(required, abs=1e-14), (tableau.name, p)
    # and not one order more: the declared order is not understated
    assert any(abs(v - r) > 1e-3 for v, r in conditions[tableau.order + 1])


def test_classic_rk4_is_not_the_three_eighths_rule():
    assert RK4_TABLEAU.b == (1 / 6, 1 / 3, 1 / 3, 1 / 6)
    assert RK4_TABLEAU.c == (0.0, 0.5, 0.5, 1.0)


@pytest.mark.parametrize(
    "solver", [s for s in FIXED_STEP_SOLVERS if isinstance(s, RungeKutta)], ids=solver_id
)
def test_runge_kutta_solvers_declare_their_tableau(solver):
    assert solver.order == solver.tableau.order
    assert solver.evals_per_step == solver.tableau.stages
    assert solver.tableau.name == solver.name
    assert type(get_solver(solver.name)) is type(solver)
    summary = " ".join(solver.__doc__.split("\n\n")[0].split())
    assert f"Order {solver.order}, {solver.evals_per_step} evaluations per step." in summary


def test_custom_tableau_runs_as_a_solver():
    three_eighths = ButcherTableau(
        a=((0, 0, 0, 0), (1 / 3, 0, 0, 0), (-1 / 3, 1, 0, 0), (1, -1, 1, 0)),
        b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
        c=(0, 1 / 3, 2 / 3, 1),
        order=4,
        name="3/8 rule",
    )
    solver = RungeKutta(three_eighths)
    assert (solver.order, solver.evals_per_step) == (4, 4)
    assert "3/8 rule" in repr(solver)
    # dx/dσ = x over one step: any 4-stage order-4 method gives the degree-4 Taylor polynomial
    x = torch.ones(1, 1, dtype=F64)
    h = 0.3
    out = solve(lambda s, v: v, x, torch.tensor([1.0, 1.0 + h], dtype=F64), solver)
    assert float(out.x) == pytest.approx(1 + h + h**2 / 2 + h**3 / 6 + h**4 / 24, rel=1e-15)


def test_an_embedded_tableau_runs_as_a_fixed_step_method():
    # Bogacki–Shampine propagates Ralston's third-order solution; as a fixed-step method it
    # evaluates all four stages (the error row and the FSAL stage go unused)
    solver = RungeKutta(BOGACKI_SHAMPINE)
    assert (solver.order, solver.evals_per_step) == (3, 4)
    field = EpsField(wavy_model(), SCHEDULE)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(8), dtype=F64)
    grid = sigma_grid(SCHEDULE, 6, "karras")[:-1]
    torch.testing.assert_close(
        solve(field, x, grid, solver).x, solve(field, x, grid, "ralston3").x, rtol=1e-14, atol=1e-14
    )


@pytest.mark.parametrize("tableau", TABLEAUX, ids=lambda t: t.name)
def test_amplification_is_the_step_on_the_linear_test_equation(tableau):
    # the analysis against the solver itself: one step of the stage loop on dx̄/dσ = (1 - d) x̄/σ
    # (a denoiser d·x̄) from x̄ = 1, for the modes d the analysis samples
    modes = torch.linspace(0.0, 1.0, 101, dtype=F64)
    field = DenoiserField(lambda xbar, sigma: modes * xbar)
    ratios = [1.5, 4.0, 13.0, 15.0, 40.0, 50.0, 500.0]
    worst, at = tableau.amplification(torch.tensor(ratios, dtype=F64))
    for ratio, w, d in zip(ratios, worst.tolist(), at.tolist(), strict=True):
        grid = torch.tensor([2.0, 2.0 / ratio], dtype=F64)
        x = solve(field, torch.ones(1, 101, dtype=F64), grid, RungeKutta(tableau, check_stability=False)).x[0]
        assert abs(float(x.abs().max()) - w) <= 1e-12 * max(1.0, w)
        assert float(modes[x.abs().argmax()]) == d


@pytest.mark.parametrize("tableau", [*TABLEAUX, BOGACKI_SHAMPINE], ids=lambda t: t.name)
def test_denoiser_weights_are_the_steps_response_to_each_stages_denoised_estimate(tableau):
    # the analysis against the stage loop itself: from x̄ = 0 with a zero denoiser except at the
    # m-th evaluation, where it is 1, one step lands on w_m (the step is linear in the estimates)
    ratios = [1.5, 4.0, 11.2, 50.0]
    weights = tableau.denoiser_weights(torch.tensor(ratios, dtype=F64))
    for ratio, row in zip(ratios, weights.tolist(), strict=True):
        for m, w in enumerate(row):
            calls = []

            def f(sigma, x, m=m, calls=calls):
                calls.append(sigma)
                return (x - float(len(calls) - 1 == m)) / sigma

            grid = torch.tensor([2.0, 2.0 / ratio], dtype=F64)
            x = solve(f, torch.zeros(1, 1, dtype=F64), grid, RungeKutta(tableau)).x
            assert abs(float(x) - w) <= 1e-13 * max(1.0, abs(w))


def test_denoiser_weights_in_closed_form():
    ratio = torch.tensor([1.5, 2.0, 10.0, 100.0], dtype=F64)
    r = ratio.numpy()
    # Euler's one weight 1 - σ₁/σ₀; Heun's (1 - r)(r - 2)/(2r) and (r - 1)/2, whose magnitudes sum
    # to (r - 1)²/r from r = 2 on
    euler = ButcherTableau(a=((0.0,),), b=(1.0,), c=(0.0,), order=1)
    np.testing.assert_allclose(euler.denoiser_weights(ratio)[:, 0].numpy(), 1 - 1 / r, rtol=1e-15)
    heun = HEUN_TABLEAU.denoiser_weights(ratio).numpy()
    np.testing.assert_allclose(heun, np.stack([(1 - r) * (r - 2) / (2 * r), (r - 1) / 2], 1), rtol=1e-14)
    np.testing.assert_allclose(np.abs(heun).sum(1)[1:], ((r - 1) ** 2 / r)[1:], rtol=1e-14)


@pytest.mark.parametrize(
    "solver, takes, too_heavy, unstable",
    [
        # Heun's weights sum to (r - 1)²/r = 9 at r = (11 + √117)/2 = 10.908; RK4's at 12.876
        (Heun, 10.9, 10.92, 14.0),
        (RK4, 12.87, 12.88, 45.3),
        (Midpoint, 1e4, None, None),
        (Ralston, 1e4, None, None),
        (Heun3, 1e4, None, None),
    ],
)
def test_runge_kutta_refuses_the_steps_it_is_unstable_on(solver, takes, too_heavy, unstable):
    # Heun's stability function exceeds 1 in modulus from σ₀/σ₁ = 7 + 4√3 = 13.93, RK4's from
    # 45.21 (for denoiser eigenvalues in [0, 1]), and before that their weights on the denoised
    # estimates pass DENOISER_GAIN_LIMIT; methods whose stages stay inside the step never do either
    assert DENOISER_GAIN_LIMIT == 9.0
    x = torch.ones(2, 3, dtype=F64)
    field = DenoiserField(lambda xbar, sigma: 0.5 * xbar)
    solve(field, x, torch.tensor([30.0, 30.0 / takes, 0.0], dtype=F64), solver())
    if unstable is None:
        return
    heavy = torch.tensor([30.0, 30.0 / too_heavy, 0.0], dtype=F64)
    with pytest.raises(
        UnstableStepError, match="multiplies the network's errors in its denoised estimates by 9.0"
    ):
        solve(field, x, heavy, solver())
    grid = torch.tensor([30.0, 30.0 / unstable, 0.0], dtype=F64)
    with pytest.raises(UnstableStepError, match=f"σ 30 -> .*σ₀/σ₁ = {unstable:g}.*check_stability=False"):
        solve(field, x, grid, solver())
    # an increasing grid is checked as the sampling grid that decodes it
    with pytest.raises(UnstableStepError, match=f"sampling step σ 30 -> .*σ₀/σ₁ = {unstable:g}"):
        solve(field, x, grid.flip(0)[1:], solver())
    # taken when asked; a plain callable is any ODE and is integrated as given
    solve(field, x, grid, solver(check_stability=False))
    solve(lambda sigma, y: -y, x, grid, solver())


def test_ipndm_refuses_a_long_step_of_its_four_step_formula():
    # steps of ratio 2 up to the one under test: the fourth positive step is the first that the
    # four-step formula takes; the check needs a network's field, not a plain callable
    limit = IPNDM.FOUR_STEP_MAX_RATIO
    assert limit == 25.0
    x = torch.ones(2, 3, dtype=F64)
    field = DenoiserField(lambda xbar, sigma: 0.5 * xbar)

    def grid(ratio: float, at: int = 3) -> Tensor:
        points = [30.0]
        for i in range(5):
            points.append(points[-1] / (ratio if i == at else 2.0))
        return torch.tensor([*points, 0.0], dtype=F64)

    solve(field, x, grid(limit), IPNDM())
    too_long = grid(limit * 1.002)
    with pytest.raises(
        UnstableStepError, match=r"IPNDM\(order=4\): the step σ 3.75 -> 0.1497 \(ratio 25.05\).*four-step"
    ) as refusal:
        solve(field, x, too_long, IPNDM())
    assert "IPNDM(check_stability=False)" in str(refusal.value) and "ab4" in str(refusal.value)
    # the last step too; a step up (encoding) when it is the fourth or later step up
    with pytest.raises(UnstableStepError, match="ratio 25.05"):
        solve(field, x, grid(limit * 1.002, at=4), IPNDM())
    first_long = grid(limit * 1.002, at=0)
    with pytest.raises(UnstableStepError, match=r"σ 1.198 -> 30 \(ratio 25.05\)"):
        solve(field, x, first_long.flip(0)[1:], IPNDM())
    # the start-up's lower-order steps, order 3, an unchecked solver and any plain ODE take it
    solve(field, x, first_long, IPNDM())
    solve(field, x, grid(1e3, at=2), IPNDM())
    solve(field, x, too_long, IPNDM(3))
    solve(field, x, too_long, IPNDM(check_stability=False))
    solve(lambda sigma, y: -y, x, too_long, IPNDM())
    assert repr(IPNDM(check_stability=False)) == "IPNDM(order=4, check_stability=False)"


def test_ipndm_on_the_bundled_network_refuses_the_short_ddim_grids_it_fails_on():
    # DDIM's uniform and linspace grids at 10 steps end σ 0.34-0.38 -> 0.01 (ratio 34-38), where
    # iPNDM measured 1.2-19 times Euler's distance (docs/benchmarks.md); 20 steps end at 18.6
    model, schedule = pretrained.digits()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for spacing in ("uniform", "linspace"):
        with pytest.raises(UnstableStepError, match=r"0.01 \(ratio 3[48]\."):
            sample(model, schedule, x, steps=10, solver="ipndm", timesteps=spacing)
        sample(model, schedule, x, steps=20, solver="ipndm", timesteps=spacing)
    for spacing in ("quadratic", "trailing", "karras", "logsnr"):
        sample(model, schedule, x, steps=10, solver="ipndm", timesteps=spacing)
    # the Karras grid's last step at 5 steps: σ 0.49 -> 0.01 (ratio 49.1); at 7 steps 16.8
    with pytest.raises(UnstableStepError, match=r"0.01 \(ratio 49.13\)"):
        sample(model, schedule, x, steps=5, solver="ipndm", timesteps="karras")
    sample(model, schedule, x, steps=7, solver="ipndm", timesteps="karras")


def test_deis_tab_finds_the_schedule_of_a_bare_or_wrapped_field_and_needs_one():
    field = EpsField(MIXTURE.model(SCHEDULE), SCHEDULE)
    grid = sigma_grid(SCHEDULE, 8, "uniform")
    solver = get_solver("deis-tab-3")
    solver.init(field, grid, torch.zeros(1, 2))  # bare, as grids.optimize and benchmarks call it
    x = torch.randn(4, 2, dtype=F64)
    assert torch.isfinite(solve(field, x, grid, solver).x).all()
    with pytest.raises(ValueError, match="needs the field's schedule; pass a ScheduleField"):
        solve(MIXTURE, x, grid, solver)
    with pytest.raises(ValueError, match="needs σ within the schedule's"):
        solve(field, x, torch.tensor([200.0, 1.0, 0.5, 0.0], dtype=F64), solver)
    # a float32 copy of the grid rounds σ_max up a little and is taken
    solve(field, x, grid.float(), solver)
    # zero terminal SNR: t(σ) is T - 1 everywhere above the largest finite σ
    zero_snr = Schedule.cosine(max_beta=1.0)
    assert math.isinf(zero_snr.sigma_max)
    v_field = field_for(lambda x, t: torch.zeros_like(x), zero_snr, "v_prediction")
    above = torch.tensor([5 * zero_snr.sigma_max_finite, 300.0, 10.0, 0.0], dtype=F64)
    with pytest.raises(ValueError, match="where t\\(σ\\) is one-to-one"):
        solve(v_field, x, above, solver)


def test_without_stability_check_keeps_the_method():
    for name in ("heun", "rk4", "ipndm"):
        assert without_stability_check(name).check_stability is False
        assert repr(without_stability_check(name)) == repr(get_solver(name))[:-1] + (
            ", check_stability=False)" if name == "ipndm" else "check_stability=False)"
        )
    assert without_stability_check(IPNDM(3)).max_order == 3
    custom = without_stability_check(RungeKutta(HEUN3_TABLEAU))
    assert type(custom) is RungeKutta and custom.tableau is HEUN3_TABLEAU and not custom.check_stability
    with pytest.raises(ValueError, match=r"Euler\(\) has no stability check to turn off"):
        without_stability_check("euler")


def test_a_named_runge_kutta_method_keeps_its_tableau():
    with pytest.raises(TypeError, match="Heun is the 'heun' tableau and takes none"):
        Heun(RK4_TABLEAU)
    assert repr(Heun()) == "Heun()" and repr(Heun(check_stability=False)) == "Heun(check_stability=False)"
    assert "custom" in repr(RungeKutta(ButcherTableau(a=((0,),), b=(1,), c=(0,), order=1)))


def test_stages_at_c_equal_one_hit_the_grid_point_exactly():
    seen: list[float] = []

    def f(s, x):
        seen.append(s)
        return x

    grid = SCHEDULE.sigmas[torch.tensor([700, 400, 200])]
    solve(f, torch.ones(1, 1, dtype=F64), grid, Heun())
    values = grid.tolist()
    assert seen == [values[0], values[1], values[1], values[2]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(a=((0, 0), (1, 0)), b=(0.5, 0.5), c=(0, 1, 2), order=2), "shapes disagree"),
        (dict(a=((0, 0), (1,)), b=(0.5, 0.5), c=(0, 1), order=2), "a must be 2 × 2"),
        (dict(a=((0.5, 0), (1, 0)), b=(0.5, 0.5), c=(0.5, 1), order=1), "strictly lower triangular"),
        (dict(a=((0, 0.1), (1, 0)), b=(0.5, 0.5), c=(0.1, 1), order=1), "row 0 is \\[0.0, 0.1\\]"),
        (
            dict(a=((0, 0), (1, 0)), b=(0.5, 0.5), c=(0, 0.9), order=1),
            "row 1 of a sums to 1.0 but c\\[1\\] = 0.9",
        ),
        (dict(a=((0, 0), (1, 0)), b=(0.5, 0.6), c=(0, 1), order=1), "b·Φ\\(τ\\) = 1/1 gives 1.1"),
        (dict(a=((0, 0), (1, 0)), b=(1, 0), c=(0, 1), order=2), "claims order 2 .* b·Φ\\(\\[τ\\]\\) = 1/2"),
        # orders above 4 are checked too (RK4's coefficients do not make a fifth-order method)
        (
            dict(a=RK4_TABLEAU.a, b=RK4_TABLEAU.b, c=RK4_TABLEAU.c, order=6),
            "claims order 6 .* b·Φ\\(\\[τ, τ, τ, τ\\]\\) = 1/5",
        ),
        (dict(a=((0, 0), (1, 0)), b=(0.5, 0.5), c=(0, 1), order=0), "order must be an int >= 1, got 0"),
        (dict(a=((0, 0), (math.inf, 0)), b=(0.5, 0.5), c=(0, math.inf), order=1), "must be finite"),
        (dict(a=((0, 0), ("x", 0)), b=(0.5, 0.5), c=(0, 1), order=1), "must hold real numbers"),
        (dict(a=(), b=(), c=(), order=1), "at least one weight"),
        (
            dict(a=((0, 0), (2, 0)), b=(0.75, 0.25), c=(0, 2), order=2),
            "every node c_i must lie in \\[0, 1\\]",
        ),
    ],
)
def test_inconsistent_tableau_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ButcherTableau(**kwargs, name="bad")


def test_runge_kutta_needs_a_tableau():
    with pytest.raises(TypeError, match="tableau must be a ButcherTableau, got str"):
        RungeKutta("rk4")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Variable-step weights, φ functions, exactness on polynomials
# ---------------------------------------------------------------------------------------------


def test_adams_bashforth_weights_on_a_uniform_grid_are_the_classical_constants():
    def ab_weights(k):
        return interpolation_weights([-j for j in range(k)], [1 / (m + 1) for m in range(k)])

    np.testing.assert_allclose(ab_weights(1), [1.0], rtol=1e-15)
    np.testing.assert_allclose(ab_weights(2), [3 / 2, -1 / 2], rtol=1e-15)
    np.testing.assert_allclose(ab_weights(3), [23 / 12, -16 / 12, 5 / 12], rtol=1e-14)
    np.testing.assert_allclose(ab_weights(4), [55 / 24, -59 / 24, 37 / 24, -9 / 24], rtol=1e-14)


past_gaps = st.lists(st.floats(0.2, 5.0), min_size=0, max_size=3)


@given(gaps=past_gaps, h=st.sampled_from([-1.0, 1.0]) | st.floats(-3.0, 3.0).filter(lambda v: abs(v) > 0.05))
def test_adams_bashforth_step_is_exact_for_polynomials_of_degree_below_its_order(gaps, h):
    # past nodes σ_j lie behind σ₀ (opposite to the step h), at random distances
    order = len(gaps) + 1
    s0 = 10.0
    past = [s0 - math.copysign(sum(gaps[: j + 1]), h) for j in range(len(gaps))][::-1]
    coeffs = torch.tensor([0.7, -1.3, 0.4, 0.9][:order], dtype=F64)

    def f(s, x):
        return torch.full_like(x, float(sum(c * (s - s0) ** m for m, c in enumerate(coeffs.tolist()))))

    state = tuple((s, f(s, torch.zeros(1, 1, dtype=F64))) for s in past)
    x0 = torch.full((1, 1), 2.0, dtype=F64)
    x1, new_state = AdamsBashforth(order).step(f, s0, s0 + h, x0, state)
    exact = 2.0 + sum(c * h ** (m + 1) / (m + 1) for m, c in enumerate(coeffs.tolist()))
    assert float(x1) == pytest.approx(exact, rel=1e-11, abs=1e-11)
    assert [s for s, _ in new_state] == [*past, s0][1:]


@pytest.mark.parametrize("z", [-30.0, -3.0, -1.0, -0.999, -0.3, -1e-9, 0.0, 1e-9, 0.3, 0.999, 1.0, 3.0])
def test_phi_functions_match_their_closed_forms(z):
    if z == 0.0:
        assert [phi(k, 0.0) for k in range(4)] == [1.0, 1.0, 0.5, 1 / 6]
        return
    # the closed forms cancel catastrophically near 0; compare there against the series' leading terms
    closed = [
        math.exp(z),
        math.expm1(z) / z,
        (math.expm1(z) - z) / z**2,
        (math.expm1(z) - z - z * z / 2) / z**3,
    ]
    series = [
        1 + z + z * z / 2,
        1 + z / 2 + z * z / 6,
        1 / 2 + z / 6 + z * z / 24,
        1 / 6 + z / 24 + z * z / 120,
    ]
    for k in range(4):
        expected = series[k] if abs(z) < 1e-6 else closed[k]
        assert phi(k, z) == pytest.approx(expected, rel=1e-13), k


class Predicting:
    """A plain field ``f`` with the ``predict`` a stepper reads (x̂₀ = x̄ - σ f), as solve hands it."""

    def __init__(self, f):
        self.f = f

    def __call__(self, s, x):
        return self.f(s, x)

    def predict(self, s, x):
        value = self.f(s, x)
        return value, x - s * value


def test_published_3m_halves_the_exact_second_difference_weight():
    # the published update and the exact one differ by h φ₃(-h) D2 with D2 ≈ h² x̂₀''/2: for a
    # data prediction quadratic in λ with x̂₀'' = 2 (D2 exact), the published step falls short
    # of the exact one by h φ₃(-h)·h², on any steps
    f, d = quadratic_data_prediction((0.3, -0.4, 1.0))
    lams = [-0.5, -0.2, 0.0]
    past = tuple((math.exp(-lam), torch.full((1, 1), d(lam), dtype=F64)) for lam in lams[:2])
    h = 0.4
    s0, s1 = math.exp(-lams[2]), math.exp(-(lams[2] + h))
    x0 = torch.full((1, 1), 0.8, dtype=F64)
    published, _ = DPMSolverPP(3).step(Predicting(f), s0, s1, x0, MultistepState(past))
    exact, _ = DPMSolverPP(3, exact=True).step(Predicting(f), s0, s1, x0, MultistepState(past))
    assert float(exact - published) == pytest.approx(h**3 * phi(3, -h), rel=1e-10)


def quadratic_data_prediction(coeffs):
    """A field whose data prediction x̂₀ = x̄ - σf is D(λ) = Σ c_m λ^m, λ = -log σ, for any x̄."""

    def d_of_lambda(lam):
        return sum(c * lam**m for m, c in enumerate(coeffs))

    def f(s, x):
        return (x - d_of_lambda(-math.log(s))) / s

    return f, d_of_lambda


@given(
    coeffs=st.tuples(st.floats(-2, 2), st.floats(-2, 2), st.floats(-2, 2)),
    gaps=st.tuples(st.floats(0.05, 1.0), st.floats(0.05, 1.0)),
    h=st.floats(-1.5, 1.5).filter(lambda v: abs(v) > 0.01),
)
def test_dpm_solver_3m_exact_is_exact_when_the_data_prediction_is_quadratic_in_lambda(coeffs, gaps, h):
    # The exact 3M step integrates the quadratic interpolant of x̂₀ in λ exactly against
    # e^{-(λ₁-λ)}, so a quadratic x̂₀(λ) is integrated to round-off, on any step sizes and in both
    # directions.
    f, d = quadratic_data_prediction(coeffs)
    lam0 = 0.3
    sign = math.copysign(1.0, h)
    lams = [lam0 - sign * (gaps[0] + gaps[1]), lam0 - sign * gaps[0]]
    state = tuple((math.exp(-lam), torch.full((1, 1), d(lam), dtype=F64)) for lam in lams)
    s0, s1 = math.exp(-lam0), math.exp(-(lam0 + h))
    x0 = torch.full((1, 1), 0.8, dtype=F64)
    x1, _ = DPMSolverPP(3, exact=True).step(Predicting(f), s0, s1, x0, MultistepState(state))
    # e^{λ-λ₁}(D - D' + D'') is an antiderivative of e^{λ-λ₁} D(λ) when D''' = 0
    _, c1, c2 = coeffs

    def antiderivative_factor(lam):
        return d(lam) - (c1 + 2 * c2 * lam) + 2 * c2

    exact = math.exp(-h) * 0.8 + antiderivative_factor(lam0 + h) - math.exp(-h) * antiderivative_factor(lam0)
    assert float(x1) == pytest.approx(exact, rel=1e-11, abs=1e-11)


def test_multistep_start_up_steps_are_the_lower_order_formulas():
    field = EpsField(wavy_model(), SCHEDULE)
    x = torch.randn(3, 2, dtype=F64)
    for solver in (AdamsBashforth(4), DPMSolverPP(3), DPMSolverPP(2), DEIS(3), IPNDM(4)):
        state = solver.init(field, torch.tensor([5.0, 2.0], dtype=F64), x)
        first, _ = solver.step(field, 5.0, 2.0, x, state)
        euler, _ = Euler().step(field, 5.0, 2.0, x, None)
        assert torch.equal(first, euler), solver


# ---------------------------------------------------------------------------------------------
# DPM-Solver++ first order is Euler is DDIM
# ---------------------------------------------------------------------------------------------


@st.composite
def schedules_and_timesteps(draw):
    T = draw(st.integers(2, 100))
    betas = torch.tensor(draw(st.lists(st.floats(1e-4, 0.2), min_size=T, max_size=T)), dtype=F64)
    ts = sorted(draw(st.sets(st.integers(0, T - 1), min_size=1, max_size=min(T, 20))), reverse=True)
    return Schedule.from_betas(betas), ts


@given(case=schedules_and_timesteps(), seed=st.integers(0, 2**31 - 1))
def test_first_order_dpm_solver_is_euler_and_the_ddim_closed_form(case, seed):
    schedule, ts = case
    model = wavy_model()
    field = EpsField(model, schedule)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)
    ac = torch.cat([schedule.alphas_cumprod, torch.ones(1, dtype=F64)])  # ac[-1] = ᾱ_{-1} = 1
    for t, t_next in pairwise(ts):
        s0, s1 = float(schedule.sigmas[t]), float(schedule.sigmas[t_next])
        xbar = x * math.sqrt(1 + s0 * s0)
        dpm, _ = DPMSolverPP(1).step(field, s0, s1, xbar, MultistepState())
        euler, _ = Euler().step(field, s0, s1, xbar, None)
        assert torch.equal(dpm, euler)
        # the data-prediction form (σ₁/σ₀) x̄ + (1 - σ₁/σ₀) x̂₀ and DDIM in x-space (reference §4)
        eps = field(s0, xbar)
        data_form = (s1 / s0) * xbar + (1 - s1 / s0) * (xbar - s0 * eps)
        x0_hat = (x - (1 - ac[t]).sqrt() * eps) / ac[t].sqrt()
        ddim = (ac[t_next].sqrt() * x0_hat + (1 - ac[t_next]).sqrt() * eps) * math.sqrt(1 + s1 * s1)
        size = float(torch.cat([xbar, data_form, ddim]).abs().max())
        assert float((dpm - data_form).abs().max()) <= 1e-12 * size
        assert float((dpm - ddim).abs().max()) <= 1e-12 * size
        x = dpm / math.sqrt(1 + s1 * s1)
    noise = torch.randn(2, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)
    betas = 1 - ac[:-1] / torch.cat([torch.ones(1, dtype=F64), ac[:-2]])
    expected = ddim_reference_loop(model, betas, sorted(ts), noise)
    got = sample(model, schedule, noise, timesteps=torch.tensor(ts), solver="dpmpp-1")
    assert torch.equal(got, sample(model, schedule, noise, timesteps=torch.tensor(ts), solver="euler"))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Empirical order of every fixed-step solver
# ---------------------------------------------------------------------------------------------

GAUSSIAN = oracles.Gaussian(torch.tensor([0.5, -1.0]), 0.5)
MIXTURE = oracles.GaussianMixture.ring()
REFERENCE_RTOL, REFERENCE_ATOL = 1e-10, 1e-12
# How far each reference is from the truth in x-space: the Gaussian's closed-form flow to float64
# round-off; the mixture's DOP853 solve at the tolerances above differs from one at rtol=1e-13
# by at most 2.5e-10 on these grids. Measured errors stay 30 times above that, so the reference
# shifts a slope over a 2× refinement by less than log2(1 + 1/30) ≈ 0.05.
REFERENCE_ERROR = {"gaussian": 1e-13, "mixture": 3e-10}

# Midpoint's local error on the Gaussian oracle vanishes at order h³: with y = x̄ - μ the ODE is
# y' = a(σ) y, a = σ/(c²+σ²), and the midpoint rule's local error is
# h³ y (a''/24 + a³/6 + a a'/4) + O(h⁴); with u = c² + σ², a' = (c²-σ²)/u² and
# a'' = (2σ³ - 6σc²)/u³, so 24u³(...) = 2σ³ - 6σc² + 4σ³ + 6σc² - 6σ³ = 0. It converges at
# order 3 there (and at its order 2 on the mixture).
GAUSSIAN_ORDER = {"midpoint": 3}


@dataclass(frozen=True)
class Refinement:
    """Nested σ grids over one interval; every ``stride[k]``-th point of ``grids[k]`` is one of
    the ``shared`` σ values at which errors are measured."""

    steps: tuple[int, ...]
    grids: tuple[Tensor, ...]
    stride: tuple[int, ...]
    shared: Tensor


def karras_refinement(steps: tuple[int, ...]) -> Refinement:
    # σ_max to the last positive σ (σ_min); point i of the n-step ρ-grid is point 2i of the
    # 2n-step one, so doubling nests the grids
    grids = tuple(karras_sigmas(SCHEDULE.sigma_min, SCHEDULE.sigma_max, n + 1) for n in steps)
    return Refinement(steps, grids, tuple(n // steps[0] for n in steps), grids[0])


def ddim_uniform_refinement(sizes: tuple[int, ...]) -> Refinement:
    # DDIM "uniform" grids (t = 0, T/S, 2T/S, …) start at t = T - T/S, a different σ for each S,
    # so they are compared over the interval that all of them contain, from the largest common t
    # down to t = 100. With S | T these grids nest and share the t that are multiples of every
    # T/S. Their last positive step [σ(T/S), σ(0)] is left out for a reason like the final step
    # into 0: near t = 0, σ(t)² ≈ β₀(t+1), so that step has length σ(0)(√(1 + T/S) - 1) in σ,
    # which shrinks like S^(-1/2), and ½ log(1 + T/S) in λ = -log σ, which shrinks like log S,
    # and its ratio to the previous step does not tend to 1: the family does not refine smoothly
    # there. Measured over the full grids (S = 50 … 250, error at σ(0), ring mixture), one-step
    # methods keep their order (RK4 4.1) but the multistep ones do not (AB4 2.6, DPM-Solver++ 2M
    # 1.5, 3M 0.5): a property of the grid family rather than of the solvers.
    gaps = [SCHEDULE.T // size for size in sizes]
    shared_gap = math.lcm(*gaps)
    top = (SCHEDULE.T - max(gaps)) // shared_gap * shared_gap
    grids = []
    for size in sizes:
        ts = spaced_timesteps(SCHEDULE, size, "uniform")
        grids.append(SCHEDULE.sigmas[ts[(ts >= 100) & (ts <= top)]])
    shared = SCHEDULE.sigmas[torch.arange(top, 99, -shared_gap)]
    steps = tuple(len(g) - 1 for g in grids)
    return Refinement(steps, tuple(grids), tuple(shared_gap // gap for gap in gaps), shared)


# Step counts, chosen in each method's asymptotic range and below where the references' error
# matters. Multistep methods get four times the steps of one-step methods: they spend one
# evaluation per step (so the evaluation budget stays that of RK4), and their error approaches
# its leading term only on finer grids (measured on these problems: AB4's local slope is
# 3.45-3.65 between 44 and 176 DDIM steps and 3.8 beyond; RK4's is 4.0 from 44 steps on).
REFINEMENTS = {
    ("karras", False): lambda: karras_refinement((64, 128, 256)),
    ("karras", True): lambda: karras_refinement((128, 256, 512)),
    ("karras-fine", True): lambda: karras_refinement((256, 512, 1024)),
    ("ddim-uniform", False): lambda: ddim_uniform_refinement((50, 100, 200)),
    ("ddim-uniform", True): lambda: ddim_uniform_refinement((200, 500, 1000)),
}


# The published DPM-Solver++(3M) is second order through a small term (its D2 carries half the
# weight the third-order integral needs, see DPMSolverPP): at 128-512 Karras steps its O(h³)
# terms still steer the slope (2.31 on the mixture), at 256-1024 it is 2.14, so it is measured there.
FINER_KARRAS = {"dpmpp-3m"}

# DEIS's tAB interpolates ε in the network time t, which a discrete schedule defines between its
# training steps by log-σ interpolation: t(σ) has a kink at every integer t. Third order holds
# while steps span several training steps (slope 2.86 at 50-200 DDIM steps on the Gaussian); at
# 500 and 1000 steps (2 and 1 training steps apart) its error stays at 1.6e-6 and 1.0e-6, the
# kinks' floor, so it is measured on the one-step methods' 50-200 DDIM steps.
COARSER_DDIM = {"deis-tab-3"}


@cache
def problem(name: str, family: str, multistep: bool) -> tuple[object, Tensor, Tensor, Refinement]:
    """(field, start state x̄ (8, 2) at the grids' first σ, reference states at the shared σ
    values (P, 8, 2), refinement), all float64."""
    ref = REFINEMENTS[family, multistep]()
    s_start = float(ref.shared[0])
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    x0 = noise * math.sqrt(1 + s_start**2)
    if name == "gaussian":
        # through the network interface, so that t(σ) and σ(t) are exercised at every stage
        field: object = EpsField(GAUSSIAN.model(SCHEDULE), SCHEDULE)
        exact = torch.stack([GAUSSIAN.flow(x0, s_start, s) for s in ref.shared.tolist()])
        return field, x0, exact, ref

    def rhs(s, y):
        return MIXTURE.eps(float(s), torch.from_numpy(y).reshape(x0.shape)).reshape(-1).numpy()

    out = solve_ivp(
        rhs,
        (s_start, float(ref.shared[-1])),
        x0.reshape(-1).numpy(),
        method="DOP853",
        t_eval=ref.shared.numpy(),
        rtol=REFERENCE_RTOL,
        atol=REFERENCE_ATOL,
    )
    assert out.success, out.message
    reference = torch.from_numpy(out.y.T.copy()).reshape(-1, *x0.shape)
    # through the network interface too (DEIS's tAB needs the schedule's t(σ))
    return EpsField(MIXTURE.model(SCHEDULE), SCHEDULE), x0, reference, ref


def convergence(solver: Solver, name: str, family: str) -> tuple[tuple[int, ...], list[float]]:
    """Steps and errors: the largest x-space error |x̄ - x̄_ref|/√(1+σ²) over the shared σ values,
    i.e. over the trajectory, so that a zero crossing of the error at one σ cannot fake a rate
    (on the Gaussian every sample's error is one scalar function of σ times x̄₀ - μ)."""
    if family == "karras" and solver.name in FINER_KARRAS:
        family = "karras-fine"
    fine = is_multistep(solver) and not (family == "ddim-uniform" and solver.name in COARSER_DDIM)
    field, x0, reference, ref = problem(name, family, fine)
    scale = torch.sqrt(1 + ref.shared**2).reshape(-1, 1, 1)
    errors = []
    for grid, stride in zip(ref.grids, ref.stride, strict=True):
        xs = solve(field, x0, grid, solver, save=True).xs  # type: ignore[arg-type]
        assert xs is not None
        errors.append(float(((xs[::stride] - reference) / scale).abs().max()))
    return ref.steps, errors


@pytest.mark.parametrize("family", ["karras", "ddim-uniform"])
@pytest.mark.parametrize("name", ["gaussian", "mixture"])
@pytest.mark.parametrize("solver", FIXED_STEP_SOLVERS, ids=solver_id)
def test_empirical_order_matches_the_declared_order(solver, name, family):
    steps, errors = convergence(solver, name, family)
    expected = GAUSSIAN_ORDER.get(solver.name, solver.order) if name == "gaussian" else solver.order
    order = -slope(steps, errors)
    assert min(errors) > 30 * REFERENCE_ERROR[name], errors
    assert abs(order - expected) <= 0.3, (order, expected, errors)


# ---------------------------------------------------------------------------------------------
# Bookkeeping and front doors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", FIXED_STEP_SOLVERS, ids=solver_id)
def test_batch_equals_single_solves_and_nfe_is_evals_per_step_times_steps(solver):
    calls = []

    def field(s, x):
        calls.append(s)
        return MIXTURE.eps(s, x)

    if needs_schedule(solver):  # a network interface, counting σ(t) of its calls
        oracle = MIXTURE.model(SCHEDULE)

        def model(x, t):
            calls.append(float(SCHEDULE.sigma(t[0])))
            return oracle(x, t)

        field = EpsField(model, SCHEDULE)

    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * 30
    # 7 positive σ, then 0 (log-SNR: every solver accepts its steps, unipc-bh1 included)
    grid = sigma_grid(SCHEDULE, 7, "logsnr")
    out = solve(field, x, grid, solver)
    positive_steps = grid.numel() - 2
    assert out.nfe == len(calls) == solver.evals_per_step * positive_steps + 1
    assert 0.0 not in calls
    singles = torch.cat([solve(field, x[i : i + 1], grid, solver).x for i in range(5)])
    torch.testing.assert_close(out.x, singles, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("solver", FIXED_STEP_SOLVERS, ids=solver_id)
def test_every_solver_by_name_and_object_in_sample(solver, dtype):
    model = MIXTURE.model(SCHEDULE)
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(2)).to(dtype)
    by_object = sample(model, SCHEDULE, noise, steps=12, timesteps="karras", solver=solver)
    by_name = sample(model, SCHEDULE, noise, steps=12, timesteps="karras", solver=solver.name)
    assert by_object.dtype == dtype and by_object.shape == noise.shape
    assert torch.equal(by_object, by_name)
    if dtype == torch.float32:
        # the float32 path follows the float64 one: 12 steps of at most 4 evaluations, each step
        # rounding a few operations at 6e-8 of the state's size: 12 × 4 × 2 × 6e-8 = 6e-6 of the
        # largest value (measured at most 1.0e-6 over every solver)
        ref64 = sample(model, SCHEDULE, noise.double(), steps=12, timesteps="karras", solver=solver)
        bound = 6e-6 * float(ref64.abs().max())
        torch.testing.assert_close(by_object.double(), ref64, rtol=6e-6, atol=bound)


@pytest.mark.parametrize("solver", FIXED_STEP_SOLVERS, ids=solver_id)
def test_image_batches_keep_their_shape_and_match_the_flattened_problem(solver):
    mean = torch.linspace(-1, 1, 3 * 4 * 4, dtype=F64)
    images = oracles.Gaussian(mean.reshape(3, 4, 4), 0.3)
    flat = oracles.Gaussian(mean, 0.3)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    got = sample(images.model(SCHEDULE), SCHEDULE, noise, steps=10, timesteps="karras", solver=solver)
    expected = sample(
        flat.model(SCHEDULE), SCHEDULE, noise.reshape(2, -1), steps=10, timesteps="karras", solver=solver
    )
    assert got.shape == noise.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.reshape(2, -1), expected, rtol=1e-6, atol=1e-6)


def startup_limited(solver: Solver) -> bool:
    """Multistep methods of order > 2 begin with lower-order steps (Euler first) whose local
    error O(h²) is not damped when encoding, so their guaranteed order in reverse is 2."""
    return is_multistep(solver) and solver.order > 2


@pytest.mark.parametrize("solver", FIXED_STEP_SOLVERS, ids=solver_id)
def test_reverse_direction_converges_to_the_exact_encoding(solver):
    # σ increasing from σ_min to σ_max (encoding), against the Gaussian's exact flow
    field = EpsField(GAUSSIAN.model(SCHEDULE), SCHEDULE)
    x = GAUSSIAN.sample(8, torch.Generator().manual_seed(4))
    steps, errors = (32, 128), []
    for n in steps:
        grid = karras_sigmas(SCHEDULE.sigma_min, SCHEDULE.sigma_max, n + 1).flip(0)
        exact = GAUSSIAN.flow(x, float(grid[0]), float(grid[-1]))
        got = solve(field, x, grid, solver).x
        errors.append(float(((got - exact) / exact.abs().max()).abs().max()))
    expected = 2 if startup_limited(solver) else GAUSSIAN_ORDER.get(solver.name, solver.order)
    assert -slope(steps, errors) >= expected - 0.3, errors


def test_round_trip_forward_then_backward_returns_to_the_start():
    # encode data to σ = 80 and decode it again with RK4 on 200 Karras steps each way; one way
    # errs by about 1e-7 at this resolution (see the order test), so the round trip must close to
    # well within 1e-6 of the data's scale
    x = MIXTURE.sample(16, torch.Generator().manual_seed(5))
    grid = karras_sigmas(SCHEDULE.sigma_min, 80.0, 201).flip(0)
    latent = solve(MIXTURE, x, grid, "rk4").x
    assert float(latent.abs().max()) > 10 * float(x.abs().max())
    back = solve(MIXTURE, latent, grid.flip(0), "rk4").x
    assert float((back - x).abs().max()) <= 1e-6 * float(x.abs().max())


# ---------------------------------------------------------------------------------------------
# Statelessness, any grid, bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", [AdamsBashforth(4), DPMSolverPP(3)], ids=solver_id)
def test_one_multistep_object_serves_interleaved_solves(solver):
    field = EpsField(wavy_model(), SCHEDULE)
    grid = sigma_grid(SCHEDULE, 6, "uniform")[:-1]
    xa = torch.randn(2, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    xb = torch.randn(4, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    expected_a, expected_b = solve(field, xa, grid, solver).x, solve(field, xb, grid, solver).x
    sa, sb = solver.init(field, grid, xa), solver.init(field, grid, xb)
    values = grid.tolist()
    for s0, s1 in pairwise(values):
        xa, sa = solver.step(field, s0, s1, xa, sa)
        xb, sb = solver.step(field, s0, s1, xb, sb)
    assert torch.equal(xa, expected_a) and torch.equal(xb, expected_b)


@pytest.mark.parametrize("solver", FIXED_STEP_SOLVERS, ids=solver_id)
def test_any_grid_is_long_enough(solver):
    # lower-order start-up makes every grid valid: one step, only the final step, no step
    field = EpsField(wavy_model(), SCHEDULE)
    x = torch.randn(2, 3, dtype=F64)
    one = solve(field, x, torch.tensor([4.0, 2.0], dtype=F64), solver)
    assert one.nfe == solver.evals_per_step and torch.isfinite(one.x).all()
    assert solve(field, x, torch.tensor([4.0, 0.0], dtype=F64), solver).nfe == 1
    assert solve(field, x, torch.tensor([4.0], dtype=F64), solver).nfe == 0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: AdamsBashforth(5), "AdamsBashforth order must be one of \\(1, 2, 3, 4\\), got 5"),
        (lambda: AdamsBashforth(0), "one of \\(1, 2, 3, 4\\), got 0"),
        (lambda: AdamsBashforth(2.0), "one of \\(1, 2, 3, 4\\), got 2.0"),
        (lambda: DPMSolverPP(4), "DPMSolverPP multistep order must be one of \\(1, 2, 3\\), got 4"),
        (lambda: DPMSolverPP(2, exact=True), "the third-order multistep variant; pass order=3"),
        (lambda: UniPC(4), "UniPC order must be one of \\(1, 2, 3\\), got 4"),
        (lambda: UniPC(2, "bh3"), "UniPC variant must be 'bh1' or 'bh2', got 'bh3'"),
        (lambda: IPNDM(5), "IPNDM order must be one of \\(1, 2, 3, 4\\), got 5"),
        (lambda: DEIS(0), "DEIS order must be one of \\(1, 2, 3\\), got 0"),
        (
            lambda: DPMSolverPP(3, multistep=False),
            "DPMSolverPP singlestep \\(multistep=False\\) order must be one of \\(1, 2\\), got 3",
        ),
    ],
)
def test_unsupported_orders_are_refused_with_the_choices(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("order", [2, 3])
def test_unipc_bh1_refuses_steps_where_its_simplified_weight_overshoots(order):
    # DDIM's linspace grid at 10 steps ends with σ(111) -> σ(0), h = 3.6 in log σ
    model = MIXTURE.model(SCHEDULE)
    noise = torch.randn(2, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=f"unipc-bh1-{order}: the step σ 0.38.* -> 0.01 spans h = 3.64"):
        sample(model, SCHEDULE, noise, steps=10, timesteps="linspace", solver=f"unipc-bh1-{order}")
    # bh2, order 1 and grids with smaller steps run
    for solver, spacing in (
        (f"unipc-bh2-{order}", "linspace"),
        ("unipc-bh1-1", "linspace"),
        (f"unipc-bh1-{order}", "karras"),
    ):
        assert torch.isfinite(
            sample(model, SCHEDULE, noise, steps=10, timesteps=spacing, solver=solver)
        ).all()


def test_orders_of_any_integer_type_are_kept_as_ints():
    # UniPC and IPNDM kept the given object: a tensor order made .order a tensor
    for order in (np.int64(2), torch.tensor(2)):
        for solver in (UniPC(order), IPNDM(order), AdamsBashforth(order), DEIS(order), DPMSolverPP(order)):
            assert type(solver.order) is int, solver


def test_names_and_reprs():
    assert [s.name for s in FIXED_STEP_SOLVERS] == [
        "euler",
        "ddim",
        "heun",
        "midpoint",
        "ralston3",
        "heun3",
        "rk4",
        "ab2",
        "ab3",
        "ab4",
        "dpmpp-1",
        "dpmpp-2m",
        "dpmpp-3m",
        "dpmpp-3m-exact",
        "dpmpp-2s",
        "bdia",
        "bdia-edm",
        "unipc-bh1-1",
        "unipc-bh1-2",
        "unipc-bh1-3",
        "unipc-bh2-1",
        "unipc-bh2-2",
        "unipc-bh2-3",
        "ipndm",
        "deis-1",
        "deis-2",
        "deis-3",
        "deis-tab-1",
        "deis-tab-2",
        "deis-tab-3",
    ]
    assert repr(get_solver("deis-tab-2")) == "DEIS(order=2, basis='t', lower_order_final=False)"
    assert repr(get_solver("dpmpp-2s")) == "DPMSolverPP(order=2, multistep=False)"
    assert repr(get_solver("dpmpp-3m-exact")) == "DPMSolverPP(order=3, multistep=True, exact=True)"
    assert repr(get_solver("unipc-bh1-3")) == "UniPC(order=3, variant='bh1')"
    assert (repr(get_solver("ipndm")), repr(get_solver("deis-2"))) == ("IPNDM(order=4)", "DEIS(order=2)")
    # the published 3M is formally second order (see DPMSolverPP), the exact variant third
    assert (get_solver("dpmpp-3m").order, get_solver("dpmpp-3m-exact").order) == (2, 3)
    assert [get_solver(f"unipc-bh2-{p}").order for p in (1, 2, 3)] == [2, 3, 4]
    assert repr(get_solver("ab3")) == "AdamsBashforth(order=3)"
    assert repr(RK4()) == "RK4()"
    assert (DPMSolverPP(2, multistep=False).evals_per_step, DPMSolverPP(3).evals_per_step) == (2, 1)


@pytest.mark.parametrize("solver", ["dpmpp-3m", "deis-3", "unipc-bh2-3"])
def test_lower_order_final_does_not_count_the_step_out_of_infinity(solver, monkeypatch):
    # solve takes the step out of σ = ∞ itself: the solver's own steps on [∞, σ₁ … σ₄, 0] are
    # those of [σ₁ … σ₄, 0], and so are their orders (the last positive step at most second)
    alphas = Schedule.linear().alphas_cumprod.clone()
    alphas[-1] = 0.0
    schedule = Schedule(alphas)
    field = field_for(RandomEpsNet((3,), seed=1), schedule, "v_prediction")
    grid = sigma_grid(schedule, 5, "trailing")
    assert math.isinf(float(grid[0]))
    orders: list[int] = []
    cap = MultistepState.cap
    monkeypatch.setattr(
        MultistepState, "cap", lambda self, order: orders.append(cap(self, order)) or cap(self, order)
    )
    x = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    solve(field, x, grid, solver)
    from_infinity, orders[:] = list(orders), []
    solve(field, x, grid[1:], solver)
    assert from_infinity == orders and max(orders[-1:]) <= 2
