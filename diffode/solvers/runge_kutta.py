"""Explicit Runge–Kutta methods as data: a Butcher tableau drives one stage loop.

A method with s stages advances x from σ₀ to σ₁ = σ₀ + h as

    k_i = f(σ₀ + c_i h, x + h Σ_{j<i} a_ij k_j),   i = 1 … s
    x₁  = x + h Σ_i b_i k_i

so every method below is a :class:`ButcherTableau` plus a name. An embedded method adds a second
row of weights b̂ (of a lower order) whose solution differs from x₁ by an estimate of the local
error, h Σ_i (b_i - b̂_i) k_i, at no extra evaluation; the adaptive solvers
(:mod:`diffode.solvers.adaptive`) control their step size with it.

:func:`rk_stages` is the one stage loop, shared by the fixed-step :class:`RungeKutta` and the
adaptive solvers. Stages sit between σ₀ and σ₁ (0 ≤ c_i ≤ 1 is checked), and the solve loop
never hands a step ending at σ = 0 to a stepper, so no stage evaluates the field at σ = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from diffode.field import Sigma, VectorField
from diffode.solvers.base import Solver, UnstableStepError, is_network_field, positive_steps
from diffode.validation import require_bool

# Coefficients are written as decimal fractions (1/6 is not exact in binary), so consistency
# is checked to a few ulps of the sums involved, not exactly.
_TOL = 1e-12


_Tree = tuple[Any, ...]
"""A rooted tree: the sorted tuple of its subtrees (a leaf is ``()``)."""


def _rooted_trees(vertices: int) -> list[_Tree]:
    """The rooted trees with ``vertices`` vertices (1, 1, 2, 4, 9, 20, ... of them), which index
    the order conditions of Runge–Kutta methods."""
    trees: list[_Tree] = [()]
    for _ in range(vertices - 1):
        trees = sorted({grown for tree in trees for grown in _with_a_leaf(tree)})
    return trees


def _with_a_leaf(tree: _Tree) -> set[_Tree]:
    """Every tree made from ``tree`` by one more leaf."""
    grown = {tuple(sorted((*tree, ())))}
    for i, child in enumerate(tree):
        grown |= {tuple(sorted((*tree[:i], g, *tree[i + 1 :]))) for g in _with_a_leaf(child)}
    return grown


def _dot(u: Sequence[float], v: Sequence[float]) -> float:
    return math.fsum(p * q for p, q in zip(u, v, strict=True))


def _matvec(a: Sequence[Sequence[float]], v: Sequence[float]) -> list[float]:
    return [_dot(row, v) for row in a]


@dataclass(frozen=True)
class ButcherTableau:
    """The coefficients of an explicit Runge–Kutta method, optionally embedded; checks itself when built.

    Attributes:
        a: the s × s stage matrix as s rows of s numbers, strictly lower triangular (explicit).
        b: the s output weights, summing to 1.
        c: the s stage nodes, each the sum of its row of ``a`` (so ``c[0] = 0``).
        order: the order of accuracy the method claims; the classical order conditions (the
            rooted trees up to order 4: Σb = 1, Σbc = 1/2, Σbc² = 1/3, Σb(Ac) = 1/6,
            Σbc³ = 1/4, Σbc(Ac) = 1/8, Σb(Ac²) = 1/12, Σb(A²c) = 1/24) are verified up to
            ``min(order, 4)``.
        name: a label for messages and ``repr``.
        b_low: the error row: weights of an embedded solution on the same stages, of order
            ``low_order`` (checked as the tableau ``(a, b_low, c)`` of that order), or ``None``
            for a method without an error estimate. ``b - b_low`` weighs the error estimate.
        low_order: the embedded solution's order, ``1 <= low_order < order``; given with
            ``b_low`` and only with it.
        fsal: declares the method "first same as last": its last stage is f at the new solution
            (``c[-1] = 1``, the last row of ``a`` equal to ``b``, ``b[-1] = 0``, all checked), so a
            step that follows it may reuse that stage as its first and spend one evaluation less.

    Raises ``ValueError`` naming the first inconsistency: shapes that disagree, a non-finite
    coefficient, a non-zero entry on or above the diagonal of ``a``, a row sum of ``a`` that
    differs from its ``c``, weights that do not sum to 1, an order condition that fails (of
    either solution), an error row without its order, or a false ``fsal`` claim.
    """

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int
    name: str = ""
    b_low: tuple[float, ...] | None = None
    low_order: int | None = None
    fsal: bool = False

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
        self._check_error_row(label)
        self._check_fsal(label)

    def _check_error_row(self, label: str) -> None:
        if self.b_low is None and self.low_order is None:
            return
        if self.b_low is None or self.low_order is None:
            raise ValueError(f"{label}: give the error row's b_low and low_order together (or neither)")
        low = self.low_order
        if isinstance(low, bool) or not isinstance(low, int):
            raise TypeError(f"{label}: low_order must be an int, got {low!r}")
        if not 1 <= low < self.order:
            raise ValueError(f"{label}: need 1 <= low_order < order, got low_order={low}, order={self.order}")
        # the embedded solution is itself a Runge–Kutta method on the same stages: check it as one
        embedded = ButcherTableau(a=self.a, b=self.b_low, c=self.c, order=low, name=f"{self.name} embedded")
        object.__setattr__(self, "b_low", embedded.b)

    def _check_fsal(self, label: str) -> None:
        require_bool(f"{label}: fsal", self.fsal)
        if self.fsal and not (self.c[-1] == 1.0 and self.b[-1] == 0.0 and self.a[-1] == self.b):
            raise ValueError(
                f"{label} is declared FSAL but is not: it needs c[-1] = 1, b[-1] = 0 and the last row "
                f"of a equal to b, got c[-1] = {self.c[-1]}, b = {list(self.b)}, a[-1] = {list(self.a[-1])}"
            )

    def _order_conditions(self) -> dict[str, tuple[float, float]]:
        """Butcher's order conditions up to ``order``, b · Φ(t) = 1/γ(t) for every rooted tree t
        with at most ``order`` vertices, as {tree: (value, required value)}; a tree is written
        with τ for a leaf and [children] for a vertex (τ: sum(b) = 1, [τ]: b·c = 1/2, ...)."""
        a, b = self.a, self.b

        def phi(tree: _Tree) -> list[float]:
            out = [1.0] * len(b)
            for child in tree:
                out = [u * v for u, v in zip(out, _matvec(a, phi(child)), strict=True)]
            return out

        def size(tree: _Tree) -> int:
            return 1 + sum(size(child) for child in tree)

        def density(tree: _Tree) -> int:
            return size(tree) * math.prod(density(child) for child in tree)

        def written(tree: _Tree) -> str:
            return "[" + ", ".join(written(child) for child in tree) + "]" if tree else "τ"

        return {
            f"b·Φ({written(tree)}) = 1/{density(tree)}": (_dot(b, phi(tree)), 1 / density(tree))
            for vertices in range(1, self.order + 1)
            for tree in _rooted_trees(vertices)
        }

    @property
    def stages(self) -> int:
        """The number of stages s, i.e. field evaluations per step (one less when a step reuses
        the FSAL stage of the step before)."""
        return len(self.b)

    def amplification(self, ratio: Tensor, modes: int = 101) -> tuple[Tensor, Tensor]:
        """Linear stability of a sampling step σ₀ → σ₁ = σ₀ / ``ratio`` in x̄ = x/√ᾱ coordinates.

        Near data ε = (x̄ - x̂₀)/σ, and along an eigenvector of the denoiser's Jacobian with
        eigenvalue d the ODE is dx̄/dσ = (1 - d) x̄/σ (coefficients frozen over the step). For
        Gaussian data d = s²/(s² + σ²) lies in [0, 1]: the exact flow then never expands as σ
        decreases, nor does Euler's (DDIM's) step, which multiplies by 1 - (1 - d)(1 - σ₁/σ₀)
        ∈ [σ₁/σ₀, 1]. This method's step multiplies by its stability function R(d, σ₁/σ₀), a
        polynomial in 1 - d; where |R| > 1 it amplifies the errors that the exact flow damps.

        Args:
            ratio: σ₀/σ₁ ≥ 1 per step, float64 ``(n,)``.
            modes: values of d sampled evenly in [0, 1].

        Returns:
            (largest |R| over d, the d attaining it), each float64 ``(n,)``.
        """
        d = torch.linspace(0.0, 1.0, modes, dtype=torch.float64)
        slope = (1.0 - d)[None, :]
        h = (1.0 / ratio.to(torch.float64) - 1.0)[:, None]  # σ₁ - σ₀ with σ₀ = 1
        ks: list[Tensor] = []
        for row, ci in zip(self.a, self.c, strict=True):
            ks.append(slope * (1.0 + h * _combine_or_zero(row[: len(ks)], ks, h)) / (1.0 + ci * h))
        r = 1.0 + h * _combine_or_zero(self.b, ks, h)
        worst, at = r.abs().max(1)
        return worst, d[at]

    def denoiser_weights(self, ratio: Tensor) -> Tensor:
        """How a sampling step σ₀ → σ₁ = σ₀ / ``ratio`` weighs the network's denoised estimates.

        With ε = (x̄ - x̂₀)/σ, an error δ in the denoised estimate x̂₀ of stage i moves the step's
        result by w_i δ (state and the other stages held fixed); the weights depend on σ₀/σ₁
        alone. Euler's (DDIM's) one weight is 1 - σ₁/σ₀ < 1: its result is a convex combination of
        the state and x̂₀. A method whose Σ|w_i| is large magnifies the network's own errors (its
        deviations from the exact denoiser) by that much, however well it integrates an exact
        field: Heun's weights are (1 - r)(r - 2)/(2r) and (r - 1)/2 at r = σ₀/σ₁.

        Args:
            ratio: σ₀/σ₁ ≥ 1 per step, float64 ``(n,)``.

        Returns:
            float64 ``(n, stages)``: the weights per step and stage.
        """
        h = 1.0 / ratio.to(torch.float64) - 1.0  # σ₁ - σ₀ with σ₀ = 1
        columns = []
        for m in range(self.stages):
            # derivatives of the stage slopes k_i = (x_i - x̂₀_i)/σ_i with respect to x̂₀_m
            dk: list[Tensor] = []
            for i, (row, ci) in enumerate(zip(self.a, self.c, strict=True)):
                dk.append((h * _combine_or_zero(row[:i], dk, h) - float(i == m)) / (1.0 + ci * h))
            columns.append(h * _combine_or_zero(self.b, dk, h))
        return torch.stack(columns, dim=1)

    @property
    def error_weights(self) -> tuple[float, ...]:
        """e = b - b_low: h Σ e_i k_i estimates the local error of the embedded solution."""
        if self.b_low is None:
            raise ValueError(f"tableau {self.name!r} has no error row (b_low)")
        return tuple(x - y for x, y in zip(self.b, self.b_low, strict=True))


class RKStep(NamedTuple):
    """What :func:`rk_stages` returns."""

    x: Tensor
    """The propagated solution at σ₁."""
    k: list[Tensor]
    """The s stage derivatives; for an FSAL tableau ``k[-1]`` is f(σ₁, x)."""
    error: Tensor | None
    """h Σ (b_i - b̂_i) k_i with ``estimate_error=True`` (the tableau needs an error row), else ``None``."""


def _same(sigma: Sigma) -> Sigma:
    return sigma


def rk_stages(
    f: VectorField,
    tableau: ButcherTableau,
    s0: float | Tensor,
    s1: float | Tensor,
    x: Tensor,
    k1: Tensor | None = None,
    *,
    sigma_of: Callable[[Sigma], Sigma] = _same,
    estimate_error: bool = False,
) -> RKStep:
    """One step of ``tableau`` from σ = ``s0`` to σ = ``s1``: the stage loop of every Runge–Kutta solver.

    The result has the tableau's order (``tableau.order``); with ``estimate_error=True`` the
    error estimate is that of its embedded solution (order ``tableau.low_order``). Evaluates
    ``f`` once per stage (``tableau.stages`` times), or once less when ``k1``, the
    derivative f(s0, x), is given (an FSAL method's last stage of the step before).

    ``s0`` and ``s1`` are Python floats, or float64 host tensors of shape ``(k,)`` holding one
    step per sample of ``x`` (or one ``(1,)`` step for the whole batch); h = s1 - s0 then
    multiplies each sample's increments. ``sigma_of`` turns a node's σ (a float or such a
    tensor) into what ``f`` receives. A stage with c = 1 is evaluated at exactly ``s1``, not at
    s0 + h rounded, so a step that ends on a grid point of training timesteps calls the network
    at the grid's integer t.
    """
    h = s1 - s0
    hx = h if not isinstance(h, Tensor) else h.to(x.device, x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    ks: list[Tensor] = []

    def increment(weights: Sequence[float]) -> Tensor:
        total = _combine(weights, ks)
        return x if total is None else x + hx * total

    xi = x
    for i, (row, ci) in enumerate(zip(tableau.a, tableau.c, strict=True)):
        if i == 0 and k1 is not None:
            ks.append(k1)
            continue
        xi = increment(row[:i])
        ks.append(f(sigma_of(s1 if ci == 1.0 else s0 + ci * h), xi))
    # an FSAL tableau's last stage input is x + h Σ b_j k_j already (its last row of a is b)
    x1 = xi if tableau.fsal else increment(tableau.b)
    error = None
    if estimate_error:
        total = _combine(tableau.error_weights, ks)
        error = x.new_zeros(x.shape) if total is None else hx * total
    return RKStep(x1, ks, error)


def _combine(weights: Sequence[float], ks: list[Tensor]) -> Tensor | None:
    """Σ_j w_j k_j over the stages ``ks``, skipping zero weights; ``None`` when all are zero (a
    stage at c = 0 takes x itself)."""
    terms = [k if w == 1.0 else w * k for w, k in zip(weights, ks, strict=True) if w != 0.0]
    if not terms:
        return None
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _combine_or_zero(weights: Sequence[float], ks: list[Tensor], like: Tensor) -> Tensor:
    """:func:`_combine`, with zeros shaped like ``like`` for a sum with no terms."""
    total = _combine(weights, ks)
    return torch.zeros_like(like) if total is None else total


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
BOGACKI_SHAMPINE = ButcherTableau(
    a=((0, 0, 0, 0), (1 / 2, 0, 0, 0), (0, 3 / 4, 0, 0), (2 / 9, 1 / 3, 4 / 9, 0)),
    b=(2 / 9, 1 / 3, 4 / 9, 0),
    c=(0, 1 / 2, 3 / 4, 1),
    order=3,
    name="bosh3",
    b_low=(7 / 24, 1 / 4, 1 / 3, 1 / 8),
    low_order=2,
    fsal=True,
)
"""Bogacki & Shampine (1989), "A 3(2) pair of Runge–Kutta formulas", Appl. Math. Lett. 2(4).
Its third-order method is Ralston's (``"ralston3"``)."""

_DP_B = (35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0)
DORMAND_PRINCE = ButcherTableau(
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
    b_low=(5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    low_order=4,
    fsal=True,
)
"""Dormand & Prince (1980), "A family of embedded Runge–Kutta formulae", J. Comput. Appl. Math. 6(1)."""


DENOISER_GAIN_LIMIT = 9.0
"""The largest sum of magnitudes of a sampling step's weights on the network's denoised
estimates (:meth:`ButcherTableau.denoiser_weights`) that :class:`RungeKutta` takes on a
network's field. A stage at the end of the step (Heun, RK4) puts weights growing like σ₀/σ₁ on
them, so a long step magnifies the network's own errors even where it is linearly stable;
Euler's (DDIM's) weight stays below 1. The limit is set from measurements on the bundled digits
network at 10-40 NFE (docs/benchmarks.md): of the Heun and RK4 cells that the linear stability
check takes, those whose largest sum exceeds 9 landed 1.3-9.9 times as far from the converged
solution as Euler at the same budget, among them Heun on ``logsnr`` at 10 NFE (sum 9.3, 6.7×)
and RK4 on ``trailing`` at 10 NFE (12.6, 3.6×); the largest sum below it, 8.1 (RK4 on
``karras`` at 30 NFE), measured 0.29×. It is a calibration on one network, not a bound. Methods
whose stages stay inside the step never reach it (their sums stay below 3 for Midpoint, 5 for
Ralston3 and 5.5 for Heun3, however long the step)."""


class RungeKutta(Solver):
    """Explicit Runge–Kutta method of any :class:`ButcherTableau`. Order ``tableau.order``,
    ``tableau.stages`` evaluations per step.

    The step is the formula in this module's docstring (:func:`rk_stages`), with h = σ₁ - σ₀
    (negative when sampling, positive when encoding). A stage with c = 1 is evaluated at exactly
    σ₁, so on a grid of training timesteps it calls the network at the grid's integer t.
    Single-step: every step evaluates all stages (an embedded tableau's error row and FSAL
    property go unused here).

    On the field of a network (:class:`~diffode.field.ModelField`), grids with a sampling step
    on which the method is linearly unstable are refused (:class:`UnstableStepError`, a
    ``ValueError`` naming the step): a step σ₀ → σ₁ > 0 where the tableau's
    :meth:`~ButcherTableau.amplification` exceeds 1 for some denoiser eigenvalue d in [0, 1].
    A stage at the end of the step (c = 1: Heun, RK4) evaluates the field at σ₁ from a state
    extrapolated over the whole step, and ε = (x̄ - x̂₀)/σ₁ turns that state's error into one
    σ₀/σ₁ times larger: Heun is unstable from σ₀/σ₁ > 13.9 (log(σ₀/σ₁) > 2.63), RK4 from 45.2
    (log(σ₀/σ₁) > 3.81); methods whose stages stay inside the step (Midpoint, Ralston3, Heun3)
    never are. Steps whose weights on the network's denoised estimates
    (:meth:`~ButcherTableau.denoiser_weights`) sum beyond :data:`DENOISER_GAIN_LIMIT` are
    refused too: they magnify the network's own errors (Heun from σ₀/σ₁ > 10.91, RK4 from 12.88).
    An increasing grid (encoding by reverse integration) is checked as the sampling grid that
    decodes it. A plain callable f(σ, x) is any ODE and is integrated as given. On
    the bundled digits network at 10 evaluations the grids refused are those on which Heun and
    RK4 had landed 3-274 times farther from the converged solution than Euler on the same grid,
    and at 16-40 evaluations 0.8-9.9 times (docs/benchmarks.md).

    Args:
        tableau: the method's coefficients (the named subclasses fix their own).
        check_stability: ``False`` takes the refused steps anyway, unstable or magnifying the
            network's errors (to study them).
    """

    name = "runge-kutta"
    single_step = True
    TABLEAU: ClassVar[ButcherTableau | None] = None
    """The fixed tableau of a named method (``None``: the constructor takes one)."""

    def __init__(self, tableau: ButcherTableau | None = None, *, check_stability: bool = True) -> None:
        fixed = type(self).TABLEAU
        if fixed is not None and tableau is not None:
            raise TypeError(
                f"{type(self).__name__} is the {fixed.name!r} tableau and takes none; use "
                "RungeKutta(tableau) for another"
            )
        tableau = fixed if tableau is None else tableau
        if not isinstance(tableau, ButcherTableau):
            raise TypeError(f"tableau must be a ButcherTableau, got {type(tableau).__name__}")
        self.tableau = tableau
        self.check_stability = require_bool("check_stability", check_stability)
        self.order = tableau.order
        self.evals_per_step = tableau.stages

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> None:
        if self.check_stability and is_network_field(f):
            self._check_steps(sigmas)
        return None

    def _check_steps(self, sigmas: Tensor) -> None:
        """Refuse the first step between positive σ on which sampling is unstable, or magnifies
        the network's errors beyond :data:`DENOISER_GAIN_LIMIT` (a step up is checked as the
        sampling step down that undoes it)."""
        steps = [(max(a, b), min(a, b)) for a, b in positive_steps(sigmas)]
        if not steps:
            return
        ratios = torch.tensor([s0 / s1 for s0, s1 in steps], dtype=torch.float64)
        worst, mode = self.tableau.amplification(ratios)
        gain = self.tableau.denoiser_weights(ratios).abs().sum(1)
        # |R| = 1 exactly at d = 1 (ε = 0); the slack keeps its rounding from counting
        refused = ((worst > 1.0 + 1e-9) | (gain > DENOISER_GAIN_LIMIT)).nonzero()
        if refused.numel() == 0:
            return
        i = int(refused[0])
        (s0, s1), factor, d = steps[i], float(worst[i]), float(mode[i])
        if factor > 1.0 + 1e-9:
            why = (
                f"is beyond the method's linear stability: along a denoiser eigenvalue d = {d:.2f} it "
                f"multiplies errors by {factor:.2f} where the exact flow and Euler damp them"
            )
        else:
            why = (
                f"multiplies the network's errors in its denoised estimates by {float(gain[i]):.3f} (the sum "
                f"of the step's weights on them; Euler's is {1 - s1 / s0:.2f}), above the limit "
                f"{DENOISER_GAIN_LIMIT:g}"
            )
        named = type(self).TABLEAU is not None
        call = (
            f"{type(self).__name__}(check_stability=False)"
            if named
            else "RungeKutta(tableau, check_stability=False)"
        )
        raise UnstableStepError(
            f"{self!r}: the sampling step σ {s0:.4g} -> {s1:.4g} (σ₀/σ₁ = {s0 / s1:.4g}) {why}. Use more "
            "steps, a grid without so large a ratio (karras or logsnr with more steps), a method whose "
            f"stages stay inside the step (midpoint, ralston3, heun3, dpmpp-2s), or {call} (CLI: "
            "--no-stability-check) to take it anyway"
        )

    def step(self, f: VectorField, s0: float, s1: float, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        return rk_stages(f, self.tableau, s0, s1, x).x, state

    def __repr__(self) -> str:
        options = [] if self.check_stability else ["check_stability=False"]
        if type(self).TABLEAU is None:
            options = [f"{self.tableau.name or 'custom'!r} tableau, order {self.order}", *options]
            return f"RungeKutta({', '.join(options)})"
        return f"{type(self).__name__}({', '.join(options)})"


class Heun(RungeKutta):
    """Heun's method (explicit trapezoidal rule). Order 2, 2 evaluations per step.

    x₁ = x + h/2 (f(σ₀, x) + f(σ₁, x + h f(σ₀, x))): the EDM paper's deterministic sampler
    (Karras et al. 2022, Algorithm 1) without its final Euler step, which ``solve`` takes.
    """

    name = "heun"
    TABLEAU = HEUN_TABLEAU


class Midpoint(RungeKutta):
    """Explicit midpoint method. Order 2, 2 evaluations per step.

    x₁ = x + h f(σ₀ + h/2, x + h/2 f(σ₀, x)).
    """

    name = "midpoint"
    TABLEAU = MIDPOINT_TABLEAU


class Ralston(RungeKutta):
    """Ralston's third-order method (Ralston 1962, minimum error bound). Order 3, 3 evaluations
    per step.

    Nodes c = (0, 1/2, 3/4), weights b = (2/9, 1/3, 4/9).
    """

    name = "ralston3"
    TABLEAU = RALSTON3_TABLEAU


class Heun3(RungeKutta):
    """Heun's third-order method. Order 3, 3 evaluations per step.

    Nodes c = (0, 1/3, 2/3), weights b = (1/4, 0, 3/4).
    """

    name = "heun3"
    TABLEAU = HEUN3_TABLEAU


class RK4(RungeKutta):
    """The classic Runge–Kutta method. Order 4, 4 evaluations per step.

    Weights b = (1/6, 1/3, 1/3, 1/6) at nodes c = (0, 1/2, 1/2, 1); not the 3/8 rule that
    torchdiffeq calls ``rk4``.
    """

    name = "rk4"
    TABLEAU = RK4_TABLEAU


__all__ = [
    "BOGACKI_SHAMPINE",
    "DENOISER_GAIN_LIMIT",
    "DORMAND_PRINCE",
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
    "RKStep",
    "Ralston",
    "RungeKutta",
    "rk_stages",
]
