"""Explicit Runge–Kutta methods as data: a Butcher tableau drives one generic stepper.

A method with s stages advances x from σ₀ to σ₁ = σ₀ + h as

    k_i = f(σ₀ + c_i h, x + h Σ_{j<i} a_ij k_j),   i = 1 … s
    x₁  = x + h Σ_i b_i k_i

so every method below is a :class:`ButcherTableau` plus a name. Stages sit between σ₀ and σ₁
(0 ≤ c_i ≤ 1 for the methods here), and the solve loop never hands a step ending at σ = 0 to a
stepper, so no stage evaluates the field at σ = 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from diffode.field import VectorField
from diffode.solvers.base import Solver

# Coefficients are written as decimal fractions (1/6 is not exact in binary), so consistency
# is checked to a few ulps of the sums involved, not exactly.
_TOL = 1e-12


def _dot(u: Sequence[float], v: Sequence[float]) -> float:
    return math.fsum(p * q for p, q in zip(u, v, strict=True))


def _matvec(a: Sequence[Sequence[float]], v: Sequence[float]) -> list[float]:
    return [_dot(row, v) for row in a]


@dataclass(frozen=True)
class ButcherTableau:
    """The coefficients of an explicit Runge–Kutta method; checks itself when built.

    Attributes:
        a: the s × s stage matrix as s rows of s numbers, strictly lower triangular (explicit).
        b: the s output weights, summing to 1.
        c: the s stage nodes, each the sum of its row of ``a`` (so ``c[0] = 0``).
        order: the order of accuracy the method claims; the classical order conditions (the
            rooted trees up to order 4: Σb = 1, Σbc = 1/2, Σbc² = 1/3, Σb(Ac) = 1/6,
            Σbc³ = 1/4, Σbc(Ac) = 1/8, Σb(Ac²) = 1/12, Σb(A²c) = 1/24) are verified up to
            ``min(order, 4)``.
        name: a label for messages and ``repr``.

    Raises ``ValueError`` naming the first inconsistency: shapes that disagree, a non-finite
    coefficient, a non-zero entry on or above the diagonal of ``a``, a row sum of ``a`` that
    differs from its ``c``, weights that do not sum to 1, or an order condition that fails.
    """

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int
    name: str = ""

    def __post_init__(self) -> None:
        label = f"tableau {self.name!r}" if self.name else "tableau"
        try:
            a = tuple(tuple(float(v) for v in row) for row in self.a)
            b = tuple(float(v) for v in self.b)
            c = tuple(float(v) for v in self.c)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{label}: a, b and c must hold real numbers ({err})") from None
        # the dataclass is frozen; normalising the caller's sequences to float tuples happens once, here
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "c", c)
        s = len(b)
        if s == 0:
            raise ValueError(f"{label}: b must hold at least one weight")
        if len(c) != s or len(a) != s or any(len(row) != s for row in a):
            raise ValueError(
                f"{label}: shapes disagree: b has {s} entries, c has {len(c)}, a has rows of lengths "
                f"{[len(row) for row in a]}; a must be {s} × {s}"
            )
        if not all(math.isfinite(v) for v in (*b, *c, *(v for row in a for v in row))):
            raise ValueError(f"{label}: coefficients must be finite")
        if any(not 0.0 <= v <= 1.0 for v in c):
            raise ValueError(
                f"{label}: every node c_i must lie in [0, 1], got c = {list(c)}; a node outside the "
                "step would evaluate the field beyond its end (below σ = 0 on the last step)"
            )
        for i, row in enumerate(a):
            if any(v != 0.0 for v in row[i:]):
                raise ValueError(
                    f"{label}: a must be strictly lower triangular for an explicit method, but row {i} "
                    f"is {list(row)}"
                )
            if abs(math.fsum(row) - c[i]) > _TOL:
                raise ValueError(
                    f"{label}: row {i} of a sums to {math.fsum(row)!r} but c[{i}] = {c[i]!r}; "
                    "each c_i must equal the sum of row i of a"
                )
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"{label}: order must be an int >= 1, got {self.order!r}")
        for tree, (value, target) in self._order_conditions().items():
            if abs(value - target) > _TOL:
                raise ValueError(
                    f"{label} claims order {self.order} but its order condition {tree} gives "
                    f"{value!r} instead of {target!r}"
                )

    def _order_conditions(self) -> dict[str, tuple[float, float]]:
        """The order conditions up to ``min(order, 4)`` as {tree: (value, required value)}."""
        a, b, c = self.a, self.b, self.c
        c2 = [v * v for v in c]
        ac = _matvec(a, c)
        conditions = {"sum(b) = 1": (math.fsum(b), 1.0)}
        if self.order >= 2:
            conditions["b·c = 1/2"] = (_dot(b, c), 1 / 2)
        if self.order >= 3:
            conditions["b·c² = 1/3"] = (_dot(b, c2), 1 / 3)
            conditions["b·(a c) = 1/6"] = (_dot(b, ac), 1 / 6)
        if self.order >= 4:
            conditions["b·c³ = 1/4"] = (_dot(b, [v * w for v, w in zip(c2, c, strict=True)]), 1 / 4)
            conditions["b·(c ∘ a c) = 1/8"] = (_dot(b, [v * w for v, w in zip(c, ac, strict=True)]), 1 / 8)
            conditions["b·(a c²) = 1/12"] = (_dot(b, _matvec(a, c2)), 1 / 12)
            conditions["b·(a a c) = 1/24"] = (_dot(b, _matvec(a, ac)), 1 / 24)
        return conditions

    @property
    def stages(self) -> int:
        """The number of stages s, i.e. field evaluations per step."""
        return len(self.b)


HEUN_TABLEAU = ButcherTableau(a=((0, 0), (1, 0)), b=(1 / 2, 1 / 2), c=(0, 1), order=2, name="heun")
MIDPOINT_TABLEAU = ButcherTableau(a=((0, 0), (1 / 2, 0)), b=(0, 1), c=(0, 1 / 2), order=2, name="midpoint")
RALSTON3_TABLEAU = ButcherTableau(
    a=((0, 0, 0), (1 / 2, 0, 0), (0, 3 / 4, 0)),
    b=(2 / 9, 1 / 3, 4 / 9),
    c=(0, 1 / 2, 3 / 4),
    order=3,
    name="ralston3",
)
HEUN3_TABLEAU = ButcherTableau(
    a=((0, 0, 0), (1 / 3, 0, 0), (0, 2 / 3, 0)),
    b=(1 / 4, 0, 3 / 4),
    c=(0, 1 / 3, 2 / 3),
    order=3,
    name="heun3",
)
RK4_TABLEAU = ButcherTableau(
    a=((0, 0, 0, 0), (1 / 2, 0, 0, 0), (0, 1 / 2, 0, 0), (0, 0, 1, 0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    c=(0, 1 / 2, 1 / 2, 1),
    order=4,
    name="rk4",
)


class RungeKutta(Solver):
    """Explicit Runge–Kutta method of any :class:`ButcherTableau`. Order ``tableau.order``,
    ``tableau.stages`` evaluations per step.

    The step is the formula in this module's docstring, with h = σ₁ - σ₀ (negative when
    sampling, positive when encoding). A stage with c = 1 is evaluated at exactly σ₁, so on a
    grid of training timesteps it calls the network at the grid's integer t. Single-step: any
    grid with at least two points is valid.

    Args:
        tableau: the method's coefficients.
    """

    name = "runge-kutta"

    def __init__(self, tableau: ButcherTableau) -> None:
        if not isinstance(tableau, ButcherTableau):
            raise TypeError(f"tableau must be a ButcherTableau, got {type(tableau).__name__}")
        self.tableau = tableau
        self.order = tableau.order
        self.evals_per_step = tableau.stages

    def step(self, f: VectorField, s0: float, s1: float, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        tab = self.tableau
        h = s1 - s0
        k: list[Tensor] = []
        for i, (row, ci) in enumerate(zip(tab.a, tab.c, strict=True)):
            xi = x
            for aij, kj in zip(row[:i], k, strict=True):
                if aij != 0.0:
                    xi = xi + (h * aij) * kj
            k.append(f(s1 if ci == 1.0 else s0 + ci * h, xi))
        out = x
        for bi, ki in zip(tab.b, k, strict=True):
            if bi != 0.0:
                out = out + (h * bi) * ki
        return out, state

    def __repr__(self) -> str:
        if type(self) is RungeKutta:
            return f"RungeKutta({self.tableau.name or 'custom'!r} tableau, order {self.order})"
        return super().__repr__()


class Heun(RungeKutta):
    """Heun's method (explicit trapezoidal rule). Order 2, 2 evaluations per step.

    x₁ = x + h/2 (f(σ₀, x) + f(σ₁, x + h f(σ₀, x))): the EDM paper's deterministic sampler
    (Karras et al. 2022, Algorithm 1) without its final Euler step, which ``solve`` takes.
    """

    name = "heun"

    def __init__(self) -> None:
        super().__init__(HEUN_TABLEAU)


class Midpoint(RungeKutta):
    """Explicit midpoint method. Order 2, 2 evaluations per step.

    x₁ = x + h f(σ₀ + h/2, x + h/2 f(σ₀, x)).
    """

    name = "midpoint"

    def __init__(self) -> None:
        super().__init__(MIDPOINT_TABLEAU)


class Ralston(RungeKutta):
    """Ralston's third-order method (Ralston 1962, minimum error bound). Order 3, 3 evaluations
    per step.

    Nodes c = (0, 1/2, 3/4), weights b = (2/9, 1/3, 4/9).
    """

    name = "ralston3"

    def __init__(self) -> None:
        super().__init__(RALSTON3_TABLEAU)


class Heun3(RungeKutta):
    """Heun's third-order method. Order 3, 3 evaluations per step.

    Nodes c = (0, 1/3, 2/3), weights b = (1/4, 0, 3/4).
    """

    name = "heun3"

    def __init__(self) -> None:
        super().__init__(HEUN3_TABLEAU)


class RK4(RungeKutta):
    """The classic Runge–Kutta method. Order 4, 4 evaluations per step.

    Weights b = (1/6, 1/3, 1/3, 1/6) at nodes c = (0, 1/2, 1/2, 1); not the 3/8 rule that
    torchdiffeq calls ``rk4``.
    """

    name = "rk4"

    def __init__(self) -> None:
        super().__init__(RK4_TABLEAU)


__all__ = [
    "HEUN3_TABLEAU",
    "HEUN_TABLEAU",
    "MIDPOINT_TABLEAU",
    "RALSTON3_TABLEAU",
    "RK4",
    "RK4_TABLEAU",
    "ButcherTableau",
    "Heun",
    "Heun3",
    "Midpoint",
    "Ralston",
    "RungeKutta",
]
