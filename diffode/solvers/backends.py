"""External ODE solvers as diffode solvers: torchdiffeq's ``odeint`` and scipy's ``solve_ivp``.

Both integrate each interval [s0, s1] of the σ grid with their own step control and report
through the same ``solve`` loop (which counts NFE, enforces the evaluation budget ``max_nfe``
and takes the final step into σ = 0). Both control a single step size with the error norm over
the whole batch (reference §13); use ``Dopri5(per_sample=True)`` for per-sample step control.

Only the packages' public APIs are used: torchdiffeq's ``odeint`` with its documented options
(``first_step``, ``step_t``) and step callbacks, scipy's ``solve_ivp``. The facts diffode
declares for each method (order, evaluations per step, adaptive or not) are tables here.

The packages are imported on first use: torchdiffeq (which pulls in scipy.integrate) adds about a
second to ``import diffode``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from diffode.field import Sigma, VectorField
from diffode.solvers.base import Solver
from diffode.solvers.controller import (
    DEFAULT_ATOL,
    DEFAULT_MAX_NFE,
    DEFAULT_RTOL,
    Grouping,
    IController,
    check_tolerances,
)
from diffode.validation import require_int

_BATCH = Grouping(per_sample=False)


class TorchdiffeqMethod(NamedTuple):
    """What diffode declares about one of torchdiffeq's methods."""

    order: int
    evals_per_step: int
    """Evaluations per (attempted) step. torchdiffeq's adaptive Runge–Kutta methods reuse a step's
    last stage as the next step's first, so they spend one less than their stages."""
    adaptive: bool


TORCHDIFFEQ_METHODS: dict[str, TorchdiffeqMethod] = {
    "dopri8": TorchdiffeqMethod(8, 13, True),
    "dopri5": TorchdiffeqMethod(5, 6, True),
    "bosh3": TorchdiffeqMethod(3, 3, True),
    "fehlberg2": TorchdiffeqMethod(2, 2, True),
    "adaptive_heun": TorchdiffeqMethod(2, 1, True),
    "euler": TorchdiffeqMethod(1, 1, False),
    "midpoint": TorchdiffeqMethod(2, 2, False),
    "heun2": TorchdiffeqMethod(2, 2, False),
    "heun3": TorchdiffeqMethod(3, 3, False),
    "rk4": TorchdiffeqMethod(4, 4, False),
    # the Adams methods restart on every interval (one odeint call each), where they take their
    # RK4 (3/8 rule) start-up step: 4 evaluations; torchdiffeq declares them order 4
    "explicit_adams": TorchdiffeqMethod(4, 4, False),
    "implicit_adams": TorchdiffeqMethod(4, 4, False),
    "fixed_adams": TorchdiffeqMethod(4, 4, False),
}
"""The methods of torchdiffeq's ``odeint`` offered (its README's list, with the fixed-grid
``heun2``, ``heun3`` and ``fixed_adams`` that ``odeint`` accepts too); ``scipy_solver`` is left out:
use :class:`Scipy`."""


@dataclass
class _BackendRun:
    """Per-solve state of a backend: step counters and the step size to start with."""

    accepted: int = 0
    rejected: int = 0
    njev: int = 0
    nlu: int = 0
    first_step: Any = None


class _Backend(Solver):
    """What the torchdiffeq and scipy backends share: per-solve counters, the budget in ``repr``."""

    max_nfe: int

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> _BackendRun:
        return _BackendRun()

    def _budget_repr(self) -> str:
        return "" if self.max_nfe == DEFAULT_MAX_NFE else f", max_nfe={self.max_nfe}"


class Torchdiffeq(_Backend):
    """torchdiffeq's ``odeint`` with any of its methods; order and evaluations per step are the method's.

    Args:
        method: a torchdiffeq method name, e.g. ``"dopri5"``, ``"bosh3"``, ``"dopri8"``,
            ``"adaptive_heun"``, ``"fehlberg2"`` (adaptive) or ``"rk4"``, ``"euler"``,
            ``"midpoint"``, ``"heun3"`` (fixed grid). ``"scipy_solver"`` is not offered: use
            :class:`Scipy`.
        rtol, atol: tolerances, required for adaptive methods (no silent defaults; the name
            ``"torchdiffeq:<method>"`` uses ``DEFAULT_RTOL``/``DEFAULT_ATOL``); fixed-grid methods
            take none.
        max_nfe: evaluation budget of the whole solve, enforced by :func:`diffode.solve`;
            reaching it raises ``ValueError``.

    Order, evaluations per step and whether the method is adaptive come from
    :data:`TORCHDIFFEQ_METHODS`.

    The field is handed to ``odeint`` as is (its signature ``f(t, y)`` is diffode's ``f(σ, x)``),
    with ``t = [s0, s1]`` in float64; torchdiffeq casts σ to the state's dtype before calling it.

    Adaptive methods integrate each grid interval, clipping their steps at s1 (``step_t``) so that
    ``f`` is never evaluated beyond it (torchdiffeq otherwise steps past the end and interpolates
    back, which near σ = 0 would evaluate the network at σ < 0). The first step size comes from
    :func:`~diffode.solvers.controller.initial_step` (two extra evaluations per solve: f at s0 for
    it, which ``odeint`` evaluates again, and its probe), later
    intervals start with the last accepted step. ``Solution.stats`` reports the accepted and
    rejected steps from torchdiffeq's documented step callbacks (``callback_accept_step`` and
    ``callback_reject_step`` for adaptive methods, ``callback_step`` for fixed-grid ones).

    Fixed-grid methods (``adaptive`` is False) take one step of the method per grid interval, like
    diffode's own fixed-step solvers; note that torchdiffeq's ``rk4`` is the 3/8 rule, and that its
    Adams methods restart on every interval, so they reduce to their RK4 start-up step (use
    :class:`~diffode.solvers.AdamsBashforth` for a multistep method).
    """

    name = "torchdiffeq"

    def __init__(
        self,
        method: str,
        *,
        rtol: float | None = None,
        atol: float | None = None,
        max_nfe: int = DEFAULT_MAX_NFE,
    ) -> None:
        if method not in TORCHDIFFEQ_METHODS:
            offered = ", ".join(sorted(TORCHDIFFEQ_METHODS))
            raise ValueError(
                f"unknown torchdiffeq method {method!r}; choose one of {offered} "
                "(for scipy's solvers use 'scipy:<method>')"
            )
        self.method = method
        self.max_nfe = require_int("max_nfe", max_nfe, low=1)
        facts = TORCHDIFFEQ_METHODS[method]
        self.order, self.evals_per_step, self.adaptive = facts
        self.controller: IController | None = None
        if self.adaptive:
            if rtol is None or atol is None:
                raise ValueError(
                    f"torchdiffeq method {method!r} is adaptive and needs explicit tolerances: pass rtol= "
                    "and atol= (the name 'torchdiffeq:<method>' uses diffode's DEFAULT_RTOL and DEFAULT_ATOL)"
                )
            # only for the first step: odeint controls the steps after it; its error estimate is
            # of order p - 1 for every adaptive method offered
            self.controller = IController(rtol=rtol, atol=atol, error_order=self.order - 1)
        elif rtol is not None or atol is not None:
            raise ValueError(
                f"torchdiffeq method {method!r} takes fixed steps on the σ grid and uses no tolerances; "
                "omit rtol and atol"
            )

    @property
    def tolerances(self) -> tuple[float, float] | None:
        """(rtol, atol) of an adaptive method, ``None`` for a fixed-grid one."""
        return None if self.controller is None else (self.controller.rtol, self.controller.atol)

    @classmethod
    def with_default_tolerances(cls, method: str) -> Torchdiffeq:
        """The solver behind the name ``"torchdiffeq:<method>"``: adaptive methods get
        ``DEFAULT_RTOL``/``DEFAULT_ATOL``, fixed-grid methods no tolerances."""
        facts = TORCHDIFFEQ_METHODS.get(method)
        if facts is not None and facts.adaptive:
            return cls(method, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL)
        return cls(method)

    def step(
        self, f: VectorField, s0: float, s1: float, x: Tensor, state: _BackendRun
    ) -> tuple[Tensor, _BackendRun]:
        from torchdiffeq import odeint

        run = state
        field = _OdeintField(f, run, self.adaptive)
        t = torch.tensor([s0, s1], dtype=torch.float64, device=x.device)
        # torchdiffeq computes in the state's dtype, its times included: float16 rounded σ (to 0
        # at the end of a grid), so narrower states are integrated in float32
        y0 = x.to(torch.promote_types(x.dtype, torch.float32))
        kwargs: dict[str, Any] = {"method": self.method}
        control = self.controller
        if control is not None:
            if run.first_step is None:
                run.first_step = control.first_step(field, s0, s1, y0, field(s0, y0), _BATCH)[0]
            first = torch.as_tensor(run.first_step, dtype=torch.float64).clamp(max=abs(s1 - s0))
            step_t = torch.tensor([s1], dtype=torch.float64, device=x.device)
            options = {"first_step": first, "step_t": step_t}
            kwargs.update(rtol=control.rtol, atol=control.atol, options=options)
        try:
            out = odeint(field, y0, t, **kwargs)
        except AssertionError as err:
            # torchdiffeq reports step-size underflow and non-finite states with assert
            raise ValueError(f"{self!r} failed between σ = {s0:.6g} and σ = {s1:.6g}: {err}") from err
        return out[-1].to(x.dtype), run

    def stats(self, state: Any) -> dict[str, int]:
        run: _BackendRun = state
        return {"accepted": run.accepted, "rejected": run.rejected}

    def __repr__(self) -> str:
        tol = self.tolerances
        tolerances = "" if tol is None else f", rtol={tol[0]:g}, atol={tol[1]:g}"
        return f"Torchdiffeq({self.method!r}{tolerances}{self._budget_repr()})"


class _OdeintField:
    """The field as ``odeint`` sees it, carrying the step callbacks torchdiffeq documents for the
    kind of method: accept/reject for the adaptive ones, ``callback_step`` for the fixed-grid ones
    (only those: torchdiffeq warns about a callback the method does not support)."""

    def __init__(self, f: VectorField, run: _BackendRun, adaptive: bool) -> None:
        self.f = f
        self.run = run
        if adaptive:
            self.callback_accept_step = self._accept
            self.callback_reject_step = self._reject
        else:
            self.callback_step = self._fixed_step

    def __call__(self, t: Sigma, y: Tensor) -> Tensor:
        return self.f(t, y)

    def _accept(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.run.accepted += 1
        self.run.first_step = dt.detach().abs()

    def _reject(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.run.rejected += 1

    def _fixed_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.run.accepted += 1


SCIPY_METHODS: dict[str, tuple[int, int]] = {
    "RK23": (3, 3),
    "RK45": (5, 6),
    "DOP853": (8, 12),
    "Radau": (5, 1),
    "BDF": (5, 1),
    "LSODA": (12, 1),
}
"""scipy ``solve_ivp`` methods: (order, evaluations per attempted step). Radau, BDF and LSODA are
implicit or variable-order: their order is the highest they use, and their evaluations per
step vary (Newton iterations and finite-difference Jacobians, one evaluation per state element)."""


class NumpyBridge:
    """The one conversion between a torch state and scipy's flat float64 numpy vector."""

    def __init__(self, like: Tensor) -> None:
        self.shape, self.dtype, self.device = like.shape, like.dtype, like.device

    def to_numpy(self, x: Tensor) -> np.ndarray:
        return x.detach().to("cpu", torch.float64).numpy().ravel()

    def to_torch(self, y: np.ndarray) -> Tensor:
        return (
            torch.from_numpy(np.ascontiguousarray(y, dtype=np.float64))
            .reshape(self.shape)
            .to(self.device, self.dtype)
        )


class Scipy(_Backend):
    """scipy's ``solve_ivp`` with one of its methods; order and evaluations per step are the method's
    (see :data:`SCIPY_METHODS`).

    Args:
        method: ``"RK23"``, ``"RK45"``, ``"DOP853"``, ``"Radau"``, ``"BDF"`` or ``"LSODA"``.
        rtol, atol: tolerances, required (the name ``"scipy:<method>"`` uses ``DEFAULT_RTOL`` and
            ``DEFAULT_ATOL``).
        max_nfe: evaluation budget of the whole solve, enforced by :func:`diffode.solve`;
            reaching it raises ``ValueError``.

    Every evaluation goes through :class:`NumpyBridge` (the state as a flat float64 numpy vector,
    moved to the host), so gradients do not flow through this solver and it suits small states
    on the CPU; the result returns in the state's dtype and device. An ``x`` that requires grad
    is refused, but a field's trainable parameters cannot be told from the ones of a network
    merely sampled from: the result requires no grad even where they do, and ``backward()``
    through it fails; use a torch solver (dopri5, bosh3, heun, ...) for gradients. A failed integration raises
    ``ValueError`` with scipy's message. ``Solution.stats`` reports ``accepted`` steps and scipy's
    ``njev`` and ``nlu``; solve_ivp does not report rejected steps.
    """

    name = "scipy"
    adaptive = True

    def __init__(self, method: str, *, rtol: float, atol: float, max_nfe: int = DEFAULT_MAX_NFE) -> None:
        if method not in SCIPY_METHODS:
            raise ValueError(f"unknown scipy method {method!r}; choose one of {', '.join(SCIPY_METHODS)}")
        self.method = method
        self.order, self.evals_per_step = SCIPY_METHODS[method]
        self.rtol, self.atol = check_tolerances(rtol, atol)
        self.max_nfe = require_int("max_nfe", max_nfe, low=1)

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> _BackendRun:
        if x.requires_grad and torch.is_grad_enabled():
            # the result would be detached in silence and backward() fail far from here
            raise ValueError(
                f"{self!r} integrates in numpy, so no gradient flows through it, but x requires grad; "
                "use a torch solver (dopri5, bosh3, heun, ...) for gradients, or pass x.detach()"
            )
        return super().init(f, sigmas, x, generator)

    def step(
        self, f: VectorField, s0: float, s1: float, x: Tensor, state: _BackendRun
    ) -> tuple[Tensor, _BackendRun]:
        from scipy.integrate import solve_ivp

        run = state
        bridge = NumpyBridge(x)

        failed = f"{self!r} failed between σ = {s0:.6g} and σ = {s1:.6g}"

        def fun(t: float, y: np.ndarray) -> np.ndarray:
            value = bridge.to_numpy(f(float(t), bridge.to_torch(y)))
            # scipy meets a non-finite value in its own words ("array must not contain infs or
            # NaNs"), or not at all (LSODA finished an interval on a NaN state with status 0)
            if not np.isfinite(value).all():
                raise ValueError(
                    f"{failed}: the field returned a non-finite value at σ = {t:.6g}; check that the "
                    "model returns finite values there"
                )
            return value

        first = None if run.first_step is None else min(run.first_step, abs(s1 - s0))
        sol = solve_ivp(
            fun,
            (s0, s1),
            bridge.to_numpy(x),
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            first_step=first,
        )
        if sol.status != 0:
            raise ValueError(f"{failed}: {sol.message}")
        if not np.isfinite(sol.y[:, -1]).all():
            raise ValueError(f"{failed}: the state became non-finite")
        steps = len(sol.t) - 1
        run.accepted += steps
        if steps:
            run.first_step = abs(float(sol.t[-1] - sol.t[-2]))
        run.njev += int(sol.njev)
        run.nlu += int(sol.nlu)
        return bridge.to_torch(sol.y[:, -1]), run

    def stats(self, state: Any) -> dict[str, int]:
        run: _BackendRun = state
        return {"accepted": run.accepted, "njev": run.njev, "nlu": run.nlu}

    def __repr__(self) -> str:
        return f"Scipy({self.method!r}, rtol={self.rtol:g}, atol={self.atol:g}{self._budget_repr()})"


__all__ = ["SCIPY_METHODS", "TORCHDIFFEQ_METHODS", "NumpyBridge", "Scipy", "Torchdiffeq", "TorchdiffeqMethod"]
