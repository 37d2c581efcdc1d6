"""UniPC: the unified predictor-corrector of Zhao et al. (2023), data-prediction form.

Zhao, Bai, Rao, Zhou & Lu, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models" (NeurIPS 2023, arXiv 2302.04867). In λ = -log σ the data-prediction ODE has
the exact solution of :mod:`diffode.solvers.exponential`; UniPC approximates its integral of x̂₀
from differences of past x̂₀ values, D_k = (x̂₀(λ_k) - x̂₀(λ₀))/r_k with r_k = (λ_k - λ₀)/h:

    x̄₁ = (σ₁/σ₀) x̄₀ + (1 - e^{-h}) x̂₀(λ₀) + B(h) Σ_k ρ_k D_k,

where ρ solves the order conditions R ρ = b, R_ik = r_k^{i-1}, b_i = -h i! φ_{i+1}(-h)/B(h), and
B(h) is -h ("bh1") or e^{-h} - 1 ("bh2") in this sign convention (the paper's B(h) = h and
e^h - 1 for its step from the current point), as in the paper's Algorithms 1-2 and in
diffusers' ``UniPCMultistepScheduler``, which this module follows operation by operation
(tests/test_peers.py checks the two agree):

- UniP-p, the predictor, uses the p - 1 previous x̂₀ (order p; for p = 2 the paper's
  simplified ρ = 1/2).
- UniC, the corrector, runs when the next evaluation x̂₀(x̄₁) is in hand (the one the next
  step makes anyway): it redoes the last step with that value as one more node (r = 1),
  raising the order by one at no extra evaluation, and the next predictor starts from the
  corrected state. The evaluation itself stays that of the uncorrected state, as published.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from torch import Tensor

from diffode.field import PredictingField, VectorField
from diffode.solvers.base import Solver, UnstableStepError, positive_steps
from diffode.solvers.exponential import phi
from diffode.solvers.multistep import History, MultistepState, check_order, lower_order_final

Variant = Literal["bh1", "bh2"]


def unipc_update(
    x: Tensor,
    s0: float,
    s1: float,
    d0: Tensor,
    past: History,
    variant: Variant,
    new: Tensor | None = None,
) -> Tensor:
    """One UniP step (``new`` is ``None``) or UniC step (``new`` = x̂₀ at σ₁) from σ₀ to σ₁.

    Args:
        x: x̄ at σ₀.
        s0, s1: the step's ends.
        d0: x̂₀ at σ₀.
        past: earlier (σ, x̂₀) pairs used as extra nodes, oldest first; the predictor's order is
            ``len(past) + 1``, the corrector's ``len(past) + 1`` as well (raised by one through
            ``new``).
        variant: the B(h) of the paper, ``"bh1"`` (B(h) = h) or ``"bh2"`` (B(h) = e^h - 1).
        new: the corrector's x̂₀ at σ₁ (UniC), or ``None`` (UniP).
    """
    h = math.log(s0 / s1)
    hh = -h  # the code's exponent: e^{hh} = σ₁/σ₀
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rks = [math.log(s0 / s) / h for s, _ in reversed(past)]  # newest past node first, as published
    order = len(past) + 1
    # b_i = hh · i! · φ_{i+1}(hh) / B(h): the diffusers recursion h_phi_k/hh - 1/i!, without its
    # cancellation at small h
    b = [hh * math.factorial(i) * phi(i + 1, hh) / b_h for i in range(1, order + 1)]
    if new is None:
        if order == 1:
            rhos: list[float] = []
        elif order == 2:
            rhos = [0.5]  # the published simplification of UniP-2
        else:
            rows = np.array([[r**i for r in rks] for i in range(order - 1)])
            rhos = np.linalg.solve(rows, np.array(b[: order - 1])).tolist()
    elif order == 1:
        rhos = [0.5]  # the published simplification of UniC-1
    else:
        nodes = [*rks, 1.0]
        rows = np.array([[r**i for r in nodes] for i in range(order)])
        rhos = np.linalg.solve(rows, np.array(b)).tolist()
    out = (s1 / s0) * x + ((s0 - s1) / s0) * d0
    for rho, rk, (_, dk) in zip(rhos, rks, reversed(past), strict=False):
        out = out - (b_h * rho / rk) * (dk - d0)
    if new is not None:
        out = out - (b_h * rhos[-1]) * (new - d0)
    return out


class UniPC(Solver):
    """UniPC with the B(h) variant ``variant``: predictor UniP-``order`` and corrector UniC.
    Order ``order + 1`` (the corrector adds one), 1 evaluation per step. As for
    :class:`~diffode.solvers.DPMSolverPP`, the lower-order start-up steps add an O(h³) term to
    the global error of order 4 (``order=3``), which a flow started at a high σ_max contracts:
    measured on a two-component Gaussian mixture on log-σ grids of 32 to 512 steps, the
    observed order of ``unipc-bh1-3`` is 2.8-3.0 from σ = 3 (``unipc-bh2-3``: 3.4 falling to
    3.1) and 3.9-4.0 from σ = 80.

    Zhao et al. (2023), arXiv 2302.04867 (module docstring), data prediction ("UniPC-p" with
    x̂₀, ``predict_x0=True`` in diffusers). Each step (1) corrects the state it receives with
    the new evaluation (UniC of the previous step's order, from the previous corrected state),
    then (2) predicts the next state with UniP of order min(``order``, history + 1, intervals
    left): the start-up takes orders 1, 2, … and the lower order final of diffusers'
    ``lower_order_final=True`` holds on sampling grids (ending at σ = 0): the last positive step
    is at most second order. The last step into σ = 0 is :func:`diffode.solve`'s x̂₀ of the
    uncorrected state, which is what diffusers' last step computes too. The state returned at
    every grid point is the predictor's (uncorrected), as in diffusers' ``prev_sample``.

    Args:
        order: the predictor order p, 1, 2 or 3 (diffusers' ``solver_order``).
        variant: ``"bh1"`` (B(h) = h, recommended by the paper below 10 steps for
            unconditional sampling) or ``"bh2"`` (B(h) = e^h - 1, diffusers' default).
    """

    name = "unipc"
    SUPPORTED_ORDERS = (1, 2, 3)

    def __init__(self, order: int = 2, variant: Variant = "bh2") -> None:
        order = check_order("UniPC", order, self.SUPPORTED_ORDERS)
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
        self.predictor_order = order
        self.variant: Variant = variant
        self.order = order + 1
        self.name = f"unipc-{variant}-{order}"

    BH1_MAX_STEP = 2.5
    """The largest step h = |log(σ₀/σ₁)| that ``variant="bh1"`` of order ≥ 2 accepts (see init)."""

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> MultistepState:
        if self.variant == "bh1" and self.predictor_order >= 2:
            self._check_bh1_steps(sigmas)
        return MultistepState(left=lower_order_final(sigmas, None))

    def _check_bh1_steps(self, sigmas: Tensor) -> None:
        """Refuse grids on which bh1's published simplified weight is unstable.

        UniP-2 and UniC-1 use ρ = 1/2 in place of the exact weight, so their correction is
        B(h)/2 = h/2 times the difference where the exact exponential integral weights it by
        h φ₂(-h): an overshoot of 1/(2 φ₂(-h)), 1.4 at h = 1 but 2 at h = 2.5 and 2.5 at h = 3.5,
        the last positive step of DDIM's uniform and linspace grids at 10-20 steps (σ(t ≈ 100)
        → σ(0)), where it measured 5-7× Euler's distance on the digits model
        (docs/benchmarks.md). bh2's B(h) = e^h - 1 stays below 1 and needs no such limit.
        """
        for s0, s1 in positive_steps(sigmas):
            h = abs(math.log(s0 / s1))
            if h > self.BH1_MAX_STEP:
                raise UnstableStepError(
                    f"{self.name}: the step σ {s0:.4g} -> {s1:.4g} spans h = {h:.2f} in log σ, beyond "
                    f"{self.BH1_MAX_STEP} where bh1's simplified weight overshoots the exact one "
                    f"{1 / (2 * phi(2, -h)):.1f}-fold and the method is unstable; use variant='bh2' "
                    "(e.g. 'unipc-bh2-2') or a grid without so large a step (karras, logsnr, trailing)"
                )

    def step(
        self, f: PredictingField, s0: float, s1: float, x: Tensor, state: MultistepState
    ) -> tuple[Tensor, MultistepState]:
        d0 = f.predict(s0, x)[1]
        history = state.history
        if state.last is not None:
            # UniC: redo the previous step with this evaluation as an extra node
            (s_prev, d_prev), older = history[-1], history[:-1]
            used = older[len(older) - state.last_order + 1 :] if state.last_order > 1 else ()
            x = unipc_update(state.last, s_prev, s0, d_prev, used, self.variant, new=d0)
        order = state.cap(self.predictor_order)
        past = history[len(history) - order + 1 :] if order > 1 else ()
        out = unipc_update(x, s0, s1, d0, past, self.variant)
        return out, state.advance((s0, d0), self.predictor_order, last=x, last_order=order)

    def __repr__(self) -> str:
        return f"UniPC(order={self.predictor_order}, variant={self.variant!r})"


__all__ = ["UniPC", "unipc_update"]
