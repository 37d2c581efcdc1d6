"""The ends of the σ axis: the steps into σ = 0, out of σ = 0 and out of σ = ∞.

The field is never evaluated at σ = 0 (t(0) lies outside the range a network was trained on) nor
at σ = ∞ in x̄ (where x̄ is infinite). The three steps that touch those ends live here, and
:func:`diffode.solve` is their one caller on the sampling and encoding paths:

- :func:`into_zero`: the last step of a sampling grid, x̄ → x̂₀ (first order; as in EDM and
  the DDIM reference code), evaluating the field at the step's start only.
- :func:`out_of_zero` and :func:`invert_into_zero`: the first step of an encoding grid
  [0, σ₁, …]. The first is explicit (DDIM inversion's lift x̄₁ = x₀ + σ₁ f(σ₁, x₀)); the second
  solves x̂₀(x̄₁) = x₀ for x̄₁, the exact inverse of :func:`into_zero`.
- :func:`out_of_infinity`: the first step of a grid that starts at σ = ∞ (zero terminal SNR,
  reference §7), taken from the x-space noise through the model's x̂₀.

Every function takes the field as :func:`diffode.solve` hands it to steppers (a
:class:`~diffode.field.PredictingField`), so a network's own x̂₀ is used: for x̂₀-, v- and EDM
models that avoids the cancellation in x̄ - σε, and for ε-models it is the reference code's
x̂₀ = (x - √(1-ᾱ) ε)/√ᾱ.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from diffode.field import PredictingField
from diffode.fixed_point import (
    RETRY_MEMORY,
    RETRY_PATIENCE,
    STEP_MEMORY,
    FixedPoint,
    retry_unconverged,
    solve_fixed_point,
)


def into_zero(f: PredictingField, sigma: float, x: Tensor) -> Tensor:
    """The step from σ = ``sigma`` > 0 into σ = 0: x̂₀(x̄, σ), one evaluation at ``sigma``.

    Args:
        f: the field; ``f.predict(σ, x̄)`` returns (f(σ, x̄), x̂₀).
        sigma: the last positive σ of the grid.
        x: x̄ at ``sigma``, shape ``(batch, ...)``.

    Returns:
        x̂₀, shape and dtype of ``x``.
    """
    return f.predict(sigma, x)[1]


def out_of_zero(f: PredictingField, sigma: float, x0: Tensor) -> Tensor:
    """The explicit step from σ = 0 up to σ = ``sigma``: x̄ = x₀ + σ f(σ, x₀), one evaluation.

    This is one fixed-point iteration of the inverse of :func:`into_zero` (the field is read at
    the target σ with the data in place of x̄, never at σ = 0), DDIM inversion's first step. Its
    error is of order σ² ‖∂f/∂x̄‖ ‖f‖.
    """
    return x0 + sigma * f(sigma, x0)


def invert_into_zero(
    f: PredictingField,
    sigma: float,
    x0: Tensor,
    *,
    tol: float,
    max_iter: int,
    memory: int | None = None,
    floor_ok: bool = True,
    accept: float | None = None,
    resolution: float | None = None,
    leap: bool = False,
) -> FixedPoint:
    """The exact inverse of :func:`into_zero`: the x̄ at σ = ``sigma`` whose x̂₀ is ``x0``.

    Solved per sample by :func:`~diffode.fixed_point.solve_fixed_point` from the guess x̄ = x₀
    (its first iteration is the explicit lift of :func:`out_of_zero`); samples that have
    converged are no longer evaluated (``f.rows``). ``tol``, ``max_iter``, ``memory``,
    ``floor_ok``, ``accept``, ``resolution`` and ``leap`` are the iteration's. With ``memory=None`` the
    first attempt keeps :data:`~diffode.fixed_point.STEP_MEMORY` columns, and the samples it
    leaves unconverged are solved again from x₀ with
    :data:`~diffode.fixed_point.RETRY_MEMORY` columns and
    :data:`~diffode.fixed_point.RETRY_PATIENCE` (this step is nearly singular on a real
    network, and neither setting suits every sample).

    Returns:
        The :class:`~diffode.fixed_point.FixedPoint` (x̄ shaped like ``x0``, per-sample residual
        in x-space units, convergence; ``aux`` the field at σ = ``sigma`` and the best evaluated
        iterate, which the next encoding step's predictor uses); convergence is reported, not
        asserted.
    """

    def forward(y: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        # the field's value comes with x̂₀: kept for the next step's predictor
        value, x0_hat = (f if rows is None else f.rows(rows)).predict(sigma, y)
        return x0_hat, value

    options: dict[str, Any] = {
        "tol": tol,
        "max_iter": max_iter,
        "floor_ok": floor_ok,
        "accept": accept,
        "resolution": resolution,
        "leap": leap,
    }
    found = solve_fixed_point(forward, x0, x0, memory=STEP_MEMORY if memory is None else memory, **options)
    if memory is not None:
        return found
    return retry_unconverged(forward, x0, x0, found, memory=RETRY_MEMORY, patience=RETRY_PATIENCE, **options)


def out_of_infinity(f: PredictingField, sigma: float, noise: Tensor) -> Tensor:
    """The first step of a grid that starts at σ = ∞: x̄ at ``sigma`` = x̂₀ + σ ε, one evaluation.

    At σ = ∞ x̄ is infinite, so the state is the x-space ``noise`` itself; the model's (ε, x̂₀)
    there give the DDIM update in its x̂₀ form. Needs a field that can be read at σ = ∞
    (``predict_x``: x̂₀- or v-prediction networks); others raise ``ValueError``.
    """
    eps, x0 = f.predict_x(math.inf, noise)
    return x0 + sigma * eps


__all__ = ["into_zero", "invert_into_zero", "out_of_infinity", "out_of_zero"]
