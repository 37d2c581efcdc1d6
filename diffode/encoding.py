"""Encoding data into latents and decoding them back (reference §8).

Decoding is deterministic sampling: :func:`decode` integrates the DDIM ODE from latents at the
top of the sampling grid [σ_S > … > σ_1, 0] down to σ = 0. Encoding runs the same loop,
:func:`diffode.solve`, up the reversed grid [0, σ_1 < … < σ_S]; the step out of σ = 0 is the
solver's :meth:`~diffode.solvers.Solver.leave_zero` (:mod:`diffode.boundary`), and the field is
never evaluated at σ = 0. Two methods:

- ``"reverse"``: integrate the ODE upwards with the chosen solver (with Euler, the usual DDIM
  inversion). Cheap; the round trip is accurate to the solver's discretisation error.
- ``"exact"``: undo each sampling step of the chosen solver on the same grid, so that
  decoding reproduces the data to a tolerance (:class:`~diffode.solvers.InverseOf`), or to
  round-off for the algebraically reversible :class:`~diffode.solvers.BDIA`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, overload

from torch import Tensor

from diffode.field import Model, ModelField, field_for
from diffode.grids import GridSpec, sigma_grid
from diffode.sampling import graph_mode, ode_dtype, sample
from diffode.schedule import NoiseSchedule
from diffode.solve import Callback, solve
from diffode.solvers.base import Solver
from diffode.solvers.registry import get_solver
from diffode.solvers.reversible import BDIA, InverseOf
from diffode.validation import describe, require_finite, require_floating

METHODS = ("reverse", "exact")
Method = Literal["reverse", "exact"]


@dataclass(frozen=True)
class Encoding:
    """What :func:`encode` returns with ``return_info=True``.

    Attributes:
        latents: x at σ_S (the top of the sampling grid), shape and dtype of the data.
        companion: for :class:`~diffode.solvers.BDIA` with ``method="exact"``, x at σ_{S-1}
            (the state one grid point below the latents), which :func:`decode` needs to retrace
            the encoding exactly; ``None`` otherwise.
        sigmas: the sampling grid [σ_S, …, σ_1, 0] (float64) that decoding must follow.
        nfe: network evaluations spent on encoding.
        iterations: fixed-point iterations of ``method="exact"`` in total (0 for ``"reverse"``;
            for BDIA only those of the step out of σ = 0, its other steps being explicit).
    """

    latents: Tensor
    companion: Tensor | None
    sigmas: Tensor
    nfe: int
    iterations: int


@overload
def encode(
    model: Model | ModelField,
    schedule: NoiseSchedule,
    x0: Tensor,
    *,
    steps: int | None = ...,
    timesteps: GridSpec = ...,
    solver: str | Solver = ...,
    method: Method = ...,
    tol: float | None = ...,
    max_iter: int = ...,
    prediction: str = ...,
    progress: bool = ...,
    grad: bool = ...,
    return_info: Literal[False] = ...,
) -> Tensor: ...


@overload
def encode(
    model: Model | ModelField,
    schedule: NoiseSchedule,
    x0: Tensor,
    *,
    steps: int | None = ...,
    timesteps: GridSpec = ...,
    solver: str | Solver = ...,
    method: Method = ...,
    tol: float | None = ...,
    max_iter: int = ...,
    prediction: str = ...,
    progress: bool = ...,
    grad: bool = ...,
    return_info: Literal[True],
) -> Encoding: ...


def encode(
    model: Model | ModelField,
    schedule: NoiseSchedule,
    x0: Tensor,
    *,
    steps: int | None = None,
    timesteps: GridSpec = "uniform",
    solver: str | Solver = "euler",
    method: Method = "reverse",
    tol: float | None = None,
    max_iter: int = 100,
    prediction: str = "epsilon",
    progress: bool = False,
    grad: bool = False,
    return_info: bool = False,
) -> Tensor | Encoding:
    """Map data to latents by running the deterministic sampler's ODE backwards.

    The grid is the sampling grid of :func:`diffode.sample` for the same ``steps``,
    ``timesteps`` and ``solver``: [σ_S > … > σ_1, 0]. Encoding follows it upwards and returns
    x at σ_S; :func:`decode` with the same arguments follows it down again.

    Methods and what they guarantee:

    - ``"reverse"``: the first step lifts the data to σ_1 as x̄₁ = x₀ + σ₁ f(σ₁, x₀), one
      fixed-point iteration of the inverse of sampling's last step x̂₀ = x̄₁ - σ₁ f(σ₁, x̄₁),
      leaving an error of order σ₁² ‖∂f/∂x̄‖ ‖f‖ (σ₁ = the schedule's σ_min ≈ 0.01 for
      ``"uniform"``). Then ``solver`` integrates from σ_1 up to σ_S on the reversed grid; any
      deterministic solver works (fixed-step, multistep, adaptive). With Euler this is the usual
      DDIM inversion. decode(encode(x)) differs from x by the discretisation errors of both
      directions, which shrink with the number of steps at the solver's order p (at order p+1
      for even p, whose leading local errors cancel between the two directions); see
      docs/encoding.md for measurements.
    - ``"exact"``: each sampling step of ``solver`` on this grid, the final one into σ = 0
      included, is inverted (:class:`~diffode.solvers.InverseOf`) by fixed-point iteration to
      the tolerance ``tol``, so that ``decode`` with the same solver and grid reproduces x to
      that tolerance, amplified at most by how much the decoding flow expands perturbations
      (plus its own round-off). Needs a deterministic single-step solver (Euler/DDIM, Heun,
      Midpoint, RK4, …). Costs one evaluation per step plus the solver's evaluations per
      iteration, and one host-device synchronisation per iteration. A step whose iteration does
      not converge (coarse steps through strongly curved regions) raises ``ValueError`` naming
      the step and residual. With ``solver="bdia"`` no iteration is needed beyond the final
      step's (BDIA's step is its own inverse), and decoding with the returned companion
      reproduces x to round-off (``return_info=True`` is then required, to receive it).

    In float32, x̄ = x·√(1+σ²) resolves x at σ to about 1e-7·√(1+σ²); a model whose flow
    does not contract perturbations passes that to the round trip, so exact round trips are a
    float64 matter for such models (docs/encoding.md).

    Args:
        model: a network called as ``model(x, t)`` that predicts ``prediction``, or a field
            (see :func:`diffode.sample`).
        schedule: the schedule the model was trained with.
        x0: data in x-space, shape ``(batch, ...)``, any float dtype (kept).
        steps, timesteps: the sampling grid, as for :func:`diffode.sample`; an explicit tensor
            describes the sampling grid (decreasing), which encoding reverses itself.
        solver: a deterministic solver name or object; ``"ddim"`` means η = 0.
        method: ``"reverse"`` or ``"exact"``.
        tol: ``method="exact"``: per-step tolerance of the fixed-point iteration (see
            :class:`~diffode.solvers.InverseOf`); ``None``: 4 units of round-off of x0's dtype.
        max_iter: ``method="exact"``: iterations allowed per step.
        prediction: what the network predicts (see :func:`diffode.field_for`).
        progress: draw a progress bar on stderr.
        grad: build the autograd graph (off by default, see :func:`diffode.sampling.graph_mode`).
        return_info: return an :class:`Encoding` (latents, companion, grid, NFE, iterations)
            instead of the latents alone.

    Returns:
        Latents x at σ_S, shape, dtype and device of ``x0``; ≈ N(0, I) for data from the
        model's distribution. Or an :class:`Encoding` with ``return_info=True``.
    """
    x0 = require_finite("x0", require_floating("x0", x0))
    if x0.ndim == 0:
        raise ValueError("x0 must have a leading batch dimension, got a 0-d tensor")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    stepper = get_solver(solver)
    if stepper.stochastic:
        raise ValueError(
            f"solver {stepper!r} is stochastic: sampling with it adds fresh noise, which encoding "
            "cannot undo; encode with a deterministic solver (solver='ddim' means eta=0, i.e. Euler)"
        )
    reversible = stepper.reversible
    if method == "exact" and reversible and not return_info:
        raise ValueError(
            f"solver={stepper!r} with method='exact' retraces exactly only from the latents together with "
            "their companion state; pass return_info=True and give Encoding.companion to decode()"
        )
    grid = sigma_grid(schedule, steps, timesteps, adaptive=stepper.adaptive, direction="encode")
    field = field_for(model, schedule, prediction)
    # the last two states of the upward solve: BDIA's latents and companion
    trail: deque[Tensor] = deque(maxlen=2)
    with graph_mode(grad):
        out = solve(
            field,
            x0.to(ode_dtype(x0)),
            grid,
            InverseOf(stepper, tol=tol, max_iter=max_iter) if method == "exact" else stepper,
            callback=(lambda info: trail.append(info.x)) if reversible else None,
            progress=progress,
        )
    s_top = float(grid[-1])
    latents = (out.x / math.sqrt(1.0 + s_top * s_top)).to(x0.dtype)
    if not return_info:
        return latents
    companion = None
    if reversible and method == "exact" and grid.numel() > 2:
        s_below = float(grid[-2])
        companion = (trail[0] / math.sqrt(1.0 + s_below * s_below)).to(x0.dtype)
    return Encoding(
        latents=latents,
        companion=companion,
        sigmas=grid.flip(0),
        nfe=out.nfe,
        iterations=out.stats.get("iterations", 0),
    )


def decode(
    model: Model | ModelField,
    schedule: NoiseSchedule,
    latents: Tensor,
    *,
    steps: int | None = None,
    timesteps: GridSpec = "uniform",
    solver: str | Solver = "euler",
    companion: Tensor | None = None,
    prediction: str = "epsilon",
    callback: Callback | None = None,
    progress: bool = False,
    grad: bool = False,
) -> Tensor:
    """Map latents back to data: deterministic sampling from ``latents`` (see :func:`encode`).

    Without ``companion`` this is :func:`diffode.sample` with η = 0. With the ``companion``
    returned by ``encode(..., solver="bdia", method="exact", return_info=True)``, the BDIA
    sampler starts from the pair of states that encoding ended with and retraces it exactly.

    Args:
        latents: x at σ_S, shape ``(batch, ...)``, any float dtype (kept).
        steps, timesteps, solver, prediction: as given to :func:`encode`.
        companion: x at σ_{S-1}, shape and dtype of ``latents``; only with ``solver="bdia"``.
        callback, progress, grad: as for :func:`diffode.sample`.

    Returns:
        x at σ = 0, shape, dtype and device of ``latents``.
    """
    if companion is None:
        return sample(
            model,
            schedule,
            latents,
            steps=steps,
            timesteps=timesteps,
            solver=solver,
            prediction=prediction,
            callback=callback,
            progress=progress,
            grad=grad,
        )
    stepper = get_solver(solver)
    if not isinstance(stepper, BDIA):
        raise ValueError(
            f"companion is the second state of the reversible solver 'bdia', but solver={stepper!r}; "
            "pass solver='bdia' or leave companion out"
        )
    companion = require_finite("companion", require_floating("companion", companion))
    grid = sigma_grid(schedule, steps, timesteps, adaptive=stepper.adaptive, direction="encode")
    if grid.numel() < 3:
        raise ValueError(
            f"a companion needs a grid with at least two positive σ, got {describe(grid)}; pass "
            "companion=None"
        )
    s_below = float(grid[-2])
    return sample(
        model,
        schedule,
        latents,
        steps=steps,
        timesteps=timesteps,
        solver=BDIA(stepper.sigma_data, companion=companion * math.sqrt(1.0 + s_below * s_below)),
        prediction=prediction,
        callback=callback,
        progress=progress,
        grad=grad,
    )


__all__ = ["METHODS", "Encoding", "decode", "encode"]
