"""Convergence studies for notebooks and papers: error against a reference, NFE and empirical
order, per solver, as plain data.

    result = study.convergence_study(field, x, ["euler", "heun", "dpmpp-2m"], [10, 20, 40, 80],
                                     grid=lambda n: diffode.sigma_grid(schedule, n, "karras"))
    print(result.to_markdown())

Every solve goes through :func:`diffode.solve`, so the NFE are the loop's own count. The default
reference is a tight float64 adaptive solve of the same span (:func:`reference_solution`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffode.field import VectorField
from diffode.solve import solve
from diffode.solvers.adaptive import Dopri5
from diffode.solvers.base import Solver
from diffode.solvers.registry import get_solver
from diffode.validation import check_sigma_grid, require_finite, require_floating

Reference = Tensor | Callable[[Tensor, Tensor], Tensor] | None
"""A reference for :func:`measure`: ``None`` (a tight adaptive solve of the same span), the
reference final state itself, or a callable ``reference(x, sigmas)`` returning it (for instance
an exact flow)."""

SolverSpec = str | Solver


@dataclass(frozen=True)
class StudyRow:
    """One solve measured against the reference.

    Attributes:
        solver: the solver's label (its name, or the key given by the caller).
        steps: intervals of the σ grid, the final step into σ = 0 included.
        nfe: evaluations of the field counted by ``solve``.
        max_error: largest absolute deviation from the reference over all elements (float64).
        rms_error: root mean square deviation from the reference over all elements (float64).
        intervals: intervals of the grid's positive finite part, the steps on which solvers
            differ (the steps out of and into σ = 0 or out of σ = ∞ are the reference's too);
            empirical orders are fitted against it.
    """

    solver: str
    steps: int
    nfe: int
    max_error: float
    rms_error: float
    intervals: int = 0


@dataclass(frozen=True)
class Study:
    """The result of :func:`convergence_study`.

    Attributes:
        rows: one :class:`StudyRow` per solver and step count, in the order they ran.
        orders: per solver label, the empirical order (see :func:`empirical_order` on the RMS
            errors), or ``None`` where fewer than two step counts gave a non-zero error.
    """

    rows: tuple[StudyRow, ...]
    orders: dict[str, float | None]

    def to_markdown(self) -> str:
        """The rows as a Markdown table, followed by a table of empirical orders."""
        orders = [{"solver": k, "empirical order": v} for k, v in self.orders.items()]
        return to_markdown(self.rows) + "\n\n" + to_markdown(orders)

    def plot(self, ax: Any = None) -> Any:
        """RMS error against NFE on log-log axes, one line per solver; needs matplotlib (the
        ``plot`` extra). Returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots()
        for label in self.orders:
            mine = [r for r in self.rows if r.solver == label]
            ax.loglog([r.nfe for r in mine], [r.rms_error for r in mine], marker="o", label=label)
        ax.set_xlabel("NFE")
        ax.set_ylabel("RMS error against the reference")
        ax.legend()
        return ax


def reference_solution(
    f: VectorField,
    x: Tensor,
    sigmas: Tensor,
    *,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    max_nfe: int = 1_000_000,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """A tight adaptive solution over the span of ``sigmas``, in ``dtype`` (float64 by default).

    :class:`~diffode.solvers.Dopri5` integrates between the first and the last positive finite σ
    of the grid. The steps that every solve takes the same way at the ends of the σ axis are kept:
    out of σ = 0 (an encoding grid) or σ = ∞ to the first of them, and from the last into σ = 0.
    So a study measures the error each solver makes on the positive part of its grid. Builds no
    autograd graph.

    Args:
        f: the field; it must accept a state of ``dtype``.
        x: the state at ``sigmas[0]``, shape ``(batch, ...)``.
        sigmas: the σ grid whose span is solved (only its ends and first and last positive
            finite entries matter).
    """
    span = torch.tensor(_span(check_sigma_grid(sigmas)), dtype=torch.float64)
    solver = Dopri5(rtol=rtol, atol=atol, max_nfe=max_nfe)
    with torch.no_grad():
        return solve(f, x.to(dtype), span, solver).x


def measure(
    f: VectorField,
    x: Tensor,
    sigmas: Tensor,
    solver: SolverSpec,
    *,
    reference: Reference = None,
    label: str | None = None,
) -> StudyRow:
    """Solve once along ``sigmas`` and compare the final state with the reference.

    Args:
        f: the field; x: the start state at ``sigmas[0]``, ``(batch, ...)``, its dtype is used.
        solver: a solver name or object (fixed-step or adaptive).
        reference: see :data:`Reference`.
        label: the row's solver label; by default the name given, or the object's ``repr``.

    Builds no autograd graph.
    """
    grid = check_sigma_grid(sigmas)
    with torch.no_grad():
        out = solve(f, x, grid, solver)
    # a NaN row would drop out of the order fit in silence
    target = require_finite("reference", _resolve(reference, f, x, grid))
    diff = out.x.detach().to(torch.float64) - target.detach().to(out.x.device, torch.float64)
    return StudyRow(
        solver=label if label is not None else _label(solver),
        steps=grid.numel() - 1,
        nfe=out.nfe,
        max_error=float(diff.abs().max()),
        rms_error=float(diff.square().mean().sqrt()),
        intervals=max(sum(0 < v < math.inf for v in grid.tolist()) - 1, 0),
    )


def convergence_study(
    f: VectorField,
    x: Tensor,
    solvers: Sequence[SolverSpec] | Mapping[str, SolverSpec],
    steps: Sequence[int],
    *,
    grid: Callable[[int], Tensor],
    reference: Reference = None,
) -> Study:
    """Error, NFE and empirical order of fixed-step solvers over a range of step counts.

    Args:
        f: the field, any callable ``f(sigma, x)``.
        x: the start state at ``grid(n)[0]``, shape ``(batch, ...)``; every solve starts from it.
        solvers: names or objects (labelled by name or ``repr``), or a mapping label → solver.
            Adaptive solvers choose their own steps; measure them with :func:`measure`.
        steps: the step counts n to try (at least two for an order).
        grid: ``grid(n)`` returns the σ grid for n, e.g. ``lambda n: sigma_grid(schedule, n,
            "karras")``. Grids whose start σ varies with n (DDIM's uniform spacing) are fine
            with the default reference, which is computed per span, but then x must suit every
            start.
        reference: see :data:`Reference`; the default solves each distinct span once.

    Returns:
        A :class:`Study`: a row per solver and step count, and each solver's empirical order,
        the negated least-squares slope of log RMS error against the log of the grids' positive
        finite intervals (:attr:`StudyRow.intervals`: the steps in which the solvers differ).
    """
    require_floating("x", x)
    labelled = dict(solvers) if isinstance(solvers, Mapping) else {_label(s): s for s in solvers}
    if not labelled or not steps:
        raise ValueError("convergence_study needs at least one solver and one step count")
    resolved = {label: get_solver(s) for label, s in labelled.items()}
    for label, solver in resolved.items():
        if solver.adaptive:
            raise ValueError(
                f"solver {label!r} is adaptive and chooses its own steps; measure it with "
                "diffode.study.measure at a few tolerances instead"
            )
    grids = {n: check_sigma_grid(grid(n), f"grid({n})") for n in steps}
    references: dict[tuple[float, ...], Tensor] = {}
    rows = []
    for label, solver in resolved.items():
        for n in steps:
            sigmas = grids[n]
            target = reference
            if target is None:
                key = _span(sigmas)
                if key not in references:
                    references[key] = reference_solution(f, x, sigmas)
                target = references[key]
            rows.append(measure(f, x, sigmas, solver, reference=target, label=label))
    orders = {}
    for label in resolved:
        mine = [r for r in rows if r.solver == label]
        # against the steps on which the solvers differ: counting the shared final step into
        # σ = 0 biased the slope (Euler with errors exactly ∝ 1/m at m = 1, 3, 7 read 1.40)
        positive = [(r.intervals, r.rms_error) for r in mine if r.rms_error > 0 and r.intervals > 0]
        orders[label] = -empirical_order(*zip(*positive, strict=True)) if len(positive) >= 2 else None
    return Study(rows=tuple(rows), orders=orders)


def empirical_order(steps: Sequence[float], errors: Sequence[float]) -> float:
    """Least-squares slope of log(error) against log(steps): about -p for a method of order p
    in its asymptotic range (above round-off)."""
    s, e = np.asarray(steps, dtype=float), np.asarray(errors, dtype=float)
    if (
        s.size < 2
        or s.shape != e.shape
        or not (np.isfinite(s).all() and np.isfinite(e).all())
        or (s <= 0).any()
        or (e <= 0).any()
        or np.unique(s).size < 2
    ):
        raise ValueError(
            f"empirical_order needs at least two (steps, error) pairs of finite positive numbers, with two "
            f"step counts that differ, got {list(s)} and {list(e)}"
        )
    return float(np.polyfit(np.log(s), np.log(e), 1)[0])


def to_markdown(rows: Sequence[Any]) -> str:
    """A Markdown table of dataclass instances or dicts (one row each; columns from the first)."""
    if not rows:
        raise ValueError("to_markdown needs at least one row")
    records = [r if isinstance(r, Mapping) else {f.name: getattr(r, f.name) for f in fields(r)} for r in rows]
    columns = list(records[0])
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if _numeric(records[0][c]) else "---" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in records]
    return "\n".join(lines)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) and 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"
    return str(value)


def _label(solver: SolverSpec) -> str:
    return solver if isinstance(solver, str) else repr(solver)


def _span(grid: Tensor) -> tuple[float, ...]:
    """The grid points the default reference passes through: the start, the first and last
    positive finite σ, and the end (repeats dropped)."""
    values = grid.tolist()
    finite = [v for v in values if 0 < v < math.inf]
    if not finite:
        # only boundary steps ([∞, 0]): the reference takes them as every solver does
        return tuple(values)
    span: list[float] = []
    for v in (values[0], finite[0], finite[-1], values[-1]):
        if not span or v != span[-1]:
            span.append(v)
    return tuple(span)


def _resolve(reference: Reference, f: VectorField, x: Tensor, grid: Tensor) -> Tensor:
    if reference is None:
        return reference_solution(f, x, grid)
    if isinstance(reference, Tensor):
        if reference.shape != x.shape:
            raise ValueError(
                f"reference must have the state's shape {tuple(x.shape)}, got {tuple(reference.shape)}"
            )
        return reference
    solution = reference(x, grid)
    if not isinstance(solution, Tensor) or solution.shape != x.shape:
        got = tuple(solution.shape) if isinstance(solution, Tensor) else type(solution).__name__
        raise ValueError(
            f"reference(x, grid) must return a tensor of the state's shape {tuple(x.shape)}, got {got}"
        )
    return solution


__all__ = [
    "Reference",
    "Study",
    "StudyRow",
    "convergence_study",
    "empirical_order",
    "measure",
    "reference_solution",
    "to_markdown",
]
