"""Front doors: thin x ↔ x̄ coordinate changes around :func:`diffode.solve.solve`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor

from diffode.conditioning import Cond, Guidance
from diffode.field import Model, ModelField, field_for
from diffode.grids import GridSpec, sigma_grid
from diffode.schedule import NoiseSchedule
from diffode.solve import Callback, Generator, solve
from diffode.solvers.base import Solver
from diffode.solvers.ddim import DDIM
from diffode.solvers.registry import get_solver
from diffode.validation import require_bool, require_finite, require_floating, require_nonnegative

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def ode_dtype(x: Tensor) -> torch.dtype:
    """The dtype the front doors integrate in: the caller's, but float32 for float16 and bfloat16
    inputs. x̄ = x·√(1+σ²) overflows float16 (its largest value is 65504, σ_max ≈ 2·10⁴ on a cosine
    schedule) and bfloat16 keeps too few digits for the sum of many steps; the network is still
    called in its own dtype (see :class:`~diffode.field.ModelField`), and results come back in the
    input's dtype."""
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def graph_mode(grad: bool) -> AbstractContextManager[object]:
    """No autograd graph unless ``grad``: a graph through every step of a sampler holds every
    intermediate state, memory in proportion to the step count, which a front door must not spend
    unasked (as diffusers' pipelines and k-diffusion's samplers do not). :func:`diffode.solve`
    itself stays transparent to autograd."""
    return contextlib.nullcontext() if require_bool("grad", grad) else torch.no_grad()


def resolve_sampler(solver: str | Solver, eta: float) -> Solver:
    """The solver object for ``sample``'s ``solver`` and ``eta`` arguments."""
    eta = require_nonnegative("eta", eta)
    if solver == "ddim":
        return DDIM(eta)
    if eta != 0.0:
        raise ValueError(
            f"eta={eta} applies only to solver='ddim'; got solver={solver!r}. Use solver='ddim' or "
            "pass a DDIM(eta=...) object"
        )
    return get_solver(solver)


def sample(
    model: Model | ModelField,
    schedule: NoiseSchedule,
    noise: Tensor,
    *,
    steps: int | None = None,
    timesteps: GridSpec = "uniform",
    solver: str | Solver = "euler",
    eta: float = 0.0,
    generator: Generator = None,
    callback: Callback | None = None,
    progress: bool = False,
    prediction: str = "epsilon",
    cond: Cond | None = None,
    guidance: float | Guidance | None = None,
    uncond: Cond | None = None,
    grad: bool = False,
    adjoint: bool = False,
    adjoint_params: Sequence[Tensor] | None = None,
) -> Tensor:
    """Draw samples by integrating the DDIM ODE (or a stochastic DDIM/DDPM chain) from noise.

    Args:
        model: a network called as ``model(x, t)`` that predicts ``prediction`` (see
            :class:`~diffode.EpsField`), or a field such as :class:`~diffode.DenoiserField`.
        schedule: the schedule the model was trained with.
        noise: x at the first grid point, ~ N(0, I), shape ``(batch, ...)``, any float dtype
            (kept). As in the DDIM reference code and diffusers, this is x (not x̄) at the first
            timestep of the grid.
        steps: number of sampling steps S (network evaluations for Euler/DDIM). Default: 50
            (at most T) for fixed-step solvers; for adaptive solvers the grid [σ_max, σ_min, 0].
        timesteps: ``"uniform"`` (= ``"leading"``), ``"quadratic"``, ``"trailing"``, ``"linspace"``,
            ``"karras"``, ``"logsnr"``,
            or an explicit tensor of integer timesteps or σ values (see
            :func:`~diffode.grids.sigma_grid`). A final step to σ = 0 is always taken.
        solver: a solver name or object; ``"euler"`` is deterministic DDIM.
        eta: DDIM's η, only with ``solver="ddim"`` (0 = DDIM, 1 = DDPM ancestral).
        generator: randomness for stochastic solvers: one ``torch.Generator`` or one per sample.
        callback: called with a :class:`~diffode.solve.StepInfo` (x̄ state) after every step.
        progress: draw a progress bar on stderr.
        prediction: what the network predicts: ``"epsilon"``, ``"sample"`` (x̂0),
            ``"v_prediction"`` or ``"score"`` (see :func:`~diffode.field_for`). With a
            zero-terminal-SNR schedule and a grid reaching t = T-1 (``"trailing"``,
            ``"linspace"``), the first step leaves σ = ∞ through the model's x̂0; that needs
            ``"sample"`` or ``"v_prediction"`` and a deterministic solver.
        cond: conditioning of a conditional network, one row per sample: a tensor (passed as the
            keyword the model declares) or a mapping of keyword names to tensors, e.g.
            ``{"class_labels": labels}`` (see :func:`~diffode.field_for`).
        guidance: classifier-free guidance weight w ≥ 0 or a :class:`~diffode.Guidance`.
        uncond: the unconditional input for guidance, in the form of ``cond`` (default: the
            model's own null condition).
        grad: build the autograd graph through the sampler (for gradients with respect to
            ``noise`` or the model's parameters). Off by default: see :func:`graph_mode`.
        adjoint: with ``grad=True``, differentiate with memory that does not grow with the step
            count (see :func:`diffode.solve` and :mod:`diffode.adjoint`).
        adjoint_params: with ``adjoint=True``, the tensors besides ``noise`` to differentiate;
            ``None``: the parameters of an ``nn.Module`` model (a plain function's tensors
            cannot be found: pass them, or ``()`` for gradients with respect to ``noise`` alone).

    Returns:
        Samples x at σ = 0, same shape, dtype and device as ``noise`` (integrated in float32 for
        float16/bfloat16 noise, see :func:`ode_dtype`).
    """
    noise = require_finite("noise", require_floating("noise", noise))
    if adjoint and not grad:
        raise ValueError("adjoint=True computes gradients; pass grad=True as well")
    stepper = resolve_sampler(solver, eta)
    grid = sigma_grid(schedule, steps, timesteps, adaptive=stepper.adaptive)
    field = field_for(model, schedule, prediction, cond=cond, guidance=guidance, uncond=uncond)
    s_start, s_end = float(grid[0]), float(grid[-1])
    with graph_mode(grad):
        start = noise.to(ode_dtype(noise))
        # at σ = ∞ x̄ is infinite: solve starts from the x-space noise there
        xbar = start if math.isinf(s_start) else start * math.sqrt(1.0 + s_start * s_start)
        out = solve(
            field,
            xbar,
            grid,
            stepper,
            generator=generator,
            callback=callback,
            progress=progress,
            adjoint=adjoint,
            adjoint_params=adjoint_params,
        )
        return (out.x / math.sqrt(1.0 + s_end * s_end)).to(noise.dtype)
