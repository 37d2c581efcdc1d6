"""The vector field of the DDIM ODE in σ/x̄ coordinates (reference §3):

    dx̄/dσ = ε_θ(x̄ / √(1+σ²), t(σ))

A field is any callable ``f(sigma, xbar) -> Tensor``; the argument order matches torchdiffeq,
so a field can be handed to ``odeint`` as is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from diffode.schedule import Schedule

Sigma = float | Tensor
"""σ as a Python float, a 0-d float tensor, or a ``(batch,)`` tensor (one σ per sample)."""

Model = Callable[[Tensor, Tensor], Tensor]
"""A network called as ``model(x, t)``: x of shape ``(batch, ...)`` in x-space, t a float tensor
of shape ``(batch,)`` in training-step units."""


@runtime_checkable
class VectorField(Protocol):
    """Anything callable as ``f(sigma, x) -> dx/dsigma`` with the shape and dtype of ``x``."""

    def __call__(self, sigma: Sigma, x: Tensor, /) -> Tensor: ...


class EpsField:
    """The DDIM ODE field of an ε-prediction network: f(σ, x̄) = ε_θ(x̄/√(1+σ²), t(σ)).

    Args:
        model: called as ``model(x, t)`` with x of shape ``(batch, ...)`` and t a float tensor of
            shape ``(batch,)`` in training-step units (0 … T-1 for a discrete schedule), exactly
            as diffusers' UNets and the DDIM reference code are called. t is float32, or float64
            when the state is float64.
        schedule: the schedule the model was trained with.

    Calling the field with σ (a float, a 0-d tensor or one σ per sample, ``(batch,)``) and x̄
    (``(batch, ...)``, any floating dtype) returns ε with the shape and dtype of x̄. Every call
    is counted in :attr:`nfe`.
    """

    def __init__(self, model: Model, schedule: Schedule) -> None:
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, t), got {type(model).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a diffode.Schedule, got {type(schedule).__name__}")
        if math.isinf(schedule.sigma_max):
            raise ValueError(
                "schedule has zero terminal SNR (sigma_max = inf), where an ε-prediction model is "
                "singular; use a v- or x0-prediction field, or rescale the schedule"
            )
        self.model = model
        self.schedule = schedule
        self.nfe = 0

    def network_inputs(self, sigma: Sigma, xbar: Tensor) -> tuple[Tensor, Tensor]:
        """The network's inputs (x, t) at (σ, x̄): x = x̄/√(1+σ²) and t = t(σ) of shape ``(batch,)``."""
        batch = xbar.shape[0]
        t_dtype = torch.promote_types(xbar.dtype, torch.float32)
        if isinstance(sigma, Tensor) and sigma.ndim > 0:
            sig = sigma.to(xbar.device, torch.float64)
            scale = torch.rsqrt(1 + sig * sig).to(xbar.dtype).reshape(-1, *([1] * (xbar.ndim - 1)))
            t = self.schedule.t(sig).to(t_dtype).expand(batch)
            return xbar * scale, t
        s = float(sigma)
        # a Python scalar keeps the default path free of host-device copies and syncs
        t_value = float(self.schedule.t(s))
        t = torch.full((batch,), t_value, dtype=t_dtype, device=xbar.device)
        return xbar * (1.0 / math.sqrt(1.0 + s * s)), t

    def __call__(self, sigma: Sigma, xbar: Tensor) -> Tensor:
        x, t = self.network_inputs(sigma, xbar)
        eps = self.model(x, t)
        self.nfe += 1
        if not isinstance(eps, Tensor) or eps.shape != xbar.shape:
            shape = tuple(eps.shape) if isinstance(eps, Tensor) else type(eps).__name__
            raise ValueError(
                f"model output must have the input's shape {tuple(xbar.shape)}, got {shape}; "
                "the model must return ε for every input element"
            )
        return eps.to(xbar.dtype)
