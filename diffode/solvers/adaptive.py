"""Adaptive embedded Runge–Kutta solvers: Bogacki–Shampine 3(2) and Dormand–Prince 5(4).

An adaptive solver's ``step`` integrates a whole interval [s0, s1] of the σ grid with internal
sub-steps whose sizes an error controller chooses; intermediate grid points are output points,
and ``solve`` takes the final first-order step into σ = 0 as for every other solver.

The method, following Hairer, Nørsett & Wanner, *Solving Ordinary Differential Equations I*
(2nd ed., 1993), §II.4:

- an embedded pair gives the solution x₁ (order p) and an error estimate e = x₁ - x̂₁ from a
  lower-order solution (order q) at no extra cost;
- the error ratio is the RMS norm of e / (atol + rtol·max(|x₀|, |x₁|)); a step is accepted when
  the ratio is at most 1;
- the next step size is h·clamp(0.9·ratio^(-1/(q+1)), 0.2, 10), and does not grow right after a
  rejected step (an I controller);
- the first step comes from the book's starting-step heuristic (two evaluations), clipped to the
  interval so that ``f`` is only evaluated between s0 and s1 (never at σ ≤ 0);
- both pairs here are FSAL (first same as last): the last stage of an accepted step is the first
  stage of the next, so an attempted step costs one evaluation less than the pair has stages.

Step sizes, σ positions and the controller live on the host in float64 (σ is float64 everywhere
in diffode); the state stays in the caller's dtype and on its device. Deciding whether a step is
accepted needs the error norm on the host, so each *attempted* step makes exactly one
device-to-host transfer (the error ratios); nothing else synchronises.

With ``per_sample=True`` every sample has its own σ position and step size, its own error norm
and its own accept/reject decision, so a sample's result does not depend on the rest of the
batch (torchdiffeq's and scipy's norms couple the batch; reference §13). The field is then
called with σ as a ``(k,)`` float64 tensor for the k samples still integrating, on those
samples' rows only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from diffode.field import Sigma, VectorField
from diffode.solvers.base import Solver
from diffode.solvers.runge_kutta import ButcherTableau
from diffode.validation import require_int, require_positive

DEFAULT_RTOL = 1e-3
"""Relative tolerance of the solver names ``"bosh3"``, ``"dopri5"``, ``"torchdiffeq:<method>"`` and
``"scipy:<method>"``; the classes themselves require explicit tolerances."""
DEFAULT_ATOL = 1e-3
"""Absolute tolerance that goes with :data:`DEFAULT_RTOL` (x̄ is O(1) to O(σ_max) on the DDIM ODE)."""
DEFAULT_MAX_NFE = 10_000
"""Evaluation budget of an adaptive solve unless ``max_nfe`` is given."""

_SAFETY = 0.9
_MIN_FACTOR = 0.2
_MAX_FACTOR = 10.0
_F64 = torch.float64


@dataclass(frozen=True)
class EmbeddedPair:
    """An explicit embedded Runge–Kutta pair with the FSAL property, checked on construction.

    Attributes:
        tableau: the method that is propagated, of order ``tableau.order`` (its own checks run
            when it is built: explicit, consistent nodes, order conditions).
        b_low: weights of the embedded solution of order ``low_order`` on the same stages; it is
            checked as a :class:`~diffode.solvers.runge_kutta.ButcherTableau` of that order.
        low_order: ``1 <= low_order < tableau.order``.

    FSAL (first same as last) requires the last node to be 1, the last row of ``a`` to equal
    ``b`` and ``b``'s last entry to be 0: the last stage is then f at the new solution.
    """

    tableau: ButcherTableau
    b_low: tuple[float, ...]
    low_order: int

    def __post_init__(self) -> None:
        tab = self.tableau
        if not isinstance(tab, ButcherTableau):
            raise TypeError(f"tableau must be a ButcherTableau, got {type(tab).__name__}")
        if isinstance(self.low_order, bool) or not isinstance(self.low_order, int):
            raise TypeError(f"low_order must be an int, got {self.low_order!r}")
        if not 1 <= self.low_order < tab.order:
            raise ValueError(
                f"need 1 <= low_order < order, got low_order={self.low_order}, order={tab.order}"
            )
        embedded = ButcherTableau(
            a=tab.a, b=self.b_low, c=tab.c, order=self.low_order, name=f"{tab.name} embedded"
        )
        object.__setattr__(self, "b_low", embedded.b)
        if not (tab.c[-1] == 1.0 and tab.b[-1] == 0.0 and tab.a[-1] == tab.b):
            raise ValueError(
                f"pair {tab.name!r} is not FSAL: it needs c[-1] = 1, b[-1] = 0 and the last row of a "
                f"equal to b, got c[-1] = {tab.c[-1]}, b = {list(tab.b)}, a[-1] = {list(tab.a[-1])}"
            )

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def stages(self) -> int:
        return self.tableau.stages

    @property
    def error_weights(self) -> tuple[float, ...]:
        """e = b - b_low: h Σ e_i k_i estimates the local error of the lower-order solution."""
        return tuple(x - y for x, y in zip(self.tableau.b, self.b_low, strict=True))


BOGACKI_SHAMPINE = EmbeddedPair(
    tableau=ButcherTableau(
        a=((0, 0, 0, 0), (1 / 2, 0, 0, 0), (0, 3 / 4, 0, 0), (2 / 9, 1 / 3, 4 / 9, 0)),
        b=(2 / 9, 1 / 3, 4 / 9, 0),
        c=(0, 1 / 2, 3 / 4, 1),
        order=3,
        name="bosh3",
    ),
    b_low=(7 / 24, 1 / 4, 1 / 3, 1 / 8),
    low_order=2,
)
"""Bogacki & Shampine (1989), "A 3(2) pair of Runge–Kutta formulas", Appl. Math. Lett. 2(4).
Its third-order method is Ralston's (``"ralston3"``)."""

_DP_B = (35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0)
DORMAND_PRINCE = EmbeddedPair(
    tableau=ButcherTableau(
        a=(
            (0, 0, 0, 0, 0, 0, 0),
            (1 / 5, 0, 0, 0, 0, 0, 0),
            (3 / 40, 9 / 40, 0, 0, 0, 0, 0),
            (44 / 45, -56 / 15, 32 / 9, 0, 0, 0, 0),
            (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0, 0, 0),
            (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0, 0),
            _DP_B,
        ),
        b=_DP_B,
        c=(0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1),
        order=5,
        name="dopri5",
    ),
    b_low=(5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    low_order=4,
)
"""Dormand & Prince (1980), "A family of embedded Runge–Kutta formulae", J. Comput. Appl. Math. 6(1)."""


def check_tolerances(rtol: Any, atol: Any) -> tuple[float, float]:
    """Both tolerances as finite floats > 0 (ValueError/TypeError naming the bad one)."""
    return require_positive("rtol", rtol), require_positive("atol", atol)


@dataclass
class Budget:
    """Counts the evaluations an adaptive solve makes and stops it at ``limit``."""

    limit: int
    owner: str
    used: int = 0

    def wrap(self, f: VectorField) -> VectorField:
        """``f`` counted against the budget; the call past the limit raises ``ValueError``."""

        def budgeted(sigma: Sigma, x: Tensor) -> Tensor:
            if self.used >= self.limit:
                where = sigma if isinstance(sigma, float) else float(torch.as_tensor(sigma).max())
                raise ValueError(
                    f"{self.owner} used its max_nfe={self.limit} evaluations before reaching the end of "
                    f"the interval (next evaluation at σ = {where:.6g}); loosen rtol/atol or raise max_nfe"
                )
            self.used += 1
            return f(sigma, x)

        return budgeted


class Grouping:
    """Which samples share a step size: the whole batch (one group) or each sample (one group each).

    Per-group quantities (σ position, step size, error ratio) are float64 tensors of shape
    ``(groups,)`` on the host.
    """

    def __init__(self, per_sample: bool) -> None:
        self.per_sample = per_sample

    def groups(self, x: Tensor) -> int:
        return x.shape[0] if self.per_sample else 1

    def sigma(self, sig: Tensor) -> Sigma:
        """σ as ``f`` receives it: a Python float for the batch, a ``(k,)`` tensor per sample."""
        return sig if self.per_sample else float(sig[0])

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

    Evaluates ``f`` once, at s0 ± h0 with h0 ≤ |s1 - s0|. Returns the step magnitudes, float64
    ``(groups,)`` on the host.
    """
    length = abs(s1 - s0)
    direction = math.copysign(1.0, s1 - s0)
    scale = atol + rtol * x.abs()
    d0, d1 = torch.stack([grouping.norm(x / scale), grouping.norm(f0 / scale)]).to("cpu", _F64)
    tiny = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = torch.where(tiny, torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp(min=1e-300)).clamp(max=length)
    x1 = x + grouping.broadcast(direction * h0, x) * f0
    f1 = f(grouping.sigma(s0 + direction * h0), x1)
    d2 = grouping.norm((f1 - f0) / scale).to("cpu", _F64) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(
        dmax <= 1e-15,
        torch.clamp(h0 * 1e-3, min=1e-6),
        (0.01 / dmax.clamp(min=1e-300)) ** (1.0 / (error_order + 1)),
    )
    return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, length))


@dataclass
class _Run:
    """Per-solve state of an embedded Runge–Kutta solver."""

    grouping: Grouping
    budget: Budget
    accepted: Tensor
    rejected: Tensor
    after_reject: Tensor
    h: Tensor | None = None
    k1: Tensor | None = None
    x_last: Tensor | None = field(default=None, repr=False)


class EmbeddedRungeKutta(Solver):
    """Base of the adaptive embedded Runge–Kutta solvers; subclasses set :attr:`pair`.

    Args (keyword only):
        rtol, atol: relative and absolute tolerances, finite and > 0, required (no silent
            defaults; the solver names use :data:`DEFAULT_RTOL` and :data:`DEFAULT_ATOL`).
            Tolerances below about 1e-6 need a float64 state.
        max_nfe: evaluation budget for the whole solve (all intervals of the grid, including the
            two evaluations that choose the first step). Reaching it raises ``ValueError``.
        per_sample: ``False`` (default) controls one step size with the error norm over the whole
            batch; ``True`` gives every sample its own step size and accept/reject decision, so a
            sample's result does not depend on the rest of the batch. ``f`` must then accept σ as a
            ``(k,)`` float64 tensor (diffode's fields and oracles do).

    ``Solution.stats`` reports ``accepted`` and ``rejected`` steps (summed over samples when
    ``per_sample=True``).
    """

    pair: ClassVar[EmbeddedPair]
    adaptive = True

    def __init__(
        self, *, rtol: float, atol: float, max_nfe: int = DEFAULT_MAX_NFE, per_sample: bool = False
    ) -> None:
        self.rtol, self.atol = check_tolerances(rtol, atol)
        self.max_nfe = require_int("max_nfe", max_nfe, low=1)
        if not isinstance(per_sample, bool):
            raise TypeError(f"per_sample must be True or False, got {per_sample!r}")
        self.per_sample = per_sample
        self._a, self._c = self.pair.tableau.a, self.pair.tableau.c
        self._e = self.pair.error_weights

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> _Run:
        grouping = Grouping(self.per_sample)
        n = grouping.groups(x)
        return _Run(
            grouping=grouping,
            budget=Budget(self.max_nfe, repr(self)),
            accepted=torch.zeros(n, dtype=torch.int64),
            rejected=torch.zeros(n, dtype=torch.int64),
            after_reject=torch.zeros(n, dtype=torch.bool),
        )

    def step(self, f: VectorField, s0: float, s1: float, x: Tensor, state: _Run) -> tuple[Tensor, _Run]:
        run, grouping = state, state.grouping
        f = run.budget.wrap(f)
        n = grouping.groups(x)
        direction = math.copysign(1.0, s1 - s0)
        k1 = run.k1
        if k1 is None or run.x_last is not x:
            k1 = f(grouping.sigma(torch.full((n,), s0, dtype=_F64)), x)
        h = run.h
        if h is None:
            h = initial_step(
                f,
                s0,
                s1,
                x,
                k1,
                error_order=self.pair.low_order,
                rtol=self.rtol,
                atol=self.atol,
                grouping=grouping,
            )
        pos = torch.full((n,), s0, dtype=_F64)
        end_of_interval = torch.full((n,), s1, dtype=_F64)
        while True:
            idx = (pos != s1).nonzero().flatten()
            if idx.numel() == 0:
                break
            rows = idx.to(x.device) if grouping.per_sample else None
            xa, ka = _take(x, rows), _take(k1, rows)
            start = pos[idx]
            remaining = (s1 - start).abs()
            lands = h[idx] >= remaining
            h_try = torch.where(lands, remaining, h[idx])
            end = torch.where(lands, end_of_interval[idx], start + direction * h_try)
            x_new, k_new, ratio = self._attempt(f, grouping, start, end, direction * h_try, xa, ka)
            accept = ratio <= 1  # NaN ratios reject
            factor = (
                _SAFETY * torch.nan_to_num(ratio, nan=math.inf) ** (-1.0 / (self.pair.low_order + 1))
            ).clamp(_MIN_FACTOR, _MAX_FACTOR)
            factor = torch.where(accept & run.after_reject[idx], factor.clamp(max=1.0), factor)
            h[idx] = h_try * factor
            pos[idx] = torch.where(accept, end, start)
            run.accepted[idx] += accept
            run.rejected[idx] += ~accept
            run.after_reject[idx] = ~accept
            stuck = ~accept & (h[idx] <= 8 * torch.finfo(_F64).eps * start.abs())
            if bool(stuck.any()):
                raise ValueError(
                    f"{self!r}: the step size underflowed at σ = {float(start[stuck][0]):.6g} while "
                    f"integrating from σ = {s0:.6g} to {s1:.6g}; f may return non-finite values there, "
                    "or the tolerances are below the state's floating-point precision"
                )
            keep = accept.to(xa.device).reshape(-1, *([1] * (xa.ndim - 1)))
            x = _put(x, rows, torch.where(keep, x_new, xa))
            k1 = _put(k1, rows, torch.where(keep, k_new, ka))
        run.h, run.k1, run.x_last = h, k1, x
        return x, run

    def _attempt(
        self, f: VectorField, grouping: Grouping, start: Tensor, end: Tensor, h: Tensor, x: Tensor, k1: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One attempted step of signed size ``h`` (per group) from σ = ``start``: the new state,
        its derivative (the FSAL stage) and the error ratios, float64 ``(groups,)`` on the host."""
        hx = grouping.broadcast(h, x)
        ks = [k1]
        xi = x
        for i in range(1, self.pair.stages):
            xi = x + hx * _combine(self._a[i], ks)
            sigma = end if self._c[i] == 1.0 else start + self._c[i] * h
            ks.append(f(grouping.sigma(sigma), xi))
        error = hx * _combine(self._e, ks)
        scale = self.atol + self.rtol * torch.maximum(x.abs(), xi.abs())
        # the one device-to-host transfer of an attempted step
        ratio = grouping.norm(error / scale).to("cpu", _F64)
        return xi, ks[-1], ratio

    def stats(self, state: Any) -> dict[str, int]:
        run: _Run = state
        return {"accepted": int(run.accepted.sum()), "rejected": int(run.rejected.sum())}

    def __repr__(self) -> str:
        extra = "" if self.max_nfe == DEFAULT_MAX_NFE else f", max_nfe={self.max_nfe}"
        extra += ", per_sample=True" if self.per_sample else ""
        return f"{type(self).__name__}(rtol={self.rtol:g}, atol={self.atol:g}{extra})"


def _combine(weights: tuple[float, ...], ks: list[Tensor]) -> Tensor:
    """Σ_j w_j k_j over the stages computed so far, skipping zero weights."""
    terms = [w * k for w, k in zip(weights[: len(ks)], ks, strict=True) if w != 0.0]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _take(x: Tensor, rows: Tensor | None) -> Tensor:
    return x if rows is None else x.index_select(0, rows)


def _put(x: Tensor, rows: Tensor | None, part: Tensor) -> Tensor:
    return part if rows is None else x.index_copy(0, rows, part)


class Bosh3(EmbeddedRungeKutta):
    """Bogacki–Shampine 3(2), adaptive. Order 3, 3 evaluations per attempted step (FSAL; 4 stages).

    The third-order solution is propagated; the embedded second-order one estimates the error.
    This is MATLAB's ``ode23`` and torchdiffeq's ``bosh3``. See :class:`EmbeddedRungeKutta` for
    the arguments; the name ``"bosh3"`` uses ``rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL``.
    """

    name = "bosh3"
    pair = BOGACKI_SHAMPINE
    order = 3
    evals_per_step = 3


class Dopri5(EmbeddedRungeKutta):
    """Dormand–Prince 5(4), adaptive. Order 5, 6 evaluations per attempted step (FSAL; 7 stages).

    The fifth-order solution is propagated (local extrapolation), the embedded fourth-order one
    estimates the error. This is the pair of MATLAB's ``ode45``, scipy's ``RK45`` and
    torchdiffeq's ``dopri5``. See :class:`EmbeddedRungeKutta` for the arguments; the name
    ``"dopri5"`` uses ``rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL``.
    """

    name = "dopri5"
    pair = DORMAND_PRINCE
    order = 5
    evals_per_step = 6


__all__ = [
    "BOGACKI_SHAMPINE",
    "DEFAULT_ATOL",
    "DEFAULT_MAX_NFE",
    "DEFAULT_RTOL",
    "DORMAND_PRINCE",
    "Bosh3",
    "Dopri5",
    "EmbeddedPair",
    "EmbeddedRungeKutta",
]
