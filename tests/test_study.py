"""The convergence-study helper."""

import math

import pytest
import torch

import diffode
from diffode import karras_sigmas, oracles, solve, study
from diffode.solvers import Dopri5, Heun

F64 = torch.float64
GAUSS = oracles.Gaussian(torch.tensor([0.5, -1.0], dtype=F64), 0.4)
STEPS = [10, 20, 40, 80]


def grid(n):
    return karras_sigmas(0.02, 80.0, n + 1)


def exact(x, sigmas):
    return GAUSS.flow(x, float(sigmas[0]), float(sigmas[-1]))


@pytest.fixture(scope="module")
def x():
    return torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(0)) * 80


@pytest.fixture(scope="module")
def result(x):
    return study.convergence_study(GAUSS, x, ["euler", "heun"], STEPS, grid=grid, reference=exact)


def test_euler_and_heun_orders_on_the_gaussian_flow(result):
    assert result.orders["euler"] == pytest.approx(1.0, abs=0.15)
    assert result.orders["heun"] == pytest.approx(2.0, abs=0.3)


def test_table_has_a_row_per_solver_and_step_count(result, x):
    assert [(r.solver, r.steps) for r in result.rows] == [(s, n) for s in ("euler", "heun") for n in STEPS]
    assert [r.nfe for r in result.rows] == STEPS + [2 * n for n in STEPS]
    # each row is the error of one plain solve against the exact flow
    euler_20 = solve(GAUSS, x, grid(20), "euler").x - exact(x, grid(20))
    row = result.rows[1]
    assert row.max_error == float(euler_20.abs().max())
    assert row.rms_error == pytest.approx(float(euler_20.square().mean().sqrt()), rel=1e-15)


def test_orders_are_fitted_against_the_steps_where_solvers_differ():
    # f = σ: Euler's error on a grid ending with the step into 0 (taken exactly as the reference
    # takes it) is L²/(2m) for m positive-part intervals, so exactly first order in m; counting
    # the final step (m + 1) read 1.40
    def field(s, x):
        return torch.full_like(x, float(s))

    def grid(n):
        return torch.cat([torch.linspace(1.0, 0.1, n, dtype=F64), torch.zeros(1, dtype=F64)])

    x = torch.zeros(1, 1, dtype=F64)
    result = study.convergence_study(field, x, ["euler"], [2, 4, 8], grid=grid)
    assert [r.intervals for r in result.rows] == [1, 3, 7]
    assert result.orders["euler"] == pytest.approx(1.0, abs=1e-9)


def test_a_grid_of_boundary_steps_only_is_measured():
    # [∞, 0] has no positive finite σ: the default reference raised IndexError
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100, dtype=F64), 0)
    ac[-1] = 0.0
    ztsnr = diffode.Schedule.from_alphas_cumprod(ac)
    field = diffode.X0Field(lambda x, t: torch.zeros_like(x), ztsnr)
    row = study.measure(
        field, torch.randn(3, 2, dtype=F64), torch.tensor([math.inf, 0.0], dtype=F64), "euler"
    )
    assert row.max_error == 0.0 and row.intervals == 0


def test_markdown_renders(result):
    text = result.to_markdown()
    lines = text.splitlines()
    assert lines[0] == "| solver | steps | nfe | max_error | rms_error | intervals |"
    assert lines[1] == "|---|---:|---:|---:|---:|---:|"
    assert len(lines) == 2 + 8 + 1 + 2 + 2
    assert lines[2].startswith("| euler | 10 | 10 | ")
    assert lines[-4:-2] == ["| solver | empirical order |", "|---|---:|"]
    assert lines[-1] == f"| heun | {result.orders['heun']:.3g} |"
    assert study.to_markdown([{"a": 1e-7, "b": None, "c": "x"}]).splitlines()[2] == "| 1.00e-07 | – | x |"


def test_default_reference_is_a_tight_solve_with_the_same_final_step(x):
    sigmas = torch.cat([grid(10), torch.zeros(1, dtype=F64)])
    x32 = x.float()
    ref = study.reference_solution(GAUSS, x32, sigmas)
    at_min = GAUSS.flow(x32.double(), 80.0, 0.02)
    assert ref.dtype == F64
    torch.testing.assert_close(ref, at_min - 0.02 * GAUSS.eps(0.02, at_min), rtol=1e-8, atol=1e-8)


def test_default_reference_measures_order_through_the_final_step(x):
    result = study.convergence_study(
        GAUSS,
        x,
        {"Heun()": Heun()},
        [10, 20, 40],
        grid=lambda n: torch.cat([grid(n), torch.zeros(1, dtype=F64)]),
    )
    assert result.orders["Heun()"] == pytest.approx(2.0, abs=0.3)
    assert [r.steps for r in result.rows] == [11, 21, 41]


def test_default_reference_keeps_the_step_out_of_zero_of_an_encoding_grid():
    # the step out of σ = 0 is the same one-step map for every solver: the reference takes it to
    # the first positive σ and integrates from there, so the orders are the methods' own
    x0 = GAUSS.sample(16, torch.Generator().manual_seed(1)).to(F64)
    result = study.convergence_study(
        GAUSS,
        x0,
        ["heun", "rk4"],
        [8, 16, 32],
        grid=lambda n: torch.cat(
            [torch.zeros(1, dtype=F64), torch.logspace(math.log10(0.05), 1, n, dtype=F64)]
        ),
    )
    assert result.orders["heun"] == pytest.approx(2.0, abs=0.3)
    assert result.orders["rk4"] == pytest.approx(4.0, abs=0.5)


def test_studies_build_no_graph(x):
    scale = torch.ones(1, dtype=F64, requires_grad=True)

    def field(sigma, y):
        return scale * GAUSS(sigma, y)

    sigmas = grid(10)
    assert not study.reference_solution(field, x, sigmas).requires_grad
    row = study.measure(field, x, sigmas, "heun")
    assert math.isfinite(row.rms_error)


def test_measure_takes_adaptive_solvers_and_tensor_references(x):
    sigmas = grid(5)
    row = study.measure(GAUSS, x, sigmas, Dopri5(rtol=1e-8, atol=1e-8), reference=exact(x, sigmas))
    assert row.solver == "Dopri5(rtol=1e-08, atol=1e-08)" and row.steps == 5 and row.nfe > 20
    assert row.max_error < 1e-6


def test_plot_draws_a_line_per_solver(result):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ax = result.plot()
    assert [line.get_label() for line in ax.get_lines()] == ["euler", "heun"]
    matplotlib.pyplot.close(ax.figure)


def test_order_is_none_when_undefined(x):
    # a zero field leaves the state as it is, so there is no error to fit
    result = study.convergence_study(
        lambda s, y: torch.zeros_like(y), x, ["euler"], [2, 4], grid=grid, reference=lambda y, s: y
    )
    assert result.orders == {"euler": None}
    assert "| euler | – |" in result.to_markdown()


def test_bad_input():
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="'dopri5' is adaptive and chooses its own steps"):
        study.convergence_study(GAUSS, x, ["dopri5"], [4, 8], grid=grid)
    with pytest.raises(ValueError, match="at least one solver and one step count"):
        study.convergence_study(GAUSS, x, [], [4], grid=grid)
    with pytest.raises(ValueError, match="empirical_order needs at least two"):
        study.empirical_order([10], [0.1])
    with pytest.raises(ValueError, match="empirical_order needs at least two"):
        study.empirical_order([10, 20], [0.1, 0.0])
    # NaN, inf and a single step count gave nan or a meaningless slope
    for steps, errors in (
        ([10, 20], [math.nan, 1e-3]),
        ([10, 20], [math.inf, 1e-3]),
        ([10, 10], [1e-2, 1e-3]),
    ):
        with pytest.raises(ValueError, match="empirical_order needs at least two"):
            study.empirical_order(steps, errors)
    # a callable reference of the wrong shape was broadcast against the state
    with pytest.raises(ValueError, match=r"must return a tensor of the state's shape \(2, 2\), got \(2,\)"):
        study.measure(GAUSS, x, grid(3), "euler", reference=lambda a, b: torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="to_markdown needs at least one row"):
        study.to_markdown([])
    with pytest.raises(ValueError, match=r"reference must have the state's shape \(2, 2\), got \(3,\)"):
        study.measure(GAUSS, x, grid(3), "euler", reference=torch.zeros(3))
    with pytest.raises(ValueError, match="grid\\(4\\) must be strictly monotone"):
        study.convergence_study(GAUSS, x, ["euler"], [4], grid=lambda n: torch.ones(n, dtype=F64))


def test_empirical_order_recovers_a_power_law():
    steps = [10, 20, 40, 80]
    assert study.empirical_order(steps, [3.0 * n**-2.5 for n in steps]) == pytest.approx(-2.5, abs=1e-12)
    assert math.isfinite(study.empirical_order(steps, [1.0, 0.5, 0.3, 0.1]))


def test_a_reference_that_is_not_finite_is_refused(x):
    # a NaN row dropped out of the order fit, which then passed on the rows left
    bad = torch.full_like(x, math.nan)
    with pytest.raises(ValueError, match="reference contains 32 non-finite value"):
        study.measure(GAUSS, x, grid(8), "euler", reference=bad)
