"""External ODE solvers as diffode solvers: torchdiffeq's ``odeint`` and scipy's ``solve_ivp``.

Both integrate each interval [s0, s1] of the σ grid with their own step control and report
through the same ``solve`` loop (which counts NFE and takes the final step into σ = 0). Both
share the evaluation budget (``max_nfe``) of :mod:`diffode.solvers.adaptive`, and both control a
single step size with the error norm over the whole batch (reference §13); use
``Dopri5(per_sample=True)`` for per-sample step control.

The packages are imported on first use: torchdiffeq (which pulls in scipy.integrate) adds about a
second to ``import diffode``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffode.field import Sigma, VectorField
from diffode.solvers.adaptive import (
    DEFAULT_ATOL,
    DEFAULT_MAX_NFE,
    DEFAULT_RTOL,
    Budget,
    Grouping,
    check_tolerances,
    initial_step,
)
from diffode.solvers.base import Solver
from diffode.validation import require_int

_BATCH = Grouping(per_sample=False)

# evaluations per step of the torchdiffeq fixed-grid methods offered; the Adams methods restart on
# every interval (one odeint call each), where they take their RK4 (3/8 rule) start-up step
_TORCHDIFFEQ_FIXED_EVALS = {
    "euler": 1,
    "midpoint": 2,
    "heun2": 2,
    "heun3": 3,
    "rk4": 4,
    "explicit_adams": 4,
    "implicit_adams": 4,
    "fixed_adams": 4,
}


@dataclass
class _BackendRun:
    """Per-solve state of a backend: the budget, step counters and the step size to start with."""

    budget: Budget
    accepted: int = 0
    rejected: int = 0
    njev: int = 0
    nlu: int = 0
    first_step: Any = None


def _torchdiffeq_solvers() -> tuple[dict[str, Any], type]:
    """torchdiffeq's method table and the base class of its adaptive Runge–Kutta methods (neither
    is public API; both exist since torchdiffeq 0.2)."""
    from torchdiffeq._impl.odeint import SOLVERS
    from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver

    return SOLVERS, RKAdaptiveStepsizeODESolver


class _Backend(Solver):
    """What the torchdiffeq and scipy backends share: one evaluation budget per solve."""

    max_nfe: int

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> _BackendRun:
        return _BackendRun(Budget(self.max_nfe, repr(self)))

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
        max_nfe: evaluation budget of the whole solve; reaching it raises ``ValueError``.

    The field is handed to ``odeint`` as is (its signature ``f(t, y)`` is diffode's ``f(σ, x)``),
    with ``t = [s0, s1]`` in float64; torchdiffeq casts σ to the state's dtype before calling it.

    Adaptive methods integrate each grid interval, clipping their steps at s1 (``step_t``) so that
    ``f`` is never evaluated beyond it (torchdiffeq otherwise steps past the end and interpolates
    back, which near σ = 0 would evaluate the network at σ < 0). The first step size comes from
    :func:`~diffode.solvers.adaptive.initial_step` (one extra evaluation per solve), later
    intervals start with the last accepted step. ``Solution.stats`` reports the accepted and
    rejected steps from torchdiffeq's step callbacks.

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
        solvers, adaptive_base = _torchdiffeq_solvers()
        offered = sorted(
            m for m, cls in solvers.items() if issubclass(cls, adaptive_base) or m in _TORCHDIFFEQ_FIXED_EVALS
        )
        if method not in offered:
            raise ValueError(
                f"unknown torchdiffeq method {method!r}; choose one of {', '.join(offered)} "
                "(for scipy's solvers use 'scipy:<method>')"
            )
        self.method = method
        self.max_nfe = require_int("max_nfe", max_nfe, low=1)
        cls = solvers[method]
        self.adaptive = issubclass(cls, adaptive_base)
        self.order = int(cls.order)
        if self.adaptive:
            if rtol is None or atol is None:
                raise ValueError(
                    f"torchdiffeq method {method!r} is adaptive and needs explicit tolerances: pass rtol= "
                    "and atol= (the name 'torchdiffeq:<method>' uses diffode's DEFAULT_RTOL and DEFAULT_ATOL)"
                )
            self.tolerances: tuple[float, float] | None = check_tolerances(rtol, atol)
            self.evals_per_step = len(cls.tableau.alpha)
        else:
            if rtol is not None or atol is not None:
                raise ValueError(
                    f"torchdiffeq method {method!r} takes fixed steps on the σ grid and uses no tolerances; "
                    "omit rtol and atol"
                )
            self.tolerances = None
            self.evals_per_step = _TORCHDIFFEQ_FIXED_EVALS[method]
        self._callbacks = cls.valid_callbacks()

    @classmethod
    def with_default_tolerances(cls, method: str) -> Torchdiffeq:
        """The solver behind the name ``"torchdiffeq:<method>"``: adaptive methods get
        ``DEFAULT_RTOL``/``DEFAULT_ATOL``, fixed-grid methods no tolerances."""
        solvers, adaptive_base = _torchdiffeq_solvers()
        if method in solvers and issubclass(solvers[method], adaptive_base):
            return cls(method, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL)
        return cls(method)

    def step(
        self, f: VectorField, s0: float, s1: float, x: Tensor, state: _BackendRun
    ) -> tuple[Tensor, _BackendRun]:
        from torchdiffeq import odeint

        run = state
        field = _OdeintField(run.budget.wrap(f), run, self._callbacks)
        t = torch.tensor([s0, s1], dtype=torch.float64, device=x.device)
        kwargs: dict[str, Any] = {"method": self.method}
        if self.tolerances is not None:
            rtol, atol = self.tolerances
            if run.first_step is None:
                f0 = field(s0, x)
                run.first_step = initial_step(
                    field, s0, s1, x, f0, error_order=self.order - 1, rtol=rtol, atol=atol, grouping=_BATCH
                )[0]
            first = torch.as_tensor(run.first_step, dtype=torch.float64).clamp(max=abs(s1 - s0))
            step_t = torch.tensor([s1], dtype=torch.float64, device=x.device)
            kwargs.update(rtol=rtol, atol=atol, options={"first_step": first, "step_t": step_t})
        try:
            out = odeint(field, x, t, **kwargs)
        except AssertionError as err:
            # torchdiffeq reports step-size underflow and non-finite states with assert
            raise ValueError(f"{self!r} failed between σ = {s0:.6g} and σ = {s1:.6g}: {err}") from err
        return out[-1], run

    def stats(self, state: Any) -> dict[str, int]:
        run: _BackendRun = state
        return {"accepted": run.accepted, "rejected": run.rejected}

    def __repr__(self) -> str:
        tol = self.tolerances
        tolerances = "" if tol is None else f", rtol={tol[0]:g}, atol={tol[1]:g}"
        return f"Torchdiffeq({self.method!r}{tolerances}{self._budget_repr()})"


class _OdeintField:
    """The field as ``odeint`` sees it, carrying the step callbacks torchdiffeq offers for the
    method (only those: torchdiffeq warns about any other)."""

    def __init__(self, f: VectorField, run: _BackendRun, callbacks: set[str]) -> None:
        self.f = f
        self.run = run
        if "callback_accept_step" in callbacks:
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
        max_nfe: evaluation budget of the whole solve; reaching it raises ``ValueError``.

    Every evaluation goes through :class:`NumpyBridge` (the state as a flat float64 numpy vector,
    moved to the host), so gradients do not flow through this solver and it suits small states
    on the CPU; the result returns in the state's dtype and device. A failed integration raises
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

    def step(
        self, f: VectorField, s0: float, s1: float, x: Tensor, state: _BackendRun
    ) -> tuple[Tensor, _BackendRun]:
        from scipy.integrate import solve_ivp

        run = state
        bridge = NumpyBridge(x)
        g = run.budget.wrap(f)

        def fun(t: float, y: np.ndarray) -> np.ndarray:
            return bridge.to_numpy(g(float(t), bridge.to_torch(y)))

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
            raise ValueError(f"{self!r} failed between σ = {s0:.6g} and σ = {s1:.6g}: {sol.message}")
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


__all__ = ["SCIPY_METHODS", "NumpyBridge", "Scipy", "Torchdiffeq"]
