"""Linear multistep methods on non-uniform σ grids.

A k-step Adams method integrates, over the next step, the polynomial that interpolates the
last k evaluations. σ grids of diffusion samplers are never uniform, so the weights are not the
textbook constants: they are recomputed every step from the σ values themselves, in float64
Python arithmetic (no tensor work, no device sync). :func:`interpolation_weights` does this for
any kernel, and :mod:`diffode.solvers.exponential` reuses it with the exponential kernel of
DPM-Solver++.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from diffode.field import VectorField
from diffode.solvers.base import Solver

History = tuple[tuple[float, Tensor], ...]
"""Past (σ, value) pairs carried in a multistep solver's state, oldest first."""


def interpolation_weights(nodes: Sequence[float], moments: Sequence[float]) -> list[float]:
    """Quadrature weights of the Lagrange interpolant through ``nodes``.

    For the Lagrange basis L_j on the distinct ``nodes`` u_0 … u_{k-1} and a kernel K with
    moments μ_m = ∫ K(u) u^m du (m = 0 … k-1, given in ``moments``), returns
    w_j = ∫ K(u) L_j(u) du, so that Σ_j w_j g(u_j) integrates the interpolant of g exactly.
    Nodes should be measured in units of the step (u = 0 now, u = 1 at the end of the step) to
    keep the polynomial coefficients of order one.
    """
    k = len(nodes)
    if len(moments) != k:
        raise ValueError(f"interpolation_weights needs {k} moments for {k} nodes, got {len(moments)}")
    weights = []
    for j, uj in enumerate(nodes):
        poly = [1.0]  # coefficients of Π_{m≠j} (u - u_m), lowest degree first
        denom = 1.0
        for m, um in enumerate(nodes):
            if m == j:
                continue
            poly = [hi - um * lo for hi, lo in zip([0.0, *poly], [*poly, 0.0], strict=True)]
            denom *= uj - um
        weights.append(math.fsum(p * mu for p, mu in zip(poly, moments, strict=True)) / denom)
    return weights


def trim_history(history: History, keep: int) -> History:
    """The last ``keep`` entries of ``history`` (all of them when it is shorter, none when ``keep`` is 0)."""
    return history[max(len(history) - keep, 0) :]


class AdamsBashforth(Solver):
    """Variable-step Adams–Bashforth method. Order ``order`` (1 … 4), 1 evaluation per step.

    With past evaluations f_j = f(σ_j, x_j) at the last ``order`` grid points (the current one
    included), the step is

        x₁ = x₀ + Σ_j w_j f_j,   w_j = ∫_{σ₀}^{σ₁} L_j(σ) dσ,

    L_j the Lagrange basis on those σ_j: the integral of the polynomial through the past
    derivatives. The weights follow the grid's own spacing, so the order holds on any smooth σ
    grid (Karras, DDIM timesteps, log-SNR), not only on uniform ones; on a uniform grid they are
    the classical constants (3/2, -1/2 for order 2).

    Start-up: while fewer than ``order - 1`` past evaluations exist, the step uses all that do
    (step 1 is Euler, step 2 second order, …), so any grid of two or more points is valid and
    every step costs one evaluation. The start-up steps' larger local errors add an O(h²) term
    to the global error of orders 3 and 4. When sampling it is small (the first steps sit at
    σ_max, where the flow is nearly linear, and the flow contracts what they leave): measured on
    the Gaussian oracle, no visible effect up to 1024 Karras steps, and on DDIM grids from
    t = 990 a local slope of 3.7 instead of 4.0 for order 4 between 445 and 890 steps. When
    encoding (σ increasing) it is not damped and bounds the order on fine grids by 2.

    Args:
        order: 1, 2, 3 or 4 (1 is Euler).

    The history of (σ, f) pairs lives in the solver state; the object itself holds no
    per-solve data and can serve several solves at once.
    """

    name = "adams-bashforth"
    SUPPORTED_ORDERS = (1, 2, 3, 4)

    def __init__(self, order: int = 2) -> None:
        if isinstance(order, bool) or not isinstance(order, int) or order not in self.SUPPORTED_ORDERS:
            raise ValueError(f"AdamsBashforth order must be one of {self.SUPPORTED_ORDERS}, got {order!r}")
        self.order = order
        self.name = f"ab{order}"

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> History:
        return ()

    def step(self, f: VectorField, s0: float, s1: float, x: Tensor, state: History) -> tuple[Tensor, History]:
        history = (*state, (s0, f(s0, x)))
        h = s1 - s0
        nodes = [(s - s0) / h for s, _ in history]
        weights = interpolation_weights(nodes, [h / (m + 1) for m in range(len(history))])
        out = x
        for w, (_, fj) in zip(weights, history, strict=True):
            out = out + w * fj
        return out, trim_history(history, self.order - 1)

    def __repr__(self) -> str:
        return f"AdamsBashforth(order={self.order})"


__all__ = ["AdamsBashforth", "History", "interpolation_weights", "trim_history"]
