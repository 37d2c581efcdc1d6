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
from dataclasses import dataclass, field
from typing import Literal, overload

import torch
from torch import Tensor

from diffode.conditioning import Cond, Guidance
from diffode.field import Model, ModelField, field_for
from diffode.fixed_point import DEFAULT_MAX_ITER
from diffode.grids import GridSpec, sigma_grid
from diffode.sampling import graph_mode, ode_dtype, sample
from diffode.schedule import NoiseSchedule
from diffode.solve import Callback, solve
from diffode.solvers.base import Euler, Solver
from diffode.solvers.registry import get_solver
from diffode.solvers.reversible import BDIA, InverseOf, InverseStep
from diffode.validation import describe, require_finite, require_floating

METHODS = ("reverse", "exact")
Method = Literal["reverse", "exact"]

EXACT_TIMESTEPS = "logsnr"
"""The default spacing of ``encode(..., method="exact")`` for solvers inverted implicitly."""


@dataclass(frozen=True)
class Encoding:
    """What :func:`encode` returns with ``return_info=True``; :func:`decode` accepts it as is and
    retraces it (grid, solver, companion, prediction and conditioning).

    Attributes:
        latents: x at σ_S (the top of the sampling grid), shape of the data, in the dtype the
            ODE was integrated in: the data's, but float32 for float16 and bfloat16 data (rounded
            to those, latents and companion would start decoding off the encoded trajectory:
            BDIA's bfloat16 round trips missed by 8.5 units of round-off at 50 steps on the
            digits model). ``dtype`` is the data's; cast for storage.
        companion: for :class:`~diffode.solvers.BDIA` with ``method="exact"``, x at σ_{S-1}
            (the state one grid point below the latents), which :func:`decode` needs to retrace
            the encoding exactly, dtype of ``latents``; ``None`` otherwise.
        sigmas: the sampling grid [σ_S, …, σ_1, 0] (float64) that decoding must follow.
        nfe: network calls of the encoding (on the whole batch or, for ``method="exact"``, on
            the samples still iterating).
        iterations: fixed-point iterations of ``method="exact"``: the sum over the steps of the
            most iterations any sample took on that step (0 for ``"reverse"``; for BDIA only the
            step out of σ = 0's, its other steps being explicit).
        solver: the sampler that decodes the latents (not its inverse).
        method: ``"reverse"`` or ``"exact"``.
        prediction: what the network predicts (as given to :func:`encode`).
        residual: ``method="exact"``: per sample, float64 ``(batch,)``, the sum over the steps of
            how far each sampling step from the encoding's state lands from the state below it
            (max abs, in x-space at that step). decode(encode(x)) differs from x by about that
            plus decoding's own round-off where the decoding flow does not expand perturbations;
            where it does, by more (measured: 3.1e-4 against a sum of 2.5e-5 on one of the
            digits model's own samples, float32, 100 steps; docs/encoding.md). Decode and
            compare, or use :func:`diffode.testing.assert_round_trip`, for the round trip
            itself. ``None`` for ``"reverse"``.
        evaluations_per_step: network evaluations per sample and step (the cost: samples that
            converge early stop costing evaluations).
        cond, guidance, uncond: the conditioning the encoding used (see :func:`encode`).
        dtype: the data's dtype, which :func:`decode` returns; ``None``: that of ``latents``.
    """

    latents: Tensor
    companion: Tensor | None
    sigmas: Tensor
    nfe: int
    iterations: int
    solver: Solver = field(default_factory=Euler)
    method: Method = "reverse"
    prediction: str = "epsilon"
    residual: Tensor | None = None
    evaluations_per_step: float = 0.0
    cond: Cond | None = None
    guidance: float | Guidance | None = None
    uncond: Cond | None = None
    dtype: torch.dtype | None = None


@overload
def encode(
    model: Model | ModelField,
    schedule: NoiseSchedule,
    x0: Tensor,
    *,
    steps: int | None = ...,
    timesteps: GridSpec | None = ...,
    solver: str | Solver = ...,
    method: Method = ...,
    tol: float | None = ...,
    max_iter: int | None = ...,
    prediction: str = ...,
    cond: Cond | None = ...,
    guidance: float | Guidance | None = ...,
    uncond: Cond | None = ...,
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
    timesteps: GridSpec | None = ...,
    solver: str | Solver = ...,
    method: Method = ...,
    tol: float | None = ...,
    max_iter: int | None = ...,
    prediction: str = ...,
    cond: Cond | None = ...,
    guidance: float | Guidance | None = ...,
    uncond: Cond | None = ...,
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
    timesteps: GridSpec | None = None,
    solver: str | Solver = "euler",
    method: Method = "reverse",
    tol: float | None = None,
    max_iter: int | None = None,
    prediction: str = "epsilon",
    cond: Cond | None = None,
    guidance: float | Guidance | None = None,
    uncond: Cond | None = None,
    progress: bool = False,
    grad: bool = False,
    return_info: bool = False,
) -> Tensor | Encoding:
    """Map data to latents by running the deterministic sampler's ODE backwards.

    The grid is the sampling grid of :func:`diffode.sample` for the same ``steps``,
    ``timesteps`` and ``solver``: [σ_S > … > σ_1, 0]. Encoding follows it upwards and returns
    x at σ_S; :func:`decode` with the same arguments follows it down again, and given the
    :class:`Encoding` (``return_info=True``) it retraces it with nothing to repeat.

    The default grid is DDIM's ``"uniform"``, except for ``method="exact"`` with a solver whose
    steps are inverted implicitly (all but BDIA): :data:`EXACT_TIMESTEPS` (``"logsnr"``). On
    DDIM's uniform grid the first steps above σ_min are long in log σ (σ 0.01 → 0.34 at 10
    steps, → 0.079 at 50): a sampling step there is nearly the network's denoiser x̂₀, whose
    Jacobian on a real network has eigenvalues below 0 (down to -0.38 on the bundled digits
    model), so the step folds and real data have no preimage near it. A grid uniform in log σ
    keeps each step's ratio σ_k/σ_{k+1} at 0.34 or more from 10 steps on, where the step stays
    invertible (docs/encoding.md). Decoding plain latents of such an encoding needs
    ``timesteps="logsnr"``; decoding the :class:`Encoding` needs nothing.

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
      included, is inverted (:class:`~diffode.solvers.InverseOf`): per sample, Anderson
      iterations from the explicit reverse step solve the step's implicit equation until the
      residual reaches ``tol`` or stops improving, so that ``decode`` with the same solver and
      grid reproduces x to the accumulated residuals (:attr:`Encoding.residual`), plus
      decoding's own round-off. Needs a deterministic single-step solver (Euler/DDIM, Heun,
      Midpoint, RK4, …). Costs the solver's evaluations per iteration, for the samples still
      iterating (:attr:`Encoding.evaluations_per_step`), and one or two host-device
      synchronisations per iteration. A sample that misses the tolerance (and, with the default
      tolerance, the default acceptance and the measured round-off floor of the step) raises
      :class:`~diffode.solvers.InversionError` (a ``ValueError``) naming the sample, the step,
      the residual and the options. With ``solver="bdia"`` only the step out of σ = 0 is
      iterated (BDIA's step is its own inverse), and decoding with the returned companion
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
            describes the sampling grid (decreasing), which encoding reverses itself. ``None``:
            ``"uniform"``, or :data:`EXACT_TIMESTEPS` for the implicit exact inverse (see above).
        solver: a deterministic solver name or object; ``"ddim"`` means η = 0.
        method: ``"reverse"`` or ``"exact"``.
        tol: ``method="exact"`` only: per-step tolerance on the residual relative to the
            state's scale (see :class:`~diffode.solvers.InverseOf`); ``None``: take each step to
            its round-off floor (iterate to 8 units of round-off of the coarser of the
            integration dtype and the network's, then one unevaluated Anderson step; accept a
            sample that stops improving within 64 units or 4 times the measured floor;
            docs/encoding.md).
        max_iter: ``method="exact"`` only: iterations allowed per step and sample; ``None``:
            :data:`~diffode.fixed_point.DEFAULT_MAX_ITER`.
        prediction: what the network predicts (see :func:`diffode.field_for`).
        cond, guidance, uncond: conditioning and classifier-free guidance, as for
            :func:`diffode.sample`.
        progress: draw a progress bar on stderr.
        grad: build the autograd graph (off by default, see :func:`diffode.sampling.graph_mode`).
        return_info: return an :class:`Encoding` (latents, companion, grid, solver, residuals,
            cost) instead of the latents alone; :func:`decode` takes it as is.

    Returns:
        Latents x at σ_S, shape, dtype and device of ``x0``; ≈ N(0, I) for data from the
        model's distribution. Or an :class:`Encoding` with ``return_info=True``.
    """
    x0 = require_finite("x0", require_floating("x0", x0))
    if x0.ndim == 0:
        raise ValueError("x0 must have a leading batch dimension, got a 0-d tensor")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "reverse" and (tol is not None or max_iter is not None):
        raise ValueError(
            f"tol={tol} and max_iter={max_iter} set the fixed-point iteration of method='exact'; "
            "method='reverse' takes explicit steps: leave them out, or pass method='exact'"
        )
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
    if timesteps is None:
        timesteps = EXACT_TIMESTEPS if method == "exact" and not reversible else "uniform"
    grid = sigma_grid(schedule, steps, timesteps, adaptive=stepper.adaptive, direction="encode")
    ode = field_for(model, schedule, prediction, cond=cond, guidance=guidance, uncond=uncond)
    # the last two states of the upward solve: BDIA's latents and companion
    trail: deque[Tensor] = deque(maxlen=2)
    inverted: list[InverseStep] = []
    with graph_mode(grad):
        out = solve(
            ode,
            x0.to(ode_dtype(x0)),
            grid,
            InverseOf(
                stepper,
                tol=tol,
                max_iter=DEFAULT_MAX_ITER if max_iter is None else max_iter,
                observer=inverted.append,
            )
            if method == "exact"
            else stepper,
            callback=(lambda info: trail.append(info.x)) if reversible else None,
            progress=progress,
        )
    s_top = float(grid[-1])
    latents = out.x / math.sqrt(1.0 + s_top * s_top)
    if not return_info:
        return latents.to(x0.dtype)
    companion = None
    if reversible and method == "exact" and grid.numel() > 2:
        s_below = float(grid[-2])
        # an empty batch takes no steps, and its companion is as empty as its latents
        below = trail[0] if trail else out.x
        companion = below / math.sqrt(1.0 + s_below * s_below)
    n_steps = grid.numel() - 1
    if method == "exact":
        residual: Tensor | None = (
            torch.stack([step.residual for step in inverted]).sum(0)
            if inverted
            else x0.new_zeros(x0.shape[0], dtype=torch.float64)
        )
        per_step = out.stats.get("sample_evaluations", 0) / (max(x0.shape[0], 1) * n_steps)
    else:
        residual, per_step = None, out.nfe / n_steps
    return Encoding(
        latents=latents,
        companion=companion,
        sigmas=grid.flip(0),
        nfe=out.nfe,
        iterations=out.stats.get("iterations", 0),
        solver=stepper,
        method=method,
        prediction=prediction,
        residual=residual,
        evaluations_per_step=per_step,
        cond=cond,
        guidance=guidance,
        uncond=uncond,
        dtype=x0.dtype,
    )


def decode(
    model: Model | ModelField,
    schedule: NoiseSchedule,
    latents: Tensor | Encoding,
    *,
    steps: int | None = None,
    timesteps: GridSpec | None = None,
    solver: str | Solver | None = None,
    companion: Tensor | None = None,
    prediction: str | None = None,
    cond: Cond | None = None,
    guidance: float | Guidance | None = None,
    uncond: Cond | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    grad: bool = False,
) -> Tensor:
    """Map latents back to data: deterministic sampling from ``latents`` (see :func:`encode`).

    Given the :class:`Encoding` that ``encode(..., return_info=True)`` returned, decoding
    retraces it: its grid, solver, companion, prediction and conditioning, so none of those
    arguments may be given. Given latents, this is :func:`diffode.sample` with η = 0 on the
    grid of ``steps``/``timesteps`` (default ``"uniform"``; latents from ``method="exact"``
    with a solver other than BDIA were encoded on ``"logsnr"`` by default) with ``solver``
    (default Euler); latents of an adaptive solver on a zero-terminal-SNR schedule need the
    encoding's grid (``timesteps=encoding.sigmas``), as encoding stopped at the largest finite
    σ while a grid by name starts at σ = ∞. With a ``companion`` from ``encode(...,
    solver="bdia", method="exact")``, the BDIA sampler starts from the pair of states that
    encoding ended with and retraces it exactly.

    Args:
        latents: x at σ_S, shape ``(batch, ...)``, any float dtype (kept); or an :class:`Encoding`.
        steps, timesteps, solver, prediction, cond, guidance, uncond: as given to :func:`encode`
            (a stochastic solver is refused, as there).
        companion: x at σ_{S-1}, shape and dtype of ``latents``; only with ``solver="bdia"``.
        callback, progress, grad: as for :func:`diffode.sample`.

    Returns:
        x at σ = 0, shape, dtype and device of the latents (of the encoded data, for an
        :class:`Encoding`).
    """
    if isinstance(latents, Encoding):
        given = {
            "steps": steps,
            "timesteps": timesteps,
            "solver": solver,
            "companion": companion,
            "prediction": prediction,
            "cond": cond,
            "guidance": guidance,
            "uncond": uncond,
        }
        clash = [name for name, value in given.items() if value is not None]
        if clash:
            raise ValueError(
                f"decode() retraces the Encoding it is given, which fixes {', '.join(clash)}; leave "
                "them out, or pass encoding.latents to decode with other settings"
            )
        encoding = latents
        decoded = decode(
            model,
            schedule,
            encoding.latents,
            timesteps=encoding.sigmas,
            solver=encoding.solver,
            companion=encoding.companion,
            prediction=encoding.prediction,
            cond=encoding.cond,
            guidance=encoding.guidance,
            uncond=encoding.uncond,
            callback=callback,
            progress=progress,
            grad=grad,
        )
        return decoded if encoding.dtype is None else decoded.to(encoding.dtype)
    timesteps = "uniform" if timesteps is None else timesteps
    solver = "euler" if solver is None else solver
    prediction = "epsilon" if prediction is None else prediction
    sampler: str | Solver = solver
    stepper = get_solver(solver)
    if stepper.stochastic:
        raise ValueError(
            f"solver {stepper!r} is stochastic: decoding with it adds fresh noise, so the same latents "
            "decode to different data; decode with a deterministic solver (DDIM with eta=0 is euler), "
            "or sample() for stochastic sampling"
        )
    if companion is not None:
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
        # in the dtype sample integrates the latents in (float32 for float16 and bfloat16 data)
        lifted = companion.to(ode_dtype(latents)) * math.sqrt(1.0 + s_below * s_below)
        sampler = BDIA(stepper.sigma_data, companion=lifted)
    return sample(
        model,
        schedule,
        latents,
        steps=steps,
        timesteps=timesteps,
        solver=sampler,
        prediction=prediction,
        cond=cond,
        guidance=guidance,
        uncond=uncond,
        callback=callback,
        progress=progress,
        grad=grad,
    )


__all__ = ["EXACT_TIMESTEPS", "METHODS", "Encoding", "decode", "encode"]
