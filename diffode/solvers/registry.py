"""Solver names: the one place where strings become solver objects.

Each name maps to a default-configured instance; ``"prefix:<method>"`` names map to a backend
constructed with that method.
"""

from __future__ import annotations

from collections.abc import Callable

from diffode.solvers.base import Euler, Solver
from diffode.solvers.ddim import DDIM

_FACTORIES: dict[str, Callable[[], Solver]] = {
    "euler": Euler,
    "ddim": DDIM,
}
_PREFIXES: dict[str, Callable[[str], Solver]] = {}


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
