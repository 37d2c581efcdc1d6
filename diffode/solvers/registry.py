"""Solver names: the one place where strings become solver objects.

Each name maps to a default-configured instance; ``"prefix:<method>"`` names map to a backend
constructed with that method.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from diffode.solvers.adaptive import Bosh3, Dopri5
from diffode.solvers.backends import Scipy, Torchdiffeq
from diffode.solvers.base import Euler, Solver
from diffode.solvers.controller import DEFAULT_ATOL, DEFAULT_RTOL
from diffode.solvers.ddim import DDIM
from diffode.solvers.exponential import DEIS, DPMSolverPP
from diffode.solvers.multistep import IPNDM, AdamsBashforth
from diffode.solvers.reversible import BDIA
from diffode.solvers.runge_kutta import RK4, Heun, Heun3, Midpoint, Ralston, RungeKutta
from diffode.solvers.unipc import UniPC

_FACTORIES: dict[str, Callable[[], Solver]] = {
    "euler": Euler,
    "ddim": DDIM,
    "heun": Heun,
    "midpoint": Midpoint,
    "ralston3": Ralston,
    "heun3": Heun3,
    "rk4": RK4,
    "ab2": partial(AdamsBashforth, 2),
    "ab3": partial(AdamsBashforth, 3),
    "ab4": partial(AdamsBashforth, 4),
    "dpmpp-1": partial(DPMSolverPP, 1),
    "dpmpp-2m": partial(DPMSolverPP, 2),
    "dpmpp-3m": partial(DPMSolverPP, 3),
    "dpmpp-3m-exact": partial(DPMSolverPP, 3, exact=True),
    "dpmpp-2s": partial(DPMSolverPP, 2, multistep=False),
    **{f"unipc-{v}-{p}": partial(UniPC, p, v) for v in ("bh1", "bh2") for p in UniPC.SUPPORTED_ORDERS},
    "ipndm": IPNDM,
    **{f"deis-{p}": partial(DEIS, p) for p in DEIS.SUPPORTED_ORDERS},
    **{f"deis-tab-{p}": partial(DEIS, p, basis="t", lower_order_final=False) for p in DEIS.SUPPORTED_ORDERS},
    "bdia": BDIA,
    "bdia-edm": partial(BDIA, sigma_data=0.5),
    "bosh3": partial(Bosh3, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL),
    "dopri5": partial(Dopri5, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL),
}
_PREFIXES: dict[str, Callable[[str], Solver]] = {
    "torchdiffeq": Torchdiffeq.with_default_tolerances,
    "scipy": partial(Scipy, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL),
}


def solver_names() -> list[str]:
    """Every accepted solver string, prefixed backends shown as ``"prefix:<method>"``."""
    return sorted(_FACTORIES) + [f"{p}:<method>" for p in sorted(_PREFIXES)]


def get_solver(solver: str | Solver) -> Solver:
    """Resolve a solver name (or pass a :class:`Solver` through)."""
    if isinstance(solver, Solver):
        return solver
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a name or a diffode Solver, got {type(solver).__name__}")
    if solver in _FACTORIES:
        return _FACTORIES[solver]()
    prefix, sep, method = solver.partition(":")
    if sep and prefix in _PREFIXES:
        return _PREFIXES[prefix](method)
    raise ValueError(f"unknown solver {solver!r}; known solvers: {', '.join(solver_names())}")


def without_stability_check(solver: str | Solver) -> Solver:
    """``solver`` (a name or an object) with its stability check turned off: the Runge–Kutta
    methods and :class:`~diffode.solvers.IPNDM` refuse some grids on a network's field
    (:class:`~diffode.solvers.UnstableStepError`); this one takes them, to study them. Other
    solvers have no such check: ``ValueError``."""
    solver = get_solver(solver)
    if isinstance(solver, IPNDM):
        return IPNDM(solver.max_order, check_stability=False)
    if isinstance(solver, RungeKutta):
        if type(solver).TABLEAU is None:
            return RungeKutta(solver.tableau, check_stability=False)
        return type(solver)(check_stability=False)
    raise ValueError(
        f"{solver!r} has no stability check to turn off; the Runge–Kutta solvers (heun, midpoint, rk4, ...) "
        "and ipndm have one"
    )
