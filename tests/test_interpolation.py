"""Latent interpolation (reference §9): endpoints, norms, degenerate cases and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from diffode import interpolate

F64 = torch.float64


def pair(seed: int, shape=(4, 3, 5), dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("method", ["slerp", "lerp"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@given(seed=st.integers(0, 2**31 - 1), inner=st.lists(st.floats(0, 1), max_size=5))
def test_endpoints_are_exact_and_shape_is_weights_by_batch(method, dtype, seed, inner):
    z0, z1 = pair(seed, dtype=dtype)
    weights = [0.0, *inner, 1.0]
    out = interpolate(z0, z1, weights, method)
    assert out.shape == (len(weights), *z0.shape) and out.dtype == dtype
    assert torch.equal(out[0], z0) and torch.equal(out[-1], z1)


@given(seed=st.integers(0, 2**31 - 1), a=st.floats(0, 1))
def test_slerp_of_equal_norm_endpoints_keeps_the_norm(seed, a):
    z0, z1 = pair(seed, dtype=F64)
    z1 = z1 * (z0.flatten(1).norm(dim=1) / z1.flatten(1).norm(dim=1)).reshape(-1, 1, 1)
    out = interpolate(z0, z1, a)
    torch.testing.assert_close(out.flatten(1).norm(dim=1), z0.flatten(1).norm(dim=1), rtol=1e-12, atol=0)


def test_slerp_follows_the_great_circle():
    # in 2-D, slerp between unit vectors at angles 0 and θ is the unit vector at angle aθ
    theta = 2.0
    z0 = torch.tensor([[1.0, 0.0]], dtype=F64)
    z1 = torch.tensor([[math.cos(theta), math.sin(theta)]], dtype=F64)
    weights = torch.linspace(0, 1, 7, dtype=F64)
    out = interpolate(z0, z1, weights)[:, 0]
    expected = torch.stack([torch.cos(weights * theta), torch.sin(weights * theta)], dim=1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)


@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 10), a=st.floats(0, 1))
def test_lerp_and_slerp_agree_for_parallel_endpoints(seed, scale, a):
    z0, _ = pair(seed, dtype=F64)
    z1 = scale * z0
    torch.testing.assert_close(
        interpolate(z0, z1, a, "slerp"), interpolate(z0, z1, a, "lerp"), rtol=1e-15, atol=0
    )


def test_zero_endpoint_falls_back_to_lerp():
    z0 = torch.zeros(2, 3)
    z1 = torch.randn(2, 3)
    torch.testing.assert_close(interpolate(z0, z1, [0.25, 0.5]), interpolate(z0, z1, [0.25, 0.5], "lerp"))


def test_each_sample_has_its_own_angle():
    z0, z1 = pair(3, shape=(5, 7), dtype=F64)
    batched = interpolate(z0, z1, [0.3, 0.8])
    for b in range(5):
        torch.testing.assert_close(batched[:, b], interpolate(z0[b : b + 1], z1[b : b + 1], [0.3, 0.8])[:, 0])


def test_extrapolation_continues_the_arc_when_allowed():
    z0 = torch.tensor([[1.0, 0.0]], dtype=F64)
    z1 = torch.tensor([[0.0, 1.0]], dtype=F64)
    out = interpolate(z0, z1, [2.0], extrapolate=True)[0, 0]
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.0], dtype=F64), rtol=0, atol=1e-15)


def test_gradients_flow_through_slerp():
    z0, z1 = pair(4, dtype=F64)
    z0.requires_grad_(True)
    interpolate(z0, z1, [0.4]).sum().backward()
    assert z0.grad is not None and bool(torch.isfinite(z0.grad).all())


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_weights_outside_the_unit_interval_are_refused():
    z0, z1 = pair(0)
    with pytest.raises(ValueError, match=r"weights must lie in \[0, 1\].*extrapolate=True"):
        interpolate(z0, z1, [0.5, 1.2])
    with pytest.raises(ValueError, match="weights must be finite"):
        interpolate(z0, z1, [math.nan])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        interpolate(z0, z1, [])
    with pytest.raises(TypeError, match="weights must be numbers"):
        interpolate(z0, z1, True)
    # a bool list gave the endpoints swapped, complex weights a torch warning, and weights that
    # require grad were detached in silence
    with pytest.raises(TypeError, match="weights must be real numbers, got dtype torch.bool"):
        interpolate(z0, z1, [True, False])
    with pytest.raises(TypeError, match="weights must be real numbers, got dtype torch.complex64"):
        interpolate(z0, z1, torch.tensor([0.5 + 0j]))
    with pytest.raises(ValueError, match=r"weights require grad.*weights.detach\(\)"):
        interpolate(z0, z1, torch.tensor([0.5], requires_grad=True))


def test_mismatched_latents_are_refused():
    z0, z1 = pair(0)
    with pytest.raises(ValueError, match=r"same shape, got \(4, 3, 5\) and \(3, 3, 5\)"):
        interpolate(z0, z1[:3], 0.5)
    with pytest.raises(ValueError, match="share dtype and device"):
        interpolate(z0, z1.double(), 0.5)
    with pytest.raises(TypeError, match="z0 must be a floating-point tensor"):
        interpolate(torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int64), 0.5)


def test_antiparallel_endpoints_have_no_unique_slerp():
    z0, _ = pair(1)
    with pytest.raises(ValueError, match=r"antiparallel endpoints \(angle π\): samples \[0, 1, 2, 3\]"):
        interpolate(z0, -z0, 0.5)
    torch.testing.assert_close(interpolate(z0, -z0, 0.5, "lerp"), torch.zeros_like(z0))


def test_unknown_method_is_refused():
    z0, z1 = pair(0)
    with pytest.raises(ValueError, match=r"method must be one of \('slerp', 'lerp'\), got 'cubic'"):
        interpolate(z0, z1, 0.5, "cubic")  # type: ignore[arg-type]


def test_an_empty_batch_interpolates_to_an_empty_batch():
    empty = torch.zeros(0, 3)
    assert interpolate(empty, empty, [0.0, 0.5, 1.0]).shape == (3, 0, 3)


def test_nearly_opposite_float16_latents_keep_their_norm():
    # angle π - 1e-5: the slerp coefficients (about 1/sin θ = 1e5) overflowed float16 and the
    # result was NaN; the midpoint is the perpendicular direction at the endpoints' norm
    z0 = torch.tensor([[1000.0, 0.0]], dtype=torch.float16)
    z1 = torch.tensor([[-1000.0, 0.01]], dtype=torch.float16)
    out = interpolate(z0, z1, [0.25, 0.5], method="slerp")
    assert out.dtype == torch.float16 and bool(torch.isfinite(out).all())
    torch.testing.assert_close(out[1, 0].float(), torch.tensor([0.0, 1000.0]), rtol=0, atol=1.0)
    torch.testing.assert_close(out.float().norm(dim=-1), torch.full((2, 1), 1000.0), rtol=2e-3, atol=0)
