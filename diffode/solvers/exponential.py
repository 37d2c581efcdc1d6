"""Exponential integrators in λ = -log σ with the data prediction (DPM-Solver++).

With the data prediction x̂₀(σ, x̄) = x̄ - σ f(σ, x̄), the DDIM ODE dx̄/dσ = (x̄ - x̂₀)/σ reads,
in λ = -log σ,

    dx̄/dλ = x̂₀ - x̄,   so   x̄(λ₁) = e^{-h} x̄(λ₀) + ∫_{λ₀}^{λ₁} e^{-(λ₁-λ)} x̂₀(λ) dλ,

h = λ₁ - λ₀ = log(σ₀/σ₁): the data-prediction form of the exact solution in Lu et al. (2022),
"DPM-Solver++", arXiv 2211.01095, here with α = 1. The linear part is exact; only x̂₀ is
approximated. Holding it constant gives x̄₁ = (σ₁/σ₀) x̄₀ + (1 - σ₁/σ₀) x̂₀, which is
algebraically x̄₀ + (σ₁ - σ₀) f: first-order DPM-Solver++ *is* DDIM. Every update below is
therefore written as that Euler step plus corrections built from differences of x̂₀, so the
first-order case is Euler to the last bit. All formulas hold for h < 0 too (σ increasing,
encoding).

DEIS (:class:`DEIS`) is the exponential integrator of the ε form instead: in x̄ the linear part
vanishes (dx̄/dσ = ε), and ε is interpolated by a polynomial in log σ (or in the network time t)
over past evaluations.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from diffode.field import PredictingField, VectorField
from diffode.schedule import NoiseSchedule
from diffode.solvers.base import Solver
from diffode.solvers.multistep import MultistepState, check_order, interpolation_weights, lower_order_final
from diffode.validation import require_bool, require_choice_int


def phi(k: int, z: float) -> float:
    """φ_k(z) = Σ_{j≥0} z^j / (j+k)!, the exponential-integrator functions (φ_0 = e^z,
    φ_1(z) = (e^z - 1)/z, φ_{k+1}(z) = (φ_k(z) - 1/k!)/z), accurate near z = 0 too."""
    if abs(z) < 1.0:
        # the recurrence cancels catastrophically for small z; the series converges fast here
        term = 1.0 / math.factorial(k)
        total = term
        j = 0
        while abs(term) > 1e-17 * abs(total):
            j += 1
            term *= z / (j + k)
            total += term
        return total
    value = math.exp(z)
    for i in range(k):
        value = (value - 1.0 / math.factorial(i)) / z
    return value


class DPMSolverPP(Solver):
    """DPM-Solver++ with the data prediction x̂₀ in λ = -log σ (Lu et al., 2022, arXiv 2211.01095).
    Order ``order`` (the published 3M: 2, see below); 1 evaluation per step when multistep (or
    order 1), 2 for the second-order singlestep variant.

    Configurations (``order``, ``multistep``, ``exact``), each with its registry name:

    - ``"dpmpp-1"`` (order 1): x̄₁ = (σ₁/σ₀) x̄₀ + (1 - σ₁/σ₀) x̂₀, identical to Euler/DDIM
      (computed as x̄₀ + (σ₁ - σ₀) f, so it agrees to the last bit).
    - ``"dpmpp-2m"`` (order 2): DPM-Solver++(2M) on variable steps: with r = h_prev/h,
      x̄₁ = (σ₁/σ₀) x̄₀ + (1 - σ₁/σ₀) [(1 + 1/(2r)) x̂₀ - 1/(2r) x̂₀_prev]; equal to diffusers'
      ``DPMSolverMultistepScheduler(solver_order=2)`` and k-diffusion's ``sample_dpmpp_2m``
      (tests/test_peers.py).
    - ``"dpmpp-3m"`` (order 3): the published third-order multistep update of the authors'
      code, as in diffusers' ``DPMSolverMultistepScheduler(solver_order=3)``: with r₀ = h₀/h,
      r₁ = h₁/h the previous steps' ratios, D1₀ = (x̂₀ - x̂₀₋₁)/r₀, D1₁ = (x̂₀₋₁ - x̂₀₋₂)/r₁,
      D1 = D1₀ + r₀/(r₀+r₁) (D1₀ - D1₁), D2 = (D1₀ - D1₁)/(r₀+r₁),
      x̄₁ = (σ₁/σ₀) x̄₀ + (1 - e^{-h}) x̂₀ + h φ₂(-h) D1 + h φ₃(-h) D2.
      D2 estimates h² x̂₀''/2, and the integral of the quadratic term needs 2 h φ₃(-h), so the
      update is formally second order (its third-order term carries half its weight; measured
      slope 2 in the order tests); it is kept as published because that is what users of the
      name expect. It is declared ``order = 2``.
    - ``"dpmpp-3m-exact"`` (``exact=True``, order 3): the quadratic through the last three x̂₀
      in λ integrated exactly against e^{-(λ₁-λ)}: weights w_j = h Σ_m c_jm m! φ_{m+1}(-h). Third
      order, but it extrapolates harder than the published update and is less stable at low
      NFE (see docs/benchmarks.md, where it is measured on every grid).
    - ``"dpmpp-2s"`` (``multistep=False``): DPM-Solver++(2S) with r = 1/2: a first-order step to
      σ_m = √(σ₀σ₁) (the midpoint in λ), then x̄₁ = (σ₁/σ₀) x̄₀ + (1 - σ₁/σ₀) x̂₀(σ_m, u); equal
      to k-diffusion's ``sample_dpmpp_2s_ancestral`` with η = 0. Two evaluations per step.

    Multistep start-up: while the history is shorter than ``order - 1`` steps, the step uses
    the highest order the history allows (step 1 is first order). As for
    :class:`~diffode.solvers.AdamsBashforth`, the start-up steps add an O(h²) term to the
    global error of third order: small when sampling from a high σ_max, whose flow contracts it,
    but it sets the observed order to 2 on a grid that starts low (the Gaussian oracle from
    σ = 10: errors fall 4-fold per doubling of the steps from 64 to 512) and when encoding.
    Lower order final: on a
    sampling grid (ending at σ = 0) with fewer than 15 positive σ values the last positive step
    is at most second order, as diffusers' ``lower_order_final`` (and the authors' code, which
    also lowers the final steps of short runs) does; ``lower_order_final=False`` turns that off.
    The final step into σ = 0 is taken by ``solve`` (first order, landing on x̂₀), which is
    also what diffusers does with ``final_sigmas_type="zero"``. x̂₀ comes from the field's own
    ``predict``, the (σ, x̂₀) history lives in the solver state, and the object is stateless.

    Args:
        order: 1, 2 or 3 when ``multistep``; 1 or 2 otherwise.
        multistep: reuse past evaluations (one evaluation per step) or not.
        exact: the exact-integral third-order update instead of the published one (order 3 only).
        lower_order_final: lower the order of the last steps of short sampling grids.
    """

    name = "dpmpp"
    MULTISTEP_ORDERS = (1, 2, 3)
    SINGLESTEP_ORDERS = (1, 2)
    SHORT_GRID = 15
    """Sampling grids with fewer positive σ values than this get lower-order final steps."""

    def __init__(
        self, order: int = 2, multistep: bool = True, *, exact: bool = False, lower_order_final: bool = True
    ) -> None:
        self.multistep = require_bool("multistep", multistep)
        supported = self.MULTISTEP_ORDERS if self.multistep else self.SINGLESTEP_ORDERS
        kind = "multistep" if self.multistep else "singlestep (multistep=False)"
        order = require_choice_int(f"DPMSolverPP {kind} order", order, tuple(supported))
        self.exact = require_bool("exact", exact)
        if self.exact and not (order == 3 and self.multistep):
            raise ValueError("DPMSolverPP(exact=True) is the third-order multistep variant; pass order=3")
        self.steps_order = order
        self.lower_order_final = require_bool("lower_order_final", lower_order_final)
        self.order = 2 if (order == 3 and not self.exact) else order
        self.evals_per_step = 2 if (order == 2 and not self.multistep) else 1
        # the singlestep variants (and first order) use no past evaluations
        self.single_step = not self.multistep or order == 1
        suffix = "" if order == 1 else ("m" if self.multistep else "s")
        self.name = f"dpmpp-{order}{suffix}" + ("-exact" if self.exact else "")

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> MultistepState:
        below = self.SHORT_GRID if self.lower_order_final else 0
        return MultistepState(left=lower_order_final(sigmas, below) if self.multistep else None)

    def step(
        self, f: PredictingField, s0: float, s1: float, x: Tensor, state: MultistepState
    ) -> tuple[Tensor, MultistepState]:
        f0, d0 = f.predict(s0, x)
        # exponential Euler (= DDIM) in the form of the Euler step it equals; higher orders add
        # corrections built from differences of x̂₀
        out = x + (s1 - s0) * f0
        decay = (s0 - s1) / s0  # 1 - e^{-h}
        h = math.log(s0 / s1)
        if not self.multistep and self.steps_order == 2:
            s_mid = math.sqrt(s0 * s1)
            u = x + (s_mid - s0) * f0
            d_mid = f.predict(s_mid, u)[1]
            return out + decay * (d_mid - d0), state
        order = state.cap(self.steps_order)
        past = state.history[len(state.history) - order + 1 :] if order > 1 else ()
        if order == 2:
            (s_prev, d_prev), *_ = past
            half_over_r = h / (2.0 * math.log(s_prev / s0))  # 1/(2r), r = h_prev/h
            out = out + (decay * half_over_r) * (d0 - d_prev)
        elif order == 3 and self.exact:
            nodes = [math.log(s0 / s) / h for s, _ in past] + [0.0]
            moments = [h * math.factorial(m) * phi(m + 1, -h) for m in range(3)]
            weights = interpolation_weights(nodes, moments)
            # the weights sum to 1 - e^{-h}, which the Euler part already applied to d0
            for w, (_, dj) in zip(weights[:-1], past, strict=True):
                out = out + w * (dj - d0)
        elif order == 3:
            (s2, d2), (s1_, d1) = past
            r0, r1 = math.log(s1_ / s0) / h, math.log(s2 / s1_) / h
            d1_0, d1_1 = (d0 - d1) / r0, (d1 - d2) / r1
            w1, w2 = h * phi(2, -h), h * phi(3, -h)
            # D1 = D1₀ + r₀/(r₀+r₁)(D1₀ - D1₁) and D2 = (D1₀ - D1₁)/(r₀+r₁), weighted by hφ₂ and hφ₃
            out = out + w1 * d1_0 + ((w1 * r0 + w2) / (r0 + r1)) * (d1_0 - d1_1)
        return out, state.advance((s0, d0), self.steps_order - 1)

    def __repr__(self) -> str:
        extra = ", exact=True" if self.exact else ""
        extra += "" if self.lower_order_final else ", lower_order_final=False"
        return f"DPMSolverPP(order={self.steps_order}, multistep={self.multistep}{extra})"


def log_sigma_moments(s0: float, s1: float, count: int) -> list[float]:
    """μ_m = ∫_{σ₀}^{σ₁} u^m dσ for m < ``count``, u = log(σ/σ₀)/log(σ₁/σ₀) (0 at σ₀, 1 at σ₁).

    With h = log(σ₀/σ₁), σ = σ₀ e^{-hu}: μ_m = -σ₁ h m! φ_{m+1}(h), the exact moments that
    :func:`~diffode.solvers.multistep.interpolation_weights` turns into the weights of a
    polynomial in log σ integrated over the step in σ."""
    h = math.log(s0 / s1)
    return [-s1 * h * math.factorial(m) * phi(m + 1, h) for m in range(count)]


_GAUSS_NODES, _GAUSS_WEIGHTS = (v.tolist() for v in np.polynomial.legendre.leggauss(8))


def time_moments(schedule: NoiseSchedule, s0: float, s1: float, count: int) -> list[float]:
    """μ_m = ∫_{σ₀}^{σ₁} u^m dσ for m < ``count``, u = (t - t₀)/(t₁ - t₀) in the network time
    t(σ) of ``schedule`` (t_i = t(σ_i)): the moments of DEIS's tAB basis.

    By parts, μ_m = σ₁ - m ∫_0^1 u^{m-1} σ(t₀ + u(t₁ - t₀)) du, which needs σ(t) only. The
    integral is 8-point Gauss–Legendre on each piece of [t₀, t₁] between integers (a discrete
    schedule's σ(t) is exponential in t there, so the rule is exact to round-off) and on at
    least 8 equal pieces, in float64. A continuous schedule's σ(t) is smooth except near its
    first time, where σ ≈ √t on a VP schedule: steps reaching it get moments to about 5e-8 relative
    when t runs over [0, 1] (its integer pieces hide this when t runs over [0, 999]).
    """
    t0, t1 = float(schedule.t(s0)), float(schedule.t(s1))
    lo, hi = min(t0, t1), max(t0, t1)
    cuts = set(np.linspace(lo, hi, 9).tolist()) | set(range(math.ceil(lo), math.floor(hi) + 1))
    edges = sorted(c for c in cuts if lo <= c <= hi)
    a, b = np.array(edges[:-1]), np.array(edges[1:])
    nodes = ((a + b)[:, None] + (b - a)[:, None] * np.array(_GAUSS_NODES)) / 2
    weights = (b - a)[:, None] / 2 * np.array(_GAUSS_WEIGHTS)
    sigma = schedule.sigma(torch.from_numpy(nodes.reshape(-1))).numpy().reshape(nodes.shape)
    u = (nodes - t0) / (t1 - t0)
    # dt = (t₁ - t₀) du: the rule runs over t in increasing order, u's direction is its sign
    scale = 1.0 / abs(t1 - t0)
    moments = [s1 - s0]
    for m in range(1, count):
        moments.append(s1 - m * scale * math.fsum((weights * u ** (m - 1) * sigma).reshape(-1).tolist()))
    return moments


Basis = Literal["logrho", "t"]


class DEIS(Solver):
    """DEIS, the exponential Adams method on ε. Order ``order`` (1 … 3), 1 evaluation per step.

    Zhang & Chen (2023), "Fast sampling of diffusion models with exponential integrator"
    (arXiv 2204.13902): the exponential integrator of the ε form of the probability-flow ODE,
    with ε extrapolated from past evaluations by a polynomial. In x̄ = x/α the integrating
    factor is 1 (dx̄/dσ = ε, ρ = σ in the paper's notation), so the step is

        x̄₁ = x̄₀ + Σ_j w_j ε_j,   w_j = ∫_{σ₀}^{σ₁} L_j(v(σ)) dσ,

    L_j the Lagrange basis through the last ``order`` values of the interpolation variable v,
    integrated exactly. Two bases:

    - ``basis="logrho"`` (``"deis-1"`` … ``"deis-3"``): v = log σ (:func:`log_sigma_moments`), the
      variant diffusers implements (``DEISMultistepScheduler``, ``algorithm_type="deis"``, its
      "log-ρ" basis): equal to it at orders 1, 2 and 3 (tests/test_peers.py). Start-up and lower
      order final as :class:`DPMSolverPP` (diffusers lowers the last steps of runs with fewer than
      15 steps, and so does this solver on such a sampling grid).
    - ``basis="t"`` (``"deis-tab-1"`` … ``"deis-tab-3"``): v = the network time t of the field's
      schedule (:func:`time_moments`), the paper's tAB: warm start at lower orders, no lower
      order final (``lower_order_final=False`` in the registry), as in its authors' code. The
      number is the order, as in ``"deis-k"``: ``"deis-tab-k"`` interpolates k points, a
      polynomial of degree k - 1, which the paper calls tAB(k - 1) (its cubic tAB3 is not
      offered). It needs the field's schedule (a :class:`~diffode.field.ScheduleField` such as
      :class:`~diffode.EpsField`) and finite σ in the schedule's range. On a discrete schedule
      t(σ) is linear in log σ between training steps (the authors' code interpolates ᾱ linearly
      instead, a difference of about 2e-5 at 12 steps), so the basis is log-ρ's piece by piece,
      joined at the integers.

    Order 1 is Euler (DDIM) to the last bit in both bases.

    Args:
        order: 1, 2 or 3.
        basis: ``"logrho"`` or ``"t"``.
        lower_order_final: lower the order of the last steps of short sampling grids.
    """

    name = "deis"
    SUPPORTED_ORDERS = (1, 2, 3)

    def __init__(self, order: int = 3, *, basis: Basis = "logrho", lower_order_final: bool = True) -> None:
        self.order = check_order("DEIS", order, self.SUPPORTED_ORDERS)
        if basis not in ("logrho", "t"):
            raise ValueError(f"DEIS basis must be 'logrho' or 't', got {basis!r}")
        self.basis: Basis = basis
        self.lower_order_final = require_bool("lower_order_final", lower_order_final)
        self.name = f"deis-{order}" if basis == "logrho" else f"deis-tab-{order}"

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> MultistepState:
        if self.basis == "t" and self.order > 1:
            self._schedule(f, sigmas)
        below = DPMSolverPP.SHORT_GRID if self.lower_order_final else 0
        return MultistepState(left=lower_order_final(sigmas, below))

    def _schedule(self, f: VectorField, sigmas: Tensor | None = None) -> NoiseSchedule:
        """The schedule of ``f`` (as :func:`diffode.solve` hands it over, or bare), checked to
        cover the positive σ of ``sigmas``."""
        # a bare ScheduleField holds it; the field solve hands over holds the ScheduleField as .model
        schedule = getattr(f, "schedule", None)
        if not isinstance(schedule, NoiseSchedule):
            schedule = getattr(getattr(f, "model", None), "schedule", None)
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(
                f"{self!r} interpolates ε in the network time t(σ) and needs the field's schedule; "
                "pass a ScheduleField such as EpsField(model, schedule), or basis='logrho' (deis-2, deis-3)"
            )
        if sigmas is not None:
            # finite σ where t(σ) is one-to-one (a zero-terminal-SNR schedule maps everything above
            # its largest finite σ to T - 1); the slack admits a float32 copy of the ends
            low, high = schedule.sigma_min * (1 - 1e-6), schedule.sigma_max_finite * (1 + 1e-6)
            values = [v for v in sigmas.tolist() if 0.0 < v < math.inf]
            outside = [v for v in values if not low <= v <= high]
            if outside:
                raise ValueError(
                    f"{self!r} needs σ within the schedule's [{schedule.sigma_min:.6g}, "
                    f"{schedule.sigma_max_finite:.6g}], where t(σ) is one-to-one, got σ = {outside[0]:.6g}; "
                    "use basis='logrho' (deis-2, deis-3) beyond it"
                )
        return schedule

    def step(
        self, f: VectorField, s0: float, s1: float, x: Tensor, state: MultistepState
    ) -> tuple[Tensor, MultistepState]:
        f0 = f(s0, x)
        out = x + (s1 - s0) * f0
        order = state.cap(self.order)
        if order > 1:
            past = state.history[len(state.history) - order + 1 :]
            if self.basis == "logrho":
                span = math.log(s1 / s0)
                nodes = [math.log(s / s0) / span for s, _ in past] + [0.0]
                moments = log_sigma_moments(s0, s1, order)
            else:
                schedule = self._schedule(f)
                t0, t1 = float(schedule.t(s0)), float(schedule.t(s1))
                nodes = [(float(schedule.t(s)) - t0) / (t1 - t0) for s, _ in past] + [0.0]
                moments = time_moments(schedule, s0, s1, order)
            weights = interpolation_weights(nodes, moments)
            # the weights sum to σ₁ - σ₀, which the Euler part already applied to ε₀
            for w, (_, fj) in zip(weights[:-1], past, strict=True):
                out = out + w * (fj - f0)
        return out, state.advance((s0, f0), self.order - 1)

    def __repr__(self) -> str:
        extra = "" if self.basis == "logrho" else ", basis='t'"
        extra += "" if self.lower_order_final else ", lower_order_final=False"
        return f"DEIS(order={self.order}{extra})"


__all__ = ["DEIS", "DPMSolverPP", "log_sigma_moments", "phi", "time_moments"]
