"""diffode.testing: its strategies draw valid objects, and its assertions pass on correct code
and catch deliberately broken solvers and encoders."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffode import EpsField, Schedule, encode, karras_sigmas, oracles
from diffode.solvers import DDIM, DPMSolverPP, Euler, Solver
from diffode.testing import (
    RandomEpsNet,
    assert_convergence_order,
    assert_euler_is_ddim,
    assert_round_trip,
    eps_networks,
    oracle_models,
    schedules,
    sigma_grids,
)

SCHEDULE = Schedule.linear()
F64 = torch.float64


class LateEuler(Solver):
    """A deliberately broken Euler: evaluates the field at the end of the step."""

    name = "late-euler"

    def step(self, f, s0, s1, x, state):
        return x + (s1 - s0) * f(s1, x), state


class ClaimsSecondOrder(Euler):
    """A deliberately broken claim: Euler's method declaring order 2."""

    order = 2


def sloppy_encoder(model, schedule, x0, **kwargs: Any):
    """A deliberately broken encoder: plain reverse integration whatever method is asked for."""
    kwargs["method"] = "reverse"
    return encode(model, schedule, x0, **kwargs)


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------


@settings(max_examples=15)
@given(schedule=schedules(max_T=200))
def test_schedules_are_valid(schedule):
    assert isinstance(schedule, Schedule) and 2 <= schedule.T <= 200
    assert bool((schedule.sigmas[1:] > schedule.sigmas[:-1]).all())


@given(grid=sigma_grids(direction="decreasing", final_zero=True), up=sigma_grids(direction="increasing"))
def test_sigma_grids_are_strictly_monotone_in_their_direction(grid, up):
    assert grid.dtype == F64 and float(grid[-1]) == 0.0 and bool((grid[1:] < grid[:-1]).all())
    assert bool((up[1:] > up[:-1]).all()) and float(up[0]) >= 1e-2 * (1 - 1e-12)


def test_sigma_grid_strategy_rejects_bad_arguments():
    with pytest.raises(ValueError, match="direction must be 'decreasing' or 'increasing'"):
        sigma_grids(direction="up")
    with pytest.raises(ValueError, match="final_zero=True needs direction='decreasing'"):
        sigma_grids(direction="increasing", final_zero=True)
    # min_size=0 drew grids with no positive σ, which no solve accepts
    with pytest.raises(ValueError, match="min_size must be at least 1, got 0"):
        sigma_grids(min_size=0)
    with pytest.raises(ValueError, match="max_size must be at least 5, got 3"):
        sigma_grids(min_size=5, max_size=3)


@settings(max_examples=15)
@given(oracle=oracle_models(), seed=st.integers(0, 100))
def test_oracle_models_work_as_networks(oracle, seed):
    x = oracle.sample(4, torch.Generator().manual_seed(seed))
    eps = oracle.model(SCHEDULE)(x, torch.full((4,), 10.0, dtype=F64))
    assert eps.shape == x.shape and bool(torch.isfinite(eps).all())


@settings(max_examples=10)
@given(net=eps_networks(), seed=st.integers(0, 100))
def test_random_networks_are_seeded_and_lipschitz(net, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, *net.event_shape, generator=g, dtype=F64)
    t = torch.full((3,), 500.0, dtype=F64)
    # the seed fixes the weights: a network built again from it computes the same function,
    # one from another seed another function
    twin, other = (RandomEpsNet(net.event_shape, hidden=net.w1.shape[0], seed=s) for s in (seed, seed + 1))
    assert torch.equal(twin(x, t), RandomEpsNet(net.event_shape, hidden=net.w1.shape[0], seed=seed)(x, t))
    assert not torch.equal(twin(x, t), other(x, t))
    jac = torch.autograd.functional.jacobian(lambda v: net(v[None], t[:1])[0], x[0])
    dims = math.prod(net.event_shape)
    assert float(torch.linalg.matrix_norm(jac.reshape(dims, dims), 2)) <= net.lipschitz * (1 + 1e-12)


def test_random_network_refuses_the_wrong_shape():
    with pytest.raises(ValueError, match=r"x must have shape \(batch, \*\(2, 3\)\)"):
        RandomEpsNet((2, 3))(torch.zeros(4, 6), torch.zeros(4))
    # these reached torch as a negative dimension or a bare int
    with pytest.raises(ValueError, match="event_shape entries must be at least 1, got -1"):
        RandomEpsNet((2, -1))
    with pytest.raises(TypeError, match="event_shape must be a sequence of ints"):
        RandomEpsNet(3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Assertions: pass on correct code, catch broken code
# ---------------------------------------------------------------------------------------------


def test_assert_round_trip_passes_exact_encoding_and_catches_a_sloppy_encoder():
    oracle = oracles.GaussianMixture.ring()
    x0 = oracle.sample(16, torch.Generator().manual_seed(0))
    model = oracle.model(SCHEDULE)
    assert assert_round_trip(model, SCHEDULE, x0, steps=20, atol=1e-10) <= 1e-10
    assert assert_round_trip(model, SCHEDULE, x0, steps=20, solver="bdia", atol=1e-12) <= 1e-12
    with pytest.raises(AssertionError, match=r"round trip \(solver='euler', method='exact'.*missed x0 by"):
        assert_round_trip(model, SCHEDULE, x0, steps=20, atol=1e-6, encoder=sloppy_encoder)

    # an encoder that returns bare latents: decoded on the grid exact encoding defaults to (the
    # sampler's default grid missed by 3.3 on the digits model)
    def bare(*args, **kwargs):
        return encode(*args, **kwargs).latents

    assert assert_round_trip(model, SCHEDULE, x0, steps=20, atol=1e-10, encoder=bare) <= 1e-10


@given(schedule=schedules(max_T=300), net=eps_networks(event_shapes=((2,), (2, 2))), data=st.data())
def test_assert_euler_is_ddim_holds_for_euler_like_solvers_on_any_schedule(schedule, net, data):
    ts = sorted(data.draw(st.sets(st.integers(0, schedule.T - 1), min_size=2, max_size=6)), reverse=True)
    x = torch.randn(2, *net.event_shape, dtype=F64, generator=torch.Generator().manual_seed(len(ts)))
    for solver in ("euler", DDIM(0.0), DPMSolverPP(1)):
        assert assert_euler_is_ddim(net, schedule, x, ts, solver=solver) <= 1e-12
    assert assert_euler_is_ddim(net, schedule, x.float(), ts) <= 1e-6


def test_assert_euler_is_ddim_catches_a_broken_solver():
    net = RandomEpsNet((3,), lipschitz=0.9, seed=1)
    x = torch.randn(4, 3, dtype=F64)
    with pytest.raises(
        AssertionError, match=r"LateEuler.* deviates from the closed-form DDIM update on the step t = 900"
    ):
        assert_euler_is_ddim(net, SCHEDULE, x, [900, 600, 300, 0], solver=LateEuler())
    with pytest.raises(ValueError, match="strictly decreasing"):
        assert_euler_is_ddim(net, SCHEDULE, x, [10, 20])
    # out-of-range and fractional timesteps are refused, not wrapped around or truncated
    for bad in ([10, 5, -3], [1000, 500]):
        with pytest.raises(ValueError, match="timesteps must lie in 0 … 999"):
            assert_euler_is_ddim(net, SCHEDULE, x, bad)
    with pytest.raises(TypeError, match="timesteps must be integer training timesteps"):
        assert_euler_is_ddim(net, SCHEDULE, x, [999.9, 500.5])
    # one timestep takes only the step into σ = 0, solve's own: any solver passed (heun, rk4)
    with pytest.raises(ValueError, match="at least two timesteps, so that the solver takes a step"):
        assert_euler_is_ddim(net, SCHEDULE, x, [999], solver="heun")


def test_assert_convergence_order_passes_heun_and_catches_a_false_claim():
    oracle = oracles.Gaussian(torch.tensor([0.5, -1.0]), 0.5)
    field = EpsField(oracle.model(SCHEDULE), SCHEDULE)
    x = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(0)) * 80.0

    def grid(n):
        return karras_sigmas(0.05, 80.0, n + 1)

    def exact(x_start, sigmas):
        return oracle.flow(x_start, float(sigmas[0]), float(sigmas[-1]))

    steps = (16, 32, 64)
    assert (
        abs(assert_convergence_order(field, x, "heun", 2, steps=steps, grid=grid, reference=exact) - 2) <= 0.3
    )
    broken = ClaimsSecondOrder()
    with pytest.raises(AssertionError, match=r"converged at order 0\.9.* expected 2 ± 0\.3"):
        assert_convergence_order(field, x, broken, broken.order, steps=steps, grid=grid, reference=exact)


# ---------------------------------------------------------------------------------------------
# The example of docs/encoding.md, verbatim
# ---------------------------------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(model=eps_networks(event_shapes=[(4,)], lipschitz=0.5), seed=st.integers(0, 2**16))
def test_exact_round_trip_of_my_network(model, seed):
    schedule = Schedule.linear()
    x0 = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    assert_round_trip(model, schedule, x0, steps=10, method="exact", atol=1e-10)
    assert_euler_is_ddim(model, schedule, x0, [900, 500, 100, 0])


def test_assert_round_trip_turns_an_inversion_that_does_not_converge_into_an_assertion():
    # the bundled digits network at 10 Euler steps of DDIM's uniform grid: the step σ 0.34 -> 0.01
    # folds and cannot be inverted for real digits; the assertion reports the residual reached
    pytest.importorskip("sklearn")
    from diffode.data import digits as digits_data
    from diffode.pretrained import digits

    model, schedule = digits()
    x0 = digits_data("test")[0][:4]
    with pytest.raises(
        AssertionError, match=r"did not converge for sample \d on the step σ 0.01.*residual of"
    ):
        assert_round_trip(model, schedule, x0, steps=10, timesteps="uniform", atol=2e-5)
    # on its default grid (logsnr) exact Euler meets the float32 target, and so does BDIA, whose
    # only implicit step is the one out of σ = 0
    assert assert_round_trip(model, schedule, x0, steps=10, atol=2e-5) <= 2e-5
    assert assert_round_trip(model, schedule, x0, steps=10, solver="bdia", atol=2e-5) <= 2e-5


def test_assert_euler_is_ddim_calls_a_network_as_the_field_does():
    # a float32 module: the reference called it on float64 inputs (a dtype error), and a float64
    # state through a float32 network was held to float64's tolerance
    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.lin(torch.cat([x, t.reshape(-1, 1) / 1000], 1))

    torch.manual_seed(0)
    net, schedule = Plain(), Schedule.linear()
    assert assert_euler_is_ddim(net, schedule, torch.randn(2, 3), [999, 500, 0]) < 1e-6
    assert assert_euler_is_ddim(net, schedule, torch.randn(2, 3, dtype=torch.float64), [999, 500, 0]) < 1e-6
    # half-precision states get their own round-off as the default tolerance
    wide = RandomEpsNet((3,)).half()
    assert assert_euler_is_ddim(wide, schedule, torch.randn(2, 3).half(), [600, 300, 0]) < 1e-2
    # and a broken solver still fails at float32's tolerance
    with pytest.raises(AssertionError, match="deviates from the closed-form DDIM update"):
        assert_euler_is_ddim(net, schedule, torch.randn(2, 3), [999, 900, 800, 0], solver="midpoint")
