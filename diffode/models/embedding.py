"""Sinusoidal embedding of the diffusion time, as in the DDPM and transformer papers."""

from __future__ import annotations

import math
import operator

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Embed times ``t`` (float, shape ``(batch,)``, training-step units) as ``(batch, dim)``.

    The first half holds sin(t·ω_k), the second cos(t·ω_k), with frequencies ω_k geometrically
    spaced from 1 towards 1/max_period, ω_k = max_period^(-k/half) for k = 0 … half-1 (the
    lowest is max_period^(-(half-1)/half), just above 1/max_period), so integer and fractional
    t (from σ grids between training steps) are embedded alike; t trained on integers only is
    embedded smoothly in between, but a network need not be smooth there. ``dim`` must be
    even. Output dtype: t's, at least float32.
    """
    if dim % 2:
        raise ValueError(f"dim must be even for a sin/cos embedding, got {dim}")
    half = dim // 2
    dtype = torch.promote_types(t.dtype, torch.float32)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half)
    angles = t.to(dtype)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def size_argument(name: str, value: object, low: int = 1, what: str = "a positive integer") -> int:
    """``value`` as a Python int (any integer type but bool, NumPy's included) of at least
    ``low``; ``ValueError`` saying it must be ``what`` otherwise (a width of 16.7 was truncated)."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or number < low:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return number


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding followed by a two-layer MLP: ``(batch,)`` times → ``(batch, dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        # checked here, where the network is built: an odd width failed at the first forward
        # pass, and a zero one gave a network blind to time
        even = "an even integer >= 2 (sin/cos pairs)"
        dim = size_argument("emb_dim", dim, 2, even)
        if dim % 2:
            raise ValueError(f"emb_dim must be {even}, got {dim!r}")
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        emb = sinusoidal_embedding(t, self.dim)
        return self.mlp(emb.to(next(self.mlp.parameters()).dtype))


def check_input(x: Tensor, event: str, fits: bool, note: str = "") -> None:
    """``TypeError`` for an integer ``x``, ``ValueError`` for one that does not fit (``fits``
    False; ``event`` and ``note`` say what does), instead of an error deep in a layer or a silent
    cast of integer pixels."""
    if not x.is_floating_point():
        # networks cast x to their own dtype, so integer pixels (0-255) would pass as inputs in
        # [-1, 1], and an output cast back to x's dtype would be truncated
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}; convert it with x.float()")
    if not fits:
        raise ValueError(f"x must have shape (batch, {event}){note}, got {tuple(x.shape)}")


def check_call(x: Tensor, t: Tensor, event: str, fits: bool, note: str = "") -> None:
    """:func:`check_input` for ``x``, and ``ValueError`` for a ``t`` that is not one time per
    sample."""
    check_input(x, event, fits, note)
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must hold one time per sample, shape ({x.shape[0]},), got {tuple(t.shape)}")
