"""Adaptive embedded Runge–Kutta solvers: Bogacki–Shampine 3(2) and Dormand–Prince 5(4).

An adaptive solver's ``step`` integrates a whole interval [s0, s1] of the σ grid with internal
sub-steps whose sizes an error controller chooses; intermediate grid points are output points,
and ``solve`` takes the final first-order step into σ = 0 as for every other solver.

Three parts, as in scipy's and diffrax's adaptive solvers:

- the method is a :class:`~diffode.solvers.runge_kutta.ButcherTableau` with an error row: each
  attempted step runs the shared stage loop :func:`~diffode.solvers.runge_kutta.rk_stages`,
  which returns the solution x₁ (order p) and the estimate e = x₁ - x̂₁ from the embedded
  solution (order q) at no extra cost;
- the :class:`~diffode.solvers.controller.IController` turns e into an error ratio, accepts or
  rejects the attempt and proposes the next step size (and chooses the first one);
- the solver here walks the interval, landing exactly on s1, and keeps the per-solve state.

Both tableaus here are FSAL (first same as last, declared by the tableau and checked when it is
built): the last stage of an accepted step is f at the new solution, hence the first stage of the
next, so an attempted step costs one evaluation less than the tableau has stages. The state
records where that stage was evaluated (``fsal_sigma``), and a step reuses it only when it starts
there: ``solve`` hands each step the state the previous step returned.

Step sizes, σ positions and the controller live on the host in float64 (σ is float64 everywhere
in diffode); the state stays in the caller's dtype and on its device. Deciding whether a step is
accepted needs the error norm on the host, so each *attempted* step makes exactly one
device-to-host transfer (the error ratios); nothing else synchronises.

With ``per_sample=True`` every sample has its own σ position, step size, error norm and
accept/reject decision, so no other sample's error steers its steps (torchdiffeq's and scipy's
norms couple the batch; reference §13); its result is independent of the batch where the field's
value for it is (a network's batched kernels differ in the last bits, which the controller
turns into different steps: then up to the solve's error; docs/solvers.md). The field is then called with
σ as a ``(k,)`` float64 tensor for the k samples still integrating, on those samples' rows only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from diffode.field import PredictingField, VectorField
from diffode.solvers.base import Solver
from diffode.solvers.controller import (
    DEFAULT_ATOL,
    DEFAULT_MAX_NFE,
    DEFAULT_RTOL,
    ControlState,
    Grouping,
    IController,
)
from diffode.solvers.runge_kutta import BOGACKI_SHAMPINE, DORMAND_PRINCE, ButcherTableau, rk_stages
from diffode.validation import require_bool, require_int

_F64 = torch.float64

EmbeddedPair = ButcherTableau
"""An embedded pair is a :class:`~diffode.solvers.runge_kutta.ButcherTableau` with an error row
(``b_low``, ``low_order``); the former name of that type."""


@dataclass
class _Run:
    """Per-solve state of an embedded Runge–Kutta solver."""

    grouping: Grouping
    control: ControlState
    k1: Tensor | None = field(default=None, repr=False)
    """The last stage of the last accepted step: f(fsal_sigma, x) for the x that step returned."""
    fsal_sigma: float | None = None
    """Where ``k1`` was evaluated (the end of the last step), or ``None`` when there is none."""


class EmbeddedRungeKutta(Solver):
    """Base of the adaptive embedded Runge–Kutta solvers; subclasses set :attr:`tableau` (an FSAL
    tableau with an error row) and the matching ``order`` and ``evals_per_step``.

    Args (keyword only):
        rtol, atol: relative and absolute tolerances, finite and > 0, required (no silent
            defaults; the solver names use :data:`DEFAULT_RTOL` and :data:`DEFAULT_ATOL`).
            Tolerances below about 1e-6 need a float64 state.
        max_nfe: evaluation budget for the whole solve (all intervals of the grid, including the
            two evaluations that choose the first step), enforced by :func:`diffode.solve`.
            Reaching it raises ``ValueError``.
        per_sample: ``False`` (default) controls one step size with the error norm over the whole
            batch; ``True`` gives every sample its own step size and accept/reject decision, so no
            other sample's error steers its steps (up to a network's batch-dependent round-off,
            see above). ``f`` must then accept σ as a
            ``(k,)`` float64 tensor (diffode's fields and oracles do).

    ``Solution.stats`` reports ``accepted`` and ``rejected`` steps (summed over samples when
    ``per_sample=True``).

    Gradients: a rejected attempt contributes nothing to them (its stages may have gone where the
    field's derivative is not finite). With ``per_sample=True`` an attempt accepted for some rows
    and rejected for others is one network call: the rejected rows pass no gradient to the state,
    but the network's parameters are differentiated through that whole call.
    """

    tableau: ClassVar[ButcherTableau]
    adaptive = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        tab = cls.__dict__.get("tableau")
        # the step loop needs the error row and reuses the last stage: refuse a tableau without them
        if tab is not None and (tab.low_order is None or not tab.fsal):
            raise TypeError(
                f"{cls.__name__}.tableau must have an error row (b_low, low_order) and be FSAL, "
                f"got {tab.name or 'a tableau'!r} with low_order={tab.low_order}, fsal={tab.fsal}"
            )

    def __init__(
        self, *, rtol: float, atol: float, max_nfe: int = DEFAULT_MAX_NFE, per_sample: bool = False
    ) -> None:
        low_order = self.tableau.low_order
        assert low_order is not None  # checked when the subclass was defined
        self.controller = IController(rtol=rtol, atol=atol, error_order=low_order)
        self.max_nfe = require_int("max_nfe", max_nfe, low=1)
        self.per_sample = require_bool("per_sample", per_sample)

    @property
    def rtol(self) -> float:
        return self.controller.rtol

    @property
    def atol(self) -> float:
        return self.controller.atol

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> _Run:
        grouping = Grouping(self.per_sample)
        return _Run(grouping=grouping, control=ControlState.start(grouping.groups(x)))

    def step(self, f: PredictingField, s0: float, s1: float, x: Tensor, state: _Run) -> tuple[Tensor, _Run]:
        run, grouping, control = state, state.grouping, state.control
        n = grouping.groups(x)
        # FSAL reuse, signalled by where the cached stage was evaluated: solve hands each step the x
        # the previous one returned, so f(fsal_sigma, that x) is this step's first stage exactly
        # when the step starts at fsal_sigma
        k1 = run.k1 if run.fsal_sigma == s0 else None
        if k1 is None:
            k1 = f(grouping.sigma(torch.full((n,), s0, dtype=_F64)), x)
        if control.h is None:
            control.h = self.controller.first_step(f, s0, s1, x, k1, grouping)
        h = control.h  # the controller updates it in place
        direction = math.copysign(1.0, s1 - s0)
        pos = torch.full((n,), s0, dtype=_F64)
        while True:
            idx = (pos != s1).nonzero().flatten()
            if idx.numel() == 0:
                break
            rows = idx.to(x.device) if grouping.per_sample and idx.numel() < n else None
            xa, ka = _take(x, rows), _take(k1, rows)
            # the samples still integrating, with their own conditioning
            f_rows = f if rows is None else f.rows(rows)
            start = pos[idx]
            # a step that would reach or pass s1 lands on it exactly, so the interval ends on its
            # grid point and f is never evaluated beyond it
            end = torch.where(
                h[idx] >= (s1 - start).abs(), torch.full_like(start, s1), start + direction * h[idx]
            )
            # with a graph, the attempt reads its own copies of the state and first stage, whose
            # gradients a rejection can cut off (see below)
            track = torch.is_grad_enabled() and (xa.requires_grad or ka.requires_grad)
            x_in, k_in = (xa.clone(), ka.clone()) if track else (xa, ka)
            attempt = rk_stages(
                f_rows, self.tableau, start, end, x_in, k_in, sigma_of=grouping.sigma, estimate_error=True
            )
            assert attempt.error is not None
            ratio = self.controller.error_ratio(grouping, attempt.error, xa, attempt.x)
            accept = self.controller.decide(control, idx, ratio, (end - start).abs())
            pos[idx] = torch.where(accept, end, start)
            stuck = ~accept & self.controller.underflowed(h[idx], start)
            if bool(stuck.any()):
                raise ValueError(
                    f"{self!r}: the step size underflowed at σ = {float(start[stuck][0]):.6g} while "
                    f"integrating from σ = {s0:.6g} to {s1:.6g}; f may return non-finite values there, "
                    "or the tolerances are below the state's floating-point precision"
                )
            keep = accept.to(xa.device).reshape(-1, *([1] * (xa.ndim - 1)))
            if attempt.x.requires_grad:
                # A rejected attempt must stay out of the gradient: its stages may have gone where
                # the field's derivative is not finite, and 0 · NaN is NaN. Whole rejections are
                # left out of the graph (this reads accept on the host, with a graph only), and the
                # rejected rows of a mixed attempt pass no gradient to the state they started from;
                # parameters shared by those rows' network call still see them.
                if not bool(accept.any()):
                    continue
                if track:
                    for node in (x_in, k_in):
                        node.register_hook(lambda g, keep=keep: torch.where(keep, g, torch.zeros_like(g)))
            x = _put(x, rows, torch.where(keep, attempt.x, xa))
            # FSAL: an accepted step's last stage is f at its end point and new state
            k1 = _put(k1, rows, torch.where(keep, attempt.k[-1], ka))
        run.k1, run.fsal_sigma = k1, s1
        return x, run

    def stats(self, state: Any) -> dict[str, int]:
        control: ControlState = state.control
        return {"accepted": int(control.accepted.sum()), "rejected": int(control.rejected.sum())}

    def __repr__(self) -> str:
        extra = "" if self.max_nfe == DEFAULT_MAX_NFE else f", max_nfe={self.max_nfe}"
        extra += ", per_sample=True" if self.per_sample else ""
        return f"{type(self).__name__}(rtol={self.rtol:g}, atol={self.atol:g}{extra})"


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
    tableau = BOGACKI_SHAMPINE
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
    tableau = DORMAND_PRINCE
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
