"""Interpolating latents (reference §9; DDIM paper §5.3)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from diffode.validation import describe, require_finite, require_floating, wide_float

INTERPOLATIONS = ("slerp", "lerp")

_PARALLEL = 1e-6
"""Angles (radians) below which slerp is replaced by lerp: the two differ by O(θ²) relative, far
below float32 resolution, while sin θ would start to lose digits."""


def interpolate(
    z0: Tensor,
    z1: Tensor,
    weights: float | Sequence[float] | Tensor,
    method: Literal["slerp", "lerp"] = "slerp",
    *,
    extrapolate: bool = False,
) -> Tensor:
    """Interpolate between two batches of latents, sample by sample.

    Spherical linear interpolation (slerp) treats each sample's non-batch dimensions as one
    vector: with θ the angle between z0[b] and z1[b],

        slerp(z0, z1, a) = sin((1-a)θ)/sin θ · z0 + sin(aθ)/sin θ · z1,

    which keeps the norm when the endpoints have equal norms (for Gaussian latents, the typical
    shell); lerp is (1-a) z0 + a z1. The coefficients are computed, and the latents combined, in
    float64 (float32 on MPS), then cast back to the latents' dtype; the endpoints are reproduced
    exactly at a = 0 and a = 1.

    Degenerate cases of slerp, per sample: when θ < 1e-6 (parallel endpoints, or either one
    zero, where no angle exists) slerp falls back to lerp, which it equals to O(θ²); exactly or
    nearly antiparallel endpoints (π - θ < 1e-6) raise ``ValueError``, because every great
    circle through z0 and -z0 is equally valid and any choice would be arbitrary (use lerp,
    which passes through 0, or perturb one endpoint).

    Args:
        z0, z1: latents of the same shape ``(batch, ...)``, dtype and device.
        weights: a float, or a 1-D sequence/tensor of W floats; 0 gives z0 and 1 gives z1.
        method: ``"slerp"`` or ``"lerp"``.
        extrapolate: allow weights outside [0, 1] (continuing the great circle or the line);
            refused by default, since latents off the arc are not interpolations.

    Returns:
        With one weight (a number, a 0-d tensor or a NumPy scalar), shape ``(batch, ...)``; with
        W weights, ``(W, batch, ...)``, entry [w, b] the interpolation of sample b at weights[w].
        Dtype and device of z0.
    """
    z0 = require_finite("z0", require_floating("z0", z0))
    z1 = require_finite("z1", require_floating("z1", z1))
    if z0.shape != z1.shape:
        raise ValueError(
            f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}; "
            "interpolation pairs sample b of z0 with sample b of z1"
        )
    if z0.dtype != z1.dtype or z0.device != z1.device:
        raise ValueError(
            f"z0 and z1 must share dtype and device, got {z0.dtype} on {z0.device} and {z1.dtype} on "
            f"{z1.device}"
        )
    if z0.ndim == 0:
        raise ValueError("z0 and z1 must have a leading batch dimension, got 0-d tensors")
    if method not in INTERPOLATIONS:
        raise ValueError(f"method must be one of {INTERPOLATIONS}, got {method!r}")
    # a Python number, or a 0-d tensor or NumPy scalar (weights drawn from a tensor or an array)
    scalar = (isinstance(weights, (int, float)) and not isinstance(weights, bool)) or getattr(
        weights, "ndim", None
    ) == 0
    a = _weights(weights, extrapolate)
    batch = z0.shape[0]
    # angles, coefficients and the combination in float64 (MPS has none: float32): near θ = π
    # the coefficients grow like 1/sin θ and the result is their difference, so rounding them to
    # the latents' dtype loses its digits (float16 overflowed, and inf - inf gave NaN)
    work = wide_float(z0.device)
    a_wb = a.to(work).to(z0.device)[:, None].expand(-1, batch)  # (W, B)
    c0, c1 = 1.0 - a_wb, a_wb
    if method == "slerp":
        theta = _angles(z0, z1, work).expand_as(a_wb)
        parallel = theta < _PARALLEL
        safe = torch.where(parallel, torch.ones_like(theta), theta)
        c0 = torch.where(parallel, c0, torch.sin((1.0 - a_wb) * safe) / torch.sin(safe))
        c1 = torch.where(parallel, c1, torch.sin(a_wb * safe) / torch.sin(safe))
    shape = (a.numel(), batch, *([1] * (z0.ndim - 1)))
    c0 = c0.reshape(shape)
    c1 = c1.reshape(shape)
    out = (c0 * z0.to(work) + c1 * z1.to(work)).to(z0.dtype)
    return out[0] if scalar else out


def _weights(weights: float | Sequence[float] | Tensor, extrapolate: bool) -> Tensor:
    """The weights as a float64 CPU tensor of shape (W,), checked."""
    if isinstance(weights, bool):
        raise TypeError(f"weights must be numbers, got {weights!r}")
    if isinstance(weights, (int, float)):
        a = torch.tensor([float(weights)], dtype=torch.float64)
    else:
        try:
            given = torch.as_tensor(weights)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"weights must be a float, a sequence of floats or a tensor ({err})") from None
        if given.dtype == torch.bool or given.is_complex():
            raise TypeError(f"weights must be real numbers, got dtype {given.dtype}")
        if given.requires_grad:
            # the coefficients are computed in float64 on the host: no gradient reaches the weights
            raise ValueError("weights require grad, but no gradient flows to them; pass weights.detach()")
        a = given.to("cpu", torch.float64)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1 or a.numel() == 0:
        raise ValueError(f"weights must be a float or a non-empty 1-D sequence, got shape {tuple(a.shape)}")
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"weights must be finite, got {describe(a)}")
    if not extrapolate and bool(((a < 0) | (a > 1)).any()):
        raise ValueError(
            f"weights must lie in [0, 1], got {describe(a)}; pass extrapolate=True to go beyond the endpoints"
        )
    return a


def _angles(z0: Tensor, z1: Tensor, work: torch.dtype) -> Tensor:
    """Per-sample angle θ ∈ [0, π] between z0[b] and z1[b], dtype ``work`` of shape (batch,).

    θ = 2·atan2(‖û0 - û1‖, ‖û0 + û1‖) for the unit vectors û (Kahan), accurate near 0 and π
    where arccos of the cosine loses half the digits. Zero vectors give θ = 0 (handled as
    parallel).
    """
    # the width is given, not -1, so that an empty batch reshapes too
    width = math.prod(z0.shape[1:])
    flat0 = z0.reshape(z0.shape[0], width).to(work)
    flat1 = z1.reshape(z1.shape[0], width).to(work)
    n0 = flat0.norm(dim=1, keepdim=True)
    n1 = flat1.norm(dim=1, keepdim=True)
    zero = (n0[:, 0] == 0) | (n1[:, 0] == 0)
    u0 = flat0 / torch.where(n0 == 0, torch.ones_like(n0), n0)
    u1 = flat1 / torch.where(n1 == 0, torch.ones_like(n1), n1)
    theta = 2 * torch.atan2((u0 - u1).norm(dim=1), (u0 + u1).norm(dim=1))
    theta = torch.where(zero, torch.zeros_like(theta), theta)
    antiparallel = math.pi - theta < _PARALLEL
    if bool(antiparallel.any()):
        bad = antiparallel.nonzero()[:, 0].tolist()
        raise ValueError(
            f"slerp is undefined for antiparallel endpoints (angle π): samples {bad[:8]}; every great "
            "circle through them is equally valid. Use method='lerp' or perturb one endpoint"
        )
    return theta


__all__ = ["INTERPOLATIONS", "interpolate"]
