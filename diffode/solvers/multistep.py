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
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor

from diffode.field import VectorField
from diffode.solvers.base import Solver, UnstableStepError, is_network_field, positive_steps
from diffode.validation import require_bool, require_choice_int

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


def check_order(kind: str, order: object, supported: Sequence[int]) -> int:
    """``order`` if it is one of the ``supported`` ints (any integer type), else ``ValueError``
    listing them."""
    return require_choice_int(f"{kind} order", order, tuple(supported))


def trim_history(history: History, keep: int) -> History:
    """The last ``keep`` entries of ``history`` (all of them when it is shorter, none when ``keep`` is 0)."""
    return history[max(len(history) - keep, 0) :]


@dataclass(frozen=True)
class MultistepState:
    """What a multistep solver carries between steps.

    Attributes:
        history: past (σ, value) pairs, oldest first.
        left: with a lower-order-final rule in force, the grid intervals left from this step's
            start to σ = 0, the final step into σ = 0 included (2 on the last positive step);
            ``None`` when no such rule applies.
        last: the state at ``history[-1]``'s σ as the solver wants to remember it (UniPC's
            corrected sample), or ``None``.
        last_order: the order of the previous step (UniPC's corrector takes it over).
    """

    history: History = ()
    left: int | None = None
    last: Tensor | None = None
    last_order: int = 0

    def cap(self, order: int) -> int:
        """``order`` limited by the history (start-up) and by the lower-order-final rule."""
        order = min(order, len(self.history) + 1)
        return order if self.left is None else min(order, self.left)

    def advance(self, entry: tuple[float, Tensor], keep: int, **changes: Any) -> MultistepState:
        """The next step's state: ``entry`` appended, the last ``keep`` entries kept, ``left`` - 1."""
        left = None if self.left is None else self.left - 1
        return replace(self, history=trim_history((*self.history, entry), keep), left=left, **changes)


def lower_order_final(sigmas: Tensor, below: int | None) -> int | None:
    """The ``left`` count of a fresh :class:`MultistepState`: the grid's intervals when it ends at
    σ = 0 and has fewer than ``below`` positive σ values (``None``: any number), else ``None``.

    The published multistep samplers (DPM-Solver++'s code, diffusers' ``lower_order_final``) take
    their last steps at a lower order on short sampling grids: the order of a step is at most the
    number of intervals left, so the last positive step is at most second order (the step into
    σ = 0 is first order anyway). On a grid that does not end at 0 nothing is lowered. A grid
    that starts at σ = ∞ (zero terminal SNR) counts that step towards ``below``, as diffusers
    counts inference steps, but not in ``left``: :func:`diffode.solve` takes it itself, so the
    solver's steps are one fewer.
    """
    values = sigmas.tolist()
    intervals = len(values) - 1
    if intervals < 1 or values[-1] != 0.0 or (below is not None and intervals >= below):
        return None
    return intervals - 1 if math.isinf(values[0]) else intervals


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
        self.order = check_order("AdamsBashforth", order, self.SUPPORTED_ORDERS)
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


class IPNDM(Solver):
    """iPNDM, the improved pseudo-numerical multistep method with fixed coefficients. Order 2
    on non-uniform σ grids (``order`` on grids uniform in σ), 1 evaluation per step.

    The step is the Adams–Bashforth formula of a *uniform* grid applied to whatever grid is
    given, as in Zhang & Chen (2023), "Fast sampling of diffusion models with exponential
    integrator" (DEIS, arXiv 2204.13902, the iPNDM of its appendix) and Zhou et al. (2024),
    "Fast ODE-based sampling for diffusion models in around 5 steps" (AMED, arXiv 2312.00094,
    whose ``ipndm`` sampler this follows):

        x̄₁ = x̄₀ + (σ₁ - σ₀) Σ_j c_j ε_j,   c = (1), (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24

    over the last ``order`` evaluations, lower orders while fewer exist (step 1 is Euler). The
    constants ignore the grid's spacing, which on a non-uniform grid leaves a local error of
    h·(Δσ_i - Δσ_{i-1})·ε' = O(h³): second order however high ``order`` is (measured in the
    order tests for ``order=4``, the registry's ``"ipndm"``; ``order=3`` converges at slope 1.6
    on DDIM's uniform grid at 50-200 steps, where the O(h²) and O(h³) terms still compete).

    The last step into σ = 0 is :func:`diffode.solve`'s own (first order, x̂₀): AMED's loop
    applies the multistep formula there too, so the two agree on every step but that one.

    On a network's field, grids on which the four-step formula would take a step that divides
    (or, encoding, multiplies) σ by more than :attr:`FOUR_STEP_MAX_RATIO` are refused
    (:class:`~diffode.solvers.UnstableStepError`, naming the step). On the bundled schedule that
    refuses DDIM's ``uniform`` grid at 5-13 steps, ``linspace`` at 5-14 and ``karras`` at 5-6,
    all ending with such a step into σ_min = 0.01. At 10 steps ``uniform`` and ``linspace`` take
    it from σ 0.34 and 0.38 after steps of ratio about 2: the fixed weights (55, -59, 37, -9)/24
    extrapolate the cubic through ε at σ ≈ 0.4-2.6 down to σ = 0.01. Measured on the bundled networks at 10
    evaluations (distance to the converged solution, docs/benchmarks.md): 5.4× Euler's on
    ``linspace`` and 1.16× on ``uniform`` (digits), 7.1× and 1.5× (class-conditional), 18.8×
    and 5.2× (guidance 3), where ``order=3`` measured 0.57× and 0.49× and iPNDM with its last
    positive step alone taken by Euler 0.98× and 0.58× (digits). The limit is a calibration on these
    networks, not a bound: on the digits network at 10-18 steps it refuses every such cell worse
    than Euler (up to 5.4×) but also ``uniform`` at 11-13 steps (0.60-0.73×), and it takes
    ``linspace`` at 15 steps with guidance 3 (ratio 24.5, 3.4×).

    Args:
        order: 1 … 4 (4, AMED's default).
        check_stability: ``False`` takes the refused steps anyway (to study them).
    """

    name = "ipndm"
    SUPPORTED_ORDERS = (1, 2, 3, 4)
    FOUR_STEP_MAX_RATIO = 25.0
    """The largest σ₀/σ₁ (or σ₁/σ₀) of a step taken by the four-step formula on a network's field."""

    def __init__(self, order: int = 4, *, check_stability: bool = True) -> None:
        self.max_order = order = check_order("IPNDM", order, self.SUPPORTED_ORDERS)
        self.check_stability = require_bool("check_stability", check_stability)
        self.order = min(order, 2)
        self.name = "ipndm" if order == 4 else f"ipndm-{order}"
        # the uniform-grid Adams–Bashforth constants, newest evaluation first
        self._coefficients = [
            interpolation_weights([-j for j in range(k)], [1.0 / (m + 1) for m in range(k)])
            for k in range(1, order + 1)
        ]

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> MultistepState:
        if self.check_stability and self.max_order == 4 and is_network_field(f):
            self._check_four_step_ratios(sigmas)
        return MultistepState()

    def _check_four_step_ratios(self, sigmas: Tensor) -> None:
        """Refuse the first step beyond :attr:`FOUR_STEP_MAX_RATIO` that the four-step formula
        would take (the fourth step between positive σ and every later one)."""
        for s0, s1 in positive_steps(sigmas)[3:]:
            ratio = max(s0, s1) / min(s0, s1)
            if ratio > self.FOUR_STEP_MAX_RATIO:
                raise UnstableStepError(
                    f"{self!r}: the step σ {s0:.4g} -> {s1:.4g} (ratio {ratio:.4g}) would extrapolate the "
                    f"fixed four-step formula beyond the ratio {self.FOUR_STEP_MAX_RATIO:g} it takes on a "
                    "network's field (on the bundled networks such steps landed up to 19 times as far from "
                    "the converged solution as Euler). Use more steps, a grid without so large a step "
                    "(quadratic, trailing or logsnr), IPNDM(order=3), 'ab4' (whose weights follow the "
                    "grid), or IPNDM(check_stability=False) (CLI: --no-stability-check) to take it anyway"
                )

    def step(
        self, f: VectorField, s0: float, s1: float, x: Tensor, state: MultistepState
    ) -> tuple[Tensor, MultistepState]:
        f0 = f(s0, x)
        h = s1 - s0
        out = x + h * f0
        weights = self._coefficients[state.cap(self.max_order) - 1]
        # Σ c_j = 1, so the Euler step above plus Σ_{j≥1} c_j (ε_j - ε_0) is the whole formula
        for w, (_, fj) in zip(weights[1:], reversed(state.history), strict=False):
            out = out + (h * w) * (fj - f0)
        return out, state.advance((s0, f0), self.max_order - 1)

    def __repr__(self) -> str:
        unchecked = "" if self.check_stability else ", check_stability=False"
        return f"IPNDM(order={self.max_order}{unchecked})"


__all__ = [
    "IPNDM",
    "AdamsBashforth",
    "History",
    "MultistepState",
    "check_order",
    "interpolation_weights",
    "lower_order_final",
    "trim_history",
]
