"""The stepper contract shared by every solver.

A solver advances the state over one interval of the σ grid:

1. ``init(f, sigmas, x, generator)`` is called once per solve and returns the solver's state
   (multistep history, adaptive step size, random generator; ``None`` when there is none). A
   solver that is unstable on some step of the grid raises :class:`UnstableStepError` there.
2. ``step(f, s0, s1, x, state) -> (x, state)`` advances x from σ = s0 to σ = s1 (Python floats,
   both positive and finite, either direction). It may call ``f`` several times and may take
   internal sub-steps (adaptive solvers) but never evaluates ``f`` at σ = 0. The x it receives is
   the x its previous step returned.
3. ``leave_zero(f, s1, x, state)`` takes the first step of an encoding grid, from the data at
   σ = 0 up to s1; by default the explicit :func:`diffode.boundary.out_of_zero`. The steps into
   σ = 0 and out of σ = ∞ are :func:`diffode.solve`'s own (:mod:`diffode.boundary`).
4. ``order`` and ``evals_per_step`` are declared facts, checked by the test suite; ``max_nfe``
   (``None``: unlimited) is the evaluation budget that ``solve`` enforces.
5. ``stats(state)`` reports solver counters (accepted and rejected steps) at the end.

``f`` is the field as :func:`diffode.solve` hands it over (a
:class:`~diffode.field.PredictingField`, counted).

Solvers are small stateless objects: one instance can serve many solves at once.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from diffode.boundary import out_of_zero
from diffode.field import PredictingField, VectorField


class UnstableStepError(ValueError):
    """A solver refuses a grid: one of its steps is beyond the method's stability, or (Heun's and
    RK4's, :class:`~diffode.solvers.RungeKutta`) magnifies the network's errors beyond
    ``DENOISER_GAIN_LIMIT``; UniPC bh1's refusal is :class:`~diffode.solvers.UniPC`'s. The
    message names the step and what to do instead."""


def is_network_field(f: object) -> bool:
    """Whether ``f`` is a network's field, bare (:class:`~diffode.field.ModelField`) or as
    :func:`diffode.solve` hands it over (whose ``.model`` is the ModelField). Stability checks
    calibrated on networks apply to these; a plain callable f(σ, x) is any ODE."""
    return getattr(f, "model", None) is not None


def positive_steps(sigmas: Tensor) -> list[tuple[float, float]]:
    """The steps (σ₀, σ₁) of a grid between positive, finite σ: those a solver takes itself (the
    steps into σ = 0 and out of σ = 0 or ∞ are :mod:`diffode.boundary`'s), for grid checks."""
    values = [v for v in sigmas.tolist() if 0.0 < v < math.inf]
    return list(itertools.pairwise(values))


class Solver(ABC):
    """Base class of all solvers. Subclasses set ``name``, ``order`` and ``evals_per_step``."""

    name: str = ""
    order: int = 1
    evals_per_step: int = 1
    adaptive: bool = False
    stochastic: bool = False
    reversible: bool = False
    """Whether the step is algebraically its own inverse when run on the reversed grid (BDIA)."""
    single_step: bool = False
    """Whether a step depends on (s0, s1, x) alone, with no history carried between steps, so that
    one step can be inverted on its own (:class:`~diffode.solvers.InverseOf`)."""
    max_nfe: int | None = None
    """Evaluation budget of a whole solve (``None``: unlimited); :func:`diffode.solve` counts the
    evaluations and raises ``ValueError`` on the one past the budget."""

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> Any:
        """Prepare the per-solve state for the grid ``sigmas`` (float64, checked) and start ``x``."""
        return None

    @abstractmethod
    def step(self, f: PredictingField, s0: float, s1: float, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Advance ``x`` from σ = ``s0`` to σ = ``s1``; return the new state and solver state."""

    def leave_zero(self, f: PredictingField, s1: float, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        """The first step of an increasing grid [0, s1, …]: from the data ``x`` at σ = 0 to
        x̄ at ``s1``. Default: the explicit lift of :func:`diffode.boundary.out_of_zero` (one
        evaluation); solvers that invert sampling exactly override it."""
        return out_of_zero(f, s1, x), state

    def stats(self, state: Any) -> dict[str, int]:
        """Counters to report in :class:`~diffode.solve.Solution` (empty for fixed-step solvers)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Euler(Solver):
    """Euler's method, x₁ = x₀ + (σ₁ - σ₀) f(σ₀, x₀). Order 1, 1 evaluation per step.

    On the DDIM ODE this is exactly deterministic DDIM (η = 0), reference §4.
    """

    name = "euler"
    order = 1
    evals_per_step = 1
    single_step = True

    def step(self, f: VectorField, s0: float, s1: float, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        return x + (s1 - s0) * f(s0, x), state


def gaussian_noise(x: Tensor, generator: torch.Generator | list[torch.Generator] | None) -> Tensor:
    """Standard normal noise shaped like ``x``; one generator for the batch or one per sample."""
    if isinstance(generator, (list, tuple)):
        return torch.cat(
            [torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype)[None] for g in generator]
        )
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
