"""The front doors under hostile but fair input (issue 9, items 5, 6, 7, 9, 10 and API fuzzing)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import diffode
from diffode import Schedule, decode, encode, sample, solve
from diffode.models import MLP
from tests.helpers import wavy_model

F32, F64 = torch.float32, torch.float64
LINEAR = Schedule.linear()


def saved_bytes(run) -> tuple[object, int]:
    """Run ``run()`` and count the bytes autograd saves for a backward pass meanwhile."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return out, total


def network(dtype: torch.dtype = F32) -> nn.Module:
    torch.manual_seed(0)
    net = MLP(dim=3, hidden=16, depth=1, emb_dim=8)
    # the output layer starts at zero for training; a field that is 0 would make every check trivial
    nn.init.normal_(net.out.weight, std=0.3)
    return net.to(dtype)


# --------------------------------------------------------------------- item 5: no graph by default
def test_front_doors_build_no_graph_unless_asked():
    net = network()
    assert all(p.requires_grad for p in net.parameters())
    noise = torch.randn(8, 3)
    x, saved = saved_bytes(lambda: sample(net, LINEAR, noise, steps=20))
    assert not x.requires_grad and saved == 0
    z, saved = saved_bytes(lambda: encode(net, LINEAR, x, steps=20))
    assert not z.requires_grad and saved == 0
    z, saved = saved_bytes(lambda: encode(net, LINEAR, x, steps=5, method="exact"))
    assert not z.requires_grad and saved == 0
    back, saved = saved_bytes(lambda: decode(net, LINEAR, z, steps=20))
    assert not back.requires_grad and saved == 0


def test_grad_true_gives_the_gradient_of_the_sampler():
    net = network(F64)
    noise = torch.randn(4, 3, dtype=F64, requires_grad=True)
    x, saved = saved_bytes(lambda: sample(net, LINEAR, noise, steps=10, grad=True))
    assert x.requires_grad and saved > 0
    (g,) = torch.autograd.grad(x.square().sum(), noise)
    # central differences along one direction, against the directional derivative
    v = torch.randn_like(noise)
    h = 1e-6
    with torch.no_grad():
        plus = sample(net, LINEAR, noise + h * v, steps=10).square().sum()
        minus = sample(net, LINEAR, noise - h * v, steps=10).square().sum()
    assert float((g * v).sum()) == pytest.approx(float(plus - minus) / (2 * h), rel=1e-6)


def test_grad_must_be_a_bool():
    with pytest.raises(TypeError, match="grad must be True or False"):
        sample(wavy_model(), LINEAR, torch.randn(2, 3), steps=2, grad="yes")  # type: ignore[arg-type]


# --------------------------------------------------------------------- item 6: field outputs checked
@pytest.mark.parametrize(
    "f, match",
    [
        (lambda s, x: x[:, :1], r"shape \(4, 3\)"),
        (lambda s, x: x.sum(), r"shape \(4, 3\)"),
        (lambda s, x: x.double(), "dtype torch.float32"),
        (lambda s, x: 1.0, "got float"),
    ],
)
def test_solve_checks_the_field_output(f, match):
    with pytest.raises(ValueError, match=match):
        solve(f, torch.randn(4, 3), torch.tensor([2.0, 1.0, 0.0]), "euler")


# --------------------------------------------------------------------- item 7: float timesteps
def test_float_timesteps_above_sigma_max_name_both_readings():
    with pytest.raises(ValueError, match="read as σ values.*did you mean integer training timesteps"):
        sample(wavy_model(), LINEAR, torch.randn(2, 3), timesteps=torch.tensor([999.0, 500.0, 0.0]))
    with pytest.raises(ValueError, match="read as σ values"):
        sample(wavy_model(), LINEAR, torch.randn(2, 3), timesteps=torch.tensor([1.5, -0.5]))


def test_float_timesteps_within_range_are_sigmas():
    grid = diffode.sigma_grid(LINEAR, None, torch.tensor([100.0, 1.0], dtype=F64))
    assert grid.tolist() == [100.0, 1.0, 0.0]


# --------------------------------------------------------------------- item 9: mixed dtypes
@pytest.mark.parametrize("state, net", [(F64, F32), (F32, F64)])
def test_mixed_state_and_network_dtypes_work(state, net):
    model = network(net)
    noise = torch.randn(6, 3, dtype=state, generator=torch.Generator().manual_seed(1))
    got = sample(model, LINEAR, noise, steps=10)
    assert got.dtype == state
    reference = sample(network(F64), LINEAR, noise.double(), steps=10)
    # the network runs in float32 in one of the two: its round-off (≈1e-7 relative, carried
    # over 10 steps through a flow with Lipschitz constant ≈1) bounds the difference
    torch.testing.assert_close(got.double(), reference, rtol=1e-5, atol=1e-5)


def test_a_field_follows_its_network_to_another_dtype():
    # the dtype was read once, when the field was built: after .double() a float32 cast
    # fed float64 weights (RuntimeError), or rounded a float64 solve's inputs to float32
    field = diffode.EpsField(network(F32), LINEAR)
    assert field.network_dtype == F32
    field.double()
    assert field.network_dtype == F64
    x = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    grid = diffode.sigma_grid(LINEAR, 5)
    fresh = diffode.EpsField(field.model, LINEAR)
    assert torch.equal(diffode.solve(field, x, grid).x, diffode.solve(fresh, x, grid).x)


def test_a_field_used_under_inference_mode_still_differentiates():
    # the cached network times were inference tensors, which autograd refuses to save
    net = torch.nn.Linear(1, 3).double()
    field = diffode.EpsField(lambda x, t: x * net(t[:, None].to(x.dtype)), LINEAR)
    grid = diffode.sigma_grid(LINEAR, 3)
    x = torch.randn(2, 3, dtype=F64)
    with torch.inference_mode():
        diffode.solve(field, x, grid)
    diffode.solve(field, x, grid).x.sum().backward()
    assert net.weight.grad is not None


# --------------------------------------------------------------------- item 10: half precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_states_survive_large_sigma(dtype):
    cosine = Schedule.cosine()
    assert cosine.sigma_max > 1e4  # x̄ = x·σ overflows float16 there
    noise = torch.randn(8, 3, generator=torch.Generator().manual_seed(2))
    got = sample(network(), cosine, noise.to(dtype), steps=10)
    assert got.dtype == dtype and bool(torch.isfinite(got).all())
    reference = sample(network(), cosine, noise.to(dtype).float(), steps=10)
    # the state is integrated in float32 from the same (rounded) noise; only the output rounding differs
    torch.testing.assert_close(got.float(), reference.to(dtype).float(), rtol=0, atol=0)


def test_a_half_precision_solve_says_why_it_overflowed():
    # one Euler step multiplies the state by 1 - 39·1000: beyond float16's 65504
    xbar = torch.full((2, 3), 100.0, dtype=torch.float16)
    with pytest.raises(ValueError, match="non-finite.*integrate in float32"):
        solve(lambda s, x: 1000 * x, xbar, torch.tensor([40.0, 1.0]), "euler")


# --------------------------------------------------------------------- fuzzing the public API
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.bool]


@st.composite
def states(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 3), min_size=0, max_size=3)))
    fill = draw(st.sampled_from([0.0, 1.0, -3.5, 1e30, math.inf, math.nan]))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) if shape else torch.tensor(0.5)
    if draw(st.booleans()):
        x = torch.full_like(x, fill)
    return x.to(dtype)


@given(
    x=states(),
    steps=st.one_of(st.none(), st.integers(-2, 6), st.floats(0.5, 3.0)),
    timesteps=st.sampled_from(["uniform", "quadratic", "trailing", "karras", "bogus", 3]),
    solver=st.sampled_from(["euler", "heun", "ddim", "dpmpp-2m", "bdia", "nope"]),
)
def test_sample_returns_or_raises_a_clear_error(x, steps, timesteps, solver):
    try:
        out = sample(wavy_model(), LINEAR, x, steps=steps, timesteps=timesteps, solver=solver)
    except (ValueError, TypeError) as err:
        assert str(err)
        return
    assert out.shape == x.shape and out.dtype == x.dtype and bool(torch.isfinite(out).all())


@given(x=states(), method=st.sampled_from(["reverse", "exact", "other"]), steps=st.integers(0, 4))
def test_encode_returns_or_raises_a_clear_error(x, method, steps):
    try:
        out = encode(wavy_model(0.1), LINEAR, x, steps=steps, method=method)
    except (ValueError, TypeError) as err:
        assert str(err)
        return
    assert out.shape == x.shape and out.dtype == x.dtype and bool(torch.isfinite(out).all())


@given(
    x=states(),
    grid=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 50.0, math.inf, -1.0, math.nan]), max_size=4),
)
def test_solve_returns_or_raises_a_clear_error(x, grid):
    try:
        out = solve(lambda s, y: -y, x, torch.tensor(grid, dtype=F64), "heun")
    except (ValueError, TypeError) as err:
        assert str(err)
        return
    assert out.x.shape == x.shape and bool(torch.isfinite(out.x).all())
