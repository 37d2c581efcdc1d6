"""The stepper contract shared by every solver.

A solver advances the state over one interval of the σ grid:

1. ``init(f, sigmas, x, generator)`` is called once per solve and returns the solver's state
   (multistep history, adaptive step size, random generator; ``None`` when there is none).
2. ``step(f, s0, s1, x, state) -> (x, state)`` advances x from σ = s0 to σ = s1 (Python floats,
   s1 > 0, either direction). It may call ``f`` several times and may take internal sub-steps
   (adaptive solvers) but never evaluates ``f`` at σ = 0.
3. ``order`` and ``evals_per_step`` are declared facts, checked by the test suite.
4. ``stats(state)`` reports solver counters (accepted and rejected steps) at the end.

Solvers are small stateless objects: one instance can serve many solves at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from diffode.field import VectorField


class Solver(ABC):
    """Base class of all solvers. Subclasses set ``name``, ``order`` and ``evals_per_step``."""

    name: str = ""
    order: int = 1
    evals_per_step: int = 1
    adaptive: bool = False
    stochastic: bool = False
    max_nfe: int | None = None
    """Evaluation budget of a whole solve (``None``: unlimited); :func:`diffode.solve` counts the
    evaluations and raises ``ValueError`` on the one past the budget."""

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> Any:
        """Prepare the per-solve state for the grid ``sigmas`` (float64, checked) and start ``x``."""
        return None

    @abstractmethod
    def step(self, f: VectorField, s0: float, s1: float, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Advance ``x`` from σ = ``s0`` to σ = ``s1``; return the new state and solver state."""

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

    def step(self, f: VectorField, s0: float, s1: float, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        return x + (s1 - s0) * f(s0, x), state


def step_to_zero(f: VectorField, sigma: float, x: Tensor) -> Tensor:
    """The first-order step from σ = ``sigma`` into σ = 0: x̂₀ = x̄ - σ f(σ, x̄), evaluating f at
    ``sigma`` only. A network field returns its own x̂₀ (``f.denoised``): for x̂₀-, v- and EDM
    models that avoids the cancellation in x̄ - σε, and for ε-models it is the reference code's
    x̂₀ = (x - √(1-ᾱ) ε)/√ᾱ."""
    denoised = getattr(f, "denoised", None)
    if callable(denoised):
        return denoised(sigma, x)
    return x - sigma * f(sigma, x)


def gaussian_noise(x: Tensor, generator: torch.Generator | list[torch.Generator] | None) -> Tensor:
    """Standard normal noise shaped like ``x``; one generator for the batch or one per sample."""
    if isinstance(generator, (list, tuple)):
        return torch.cat(
            [torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype)[None] for g in generator]
        )
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
