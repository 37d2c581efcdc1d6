"""Step-size control of the adaptive solvers: tolerances, error ratios, accept/reject and the next step.

The stage loop (:func:`~diffode.solvers.runge_kutta.rk_stages`) computes a step and its error
estimate; the controller here decides what to do with it, following Hairer, Nørsett & Wanner,
*Solving Ordinary Differential Equations I* (2nd ed., 1993), §II.4, as scipy's ``RK45`` does:

- the error ratio is the RMS norm of e / (atol + rtol·max(|x₀|, |x₁|)); a step is accepted when
  the ratio is at most 1 (a NaN ratio rejects);
- the next step size is h·clamp(0.9·ratio^(-1/(q+1)), 0.2, 10), q the order of the embedded
  solution, and does not grow on the step accepted right after a rejection (an I controller);
- the first step comes from the book's starting-step heuristic, clipped to the interval so that
  ``f`` is only evaluated between its ends (never at σ ≤ 0).

Step sizes and error ratios are float64 on the host, one per :class:`Grouping` group (the whole
batch, or each sample). The evaluation budget (``max_nfe``) is counted by :func:`diffode.solve`;
this module only holds its default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffode.field import Sigma, VectorField
from diffode.validation import require_int, require_positive

DEFAULT_RTOL = 1e-3
"""Relative tolerance of the solver names ``"bosh3"``, ``"dopri5"``, ``"torchdiffeq:<method>"`` and
``"scipy:<method>"``; the classes themselves require explicit tolerances."""
DEFAULT_ATOL = 1e-3
"""Absolute tolerance that goes with :data:`DEFAULT_RTOL` (x̄ is O(1) to O(σ_max) on the DDIM ODE)."""
DEFAULT_MAX_NFE = 10_000
"""Evaluation budget (``Solver.max_nfe``) of an adaptive solve unless ``max_nfe`` is given."""

_F64 = torch.float64


def check_tolerances(rtol: Any, atol: Any) -> tuple[float, float]:
    """Both tolerances as finite floats > 0 (ValueError/TypeError naming the bad one)."""
    return require_positive("rtol", rtol), require_positive("atol", atol)


class Grouping:
    """Which samples share a step size: the whole batch (one group) or each sample (one group each).

    Per-group quantities (σ position, step size, error ratio) are float64 tensors of shape
    ``(groups,)`` on the host.
    """

    def __init__(self, per_sample: bool) -> None:
        self.per_sample = per_sample

    def groups(self, x: Tensor) -> int:
        return x.shape[0] if self.per_sample else 1

    def sigma(self, sig: Sigma) -> Sigma:
        """σ as ``f`` receives it: a Python float for the batch, a ``(k,)`` tensor per sample."""
        if self.per_sample or not isinstance(sig, Tensor):
            return sig
        return float(sig[0])

    def norm(self, v: Tensor) -> Tensor:
        """RMS of ``v`` over each group's elements, shape ``(groups,)``, on v's device."""
        sq = v.detach().to(torch.promote_types(v.dtype, torch.float32)).square()
        if self.per_sample:
            return sq.reshape(sq.shape[0], -1).mean(1).sqrt()
        return sq.mean().sqrt().reshape(1)

    def broadcast(self, g: Tensor, x: Tensor) -> Tensor:
        """A per-group ``(k,)`` host tensor on x's device and dtype, shaped to broadcast against x."""
        return g.to(x.device, x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def initial_step(
    f: VectorField,
    s0: float,
    s1: float,
    x: Tensor,
    f0: Tensor,
    *,
    error_order: int,
    rtol: float,
    atol: float,
    grouping: Grouping,
) -> Tensor:
    """Hairer, Nørsett & Wanner (1993), §II.4 starting step size, per group, clipped to |s1 - s0|.

    Evaluates ``f`` once, at s0 ± h0 with h0 ≤ |s1 - s0| (``f0`` is f(s0, x)). Returns the step
    magnitudes, float64 ``(groups,)`` on the host.
    """
    length = abs(s1 - s0)
    direction = math.copysign(1.0, s1 - s0)
    scale = atol + rtol * x.abs()
    d0, d1 = torch.stack([grouping.norm(x / scale), grouping.norm(f0 / scale)]).to("cpu", _F64)
    # a non-finite f would make every step size NaN, and the field be called at σ = NaN
    _require_finite(d1, s0, s0, s1)
    tiny = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = torch.where(tiny, torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp(min=1e-300)).clamp(max=length)
    x1 = x + grouping.broadcast(direction * h0, x) * f0
    probe = s0 + direction * h0
    f1 = f(grouping.sigma(probe), x1)
    d2 = grouping.norm((f1 - f0) / scale).to("cpu", _F64) / h0
    _require_finite(d2, probe, s0, s1)
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(
        dmax <= 1e-15,
        torch.clamp(h0 * 1e-3, min=1e-6),
        (0.01 / dmax.clamp(min=1e-300)) ** (1.0 / (error_order + 1)),
    )
    return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, length))


def _require_finite(norms: Tensor, sigma: float | Tensor, s0: float, s1: float) -> None:
    """``ValueError`` when a group's norm of the field (evaluated at ``sigma``, per group or one
    for all) is not finite, naming where: the start of the step-size search on σ ``s0`` -> ``s1``."""
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        where = float(sigma[bad][0]) if isinstance(sigma, Tensor) else sigma
        raise ValueError(
            f"the field returned a non-finite value at σ = {where:.6g}, while choosing the first step "
            f"of σ {s0:.6g} -> {s1:.6g}; check that the model returns finite values there"
        )


@dataclass
class ControlState:
    """The controller's per-solve state, one entry per group (host tensors)."""

    h: Tensor | None
    """Magnitude of the next step to try (float64); ``None`` until the first step is chosen."""
    after_reject: Tensor
    """Whether the group's last attempt was rejected (bool): its next accepted step may not grow."""
    accepted: Tensor
    """Accepted steps so far (int64)."""
    rejected: Tensor
    """Rejected steps so far (int64)."""

    @classmethod
    def start(cls, groups: int) -> ControlState:
        return cls(
            h=None,
            after_reject=torch.zeros(groups, dtype=torch.bool),
            accepted=torch.zeros(groups, dtype=torch.int64),
            rejected=torch.zeros(groups, dtype=torch.int64),
        )


class IController:
    """The elementary (I) step-size controller of an embedded Runge–Kutta method (module docstring).

    Args (keyword only):
        rtol, atol: tolerances, finite and > 0.
        error_order: q, the order of the embedded solution whose difference from the propagated
            one estimates the error; the step-size exponent is -1/(q+1).

    The controller is stateless (one object serves many solves); each solve keeps a
    :class:`ControlState`.
    """

    safety = 0.9
    min_factor = 0.2
    max_factor = 10.0

    def __init__(self, *, rtol: float, atol: float, error_order: int) -> None:
        self.rtol, self.atol = check_tolerances(rtol, atol)
        self.error_order = require_int("error_order", error_order, low=1)

    def first_step(
        self, f: VectorField, s0: float, s1: float, x: Tensor, f0: Tensor, grouping: Grouping
    ) -> Tensor:
        """:func:`initial_step` with this controller's tolerances and order (one evaluation)."""
        return initial_step(
            f, s0, s1, x, f0, error_order=self.error_order, rtol=self.rtol, atol=self.atol, grouping=grouping
        )

    def error_ratio(self, grouping: Grouping, error: Tensor, x0: Tensor, x1: Tensor) -> Tensor:
        """The RMS of error / (atol + rtol·max(|x₀|, |x₁|)) per group, float64 ``(groups,)`` on the
        host. Moving it there is the one device-to-host transfer of an attempted step, which the
        accept/reject decision needs."""
        scale = self.atol + self.rtol * torch.maximum(x0.abs(), x1.abs())
        return grouping.norm(error / scale).to("cpu", _F64)

    def decide(self, control: ControlState, groups: Tensor, ratio: Tensor, h: Tensor) -> Tensor:
        """Accept or reject the attempts of the groups ``groups`` (indices), of magnitudes ``h``
        and error ratios ``ratio``; record them in ``control`` with each group's next step size.
        Returns the accepted mask."""
        assert control.h is not None, "choose the first step before deciding on attempts"
        accept = ratio <= 1  # NaN ratios reject
        factor = (
            self.safety * torch.nan_to_num(ratio, nan=math.inf) ** (-1.0 / (self.error_order + 1))
        ).clamp(self.min_factor, self.max_factor)
        factor = torch.where(accept & control.after_reject[groups], factor.clamp(max=1.0), factor)
        control.h[groups] = h * factor
        control.accepted[groups] += accept
        control.rejected[groups] += ~accept
        control.after_reject[groups] = ~accept
        return accept

    def underflowed(self, h: Tensor, sigma: Tensor) -> Tensor:
        """Whether the step sizes ``h`` at positions ``sigma`` are too small to move σ in float64
        (a few ulps): a field that returns non-finite values, or tolerances below the state's
        precision, shrink the step forever otherwise. A NaN step size (the first one chosen from a
        non-finite field value) counts as underflowed too."""
        return ~(h > 8 * torch.finfo(_F64).eps * sigma.abs())


__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_MAX_NFE",
    "DEFAULT_RTOL",
    "ControlState",
    "Grouping",
    "IController",
    "check_tolerances",
    "initial_step",
]
