"""Data distributions whose optimal ε-network is known exactly (reference §10).

Data N(μ, c² I) in x-space gives p_σ = N(μ, (c² + σ²) I) in x̄ and the optimal network
ε*(x̄, σ) = σ (x̄ - μ)/(c² + σ²), with the closed-form ODE flow
x̄(σ) = μ + (x̄(σ₁) - μ) √((c² + σ²)/(c² + σ₁²)). A Gaussian mixture Σ π_k N(μ_k, c_k² I) has
ε* = σ Σ_k w_k(x̄) (x̄ - μ_k)/(c_k² + σ²) with posterior weights w_k computed in log space.

Each oracle is usable as a network ``model(x, t)`` for any schedule (:meth:`Oracle.model`) and
as a σ-space field (:meth:`Oracle.eps`). Oracle arithmetic is float64; ε and the exact flows take
the dtype of the input state, while log-densities stay float64, the precision they are
compared at.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from diffode.field import Model, Sigma
from diffode.schedule import Schedule
from diffode.validation import describe, require_finite, require_int, require_nonnegative, require_positive

_F64 = torch.float64


SIGMA_LIMIT = 1e150
"""The largest σ (and data standard deviation) an oracle takes: squares stay finite in float64."""


def _numbers(name: str, value: object) -> Tensor:
    """``value`` (a number or a tensor of them) as a float64 tensor; bools are refused, which
    ``torch.as_tensor`` would read as 0 and 1."""
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{name} must hold numbers, got {describe(value)}")
    return torch.as_tensor(value, dtype=_F64)


def _sigma(sigma: Sigma, x: Tensor, name: str = "sigma") -> Tensor:
    """σ as float64 on x's device, checked: finite, in [0, :data:`SIGMA_LIMIT`] (the exact
    formulas square it)."""
    s = _numbers(name, sigma).to(x.device)
    if not bool(((s >= 0) & (s <= SIGMA_LIMIT)).all()):  # False for NaN
        raise ValueError(
            f"{name} must be finite and in [0, {SIGMA_LIMIT:g}] for an oracle, got {describe(s)}"
        )
    return s


def _sigma_like(sigma: Sigma, x: Tensor, name: str = "sigma") -> Tensor:
    """:func:`_sigma`, shaped to broadcast against x (one σ per sample allowed)."""
    s = _sigma(sigma, x, name)
    return s.reshape(-1, *([1] * (x.ndim - 1))) if s.ndim > 0 else s


def _check_stds(stds: Tensor, name: str) -> None:
    """Data standard deviations: finite, positive, with squares that are normal float64 numbers."""
    if not bool(((stds >= 1.0 / SIGMA_LIMIT) & (stds <= SIGMA_LIMIT)).all()):
        raise ValueError(
            f"{name} must be finite and in [{1 / SIGMA_LIMIT:g}, {SIGMA_LIMIT:g}], got {describe(stds)}"
        )


class Oracle(ABC):
    """A data distribution with an exact optimal ε. ``event_shape`` is the shape of one sample."""

    def _check_state(self, x: Tensor, name: str = "x") -> None:
        """``x`` must be a batch of samples, shape ``(batch, *event_shape)``: broadcasting another
        shape against the means would give numbers for some other distribution."""
        if tuple(x.shape[1:]) != tuple(self.event_shape):
            raise ValueError(
                f"{name} must have shape (batch, {', '.join(map(str, self.event_shape))}) for this oracle, "
                f"got {tuple(x.shape)}"
            )

    event_shape: torch.Size

    @abstractmethod
    def eps(self, sigma: Sigma, xbar: Tensor) -> Tensor:
        """Optimal ε*(x̄, σ) for x̄ of shape ``(batch, *event_shape)``; dtype of ``xbar``."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` ≥ 1 draws from the data distribution, float64 of shape ``(n, *event_shape)``."""

    @abstractmethod
    def log_prob(self, x0: Tensor, sigma: Sigma = 0.0) -> Tensor:
        """log p_σ(x̄) of the x̄-space marginal at noise level σ (σ = 0: the data; one σ per sample
        allowed), float64 of shape ``(batch,)`` whatever the dtype of ``x0``."""

    def __call__(self, sigma: Sigma, xbar: Tensor) -> Tensor:
        """The oracle as a σ-space field f(σ, x̄) = ε*(x̄, σ), with no schedule involved."""
        return self.eps(sigma, xbar)

    def model(self, schedule: Schedule) -> Model:
        """The oracle as a network ``model(x, t)`` trained on ``schedule``: σ = σ(t), x̄ = x√(1+σ²)."""

        def optimal_network(x: Tensor, t: Tensor) -> Tensor:
            sigma = schedule.sigma(t.detach().to("cpu", _F64)).to(x.device)
            s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
            xbar = x.to(_F64) * torch.sqrt(1 + s * s)
            return self.eps(sigma, xbar).to(x.dtype)

        return optimal_network


class Gaussian(Oracle):
    """Data N(μ, c² I): ``mean`` has the shape of one sample, ``std`` = c > 0 is a scalar."""

    def __init__(self, mean: Tensor | float, std: float) -> None:
        self.mean = _numbers("mean", mean)
        # a scalar mean broadcasts over samples of any shape
        self._any_shape = self.mean.ndim == 0
        if self.mean.ndim == 0:
            self.mean = self.mean.reshape(1)
        require_finite("mean", self.mean)
        self.std = require_positive("std", std)
        _check_stds(torch.tensor(self.std, dtype=_F64), "std")
        self.event_shape = self.mean.shape

    def _check_state(self, x: Tensor, name: str = "x") -> None:
        if not self._any_shape:
            super()._check_state(x, name)

    def eps(self, sigma: Sigma, xbar: Tensor) -> Tensor:
        self._check_state(xbar, "xbar")
        s = _sigma_like(sigma, xbar)
        mu = self.mean.to(xbar.device)
        out = s * (xbar.to(_F64) - mu) / (self.std**2 + s * s)
        return out.to(xbar.dtype)

    def flow(self, xbar: Tensor, sigma_from: Sigma, sigma_to: Sigma) -> Tensor:
        """The exact ODE solution: x̄ at σ = ``sigma_to`` from x̄ at ``sigma_from`` (dtype of ``xbar``)."""
        self._check_state(xbar, "xbar")
        s0, s1 = _sigma_like(sigma_from, xbar, "sigma_from"), _sigma_like(sigma_to, xbar, "sigma_to")
        mu = self.mean.to(xbar.device)
        ratio = torch.sqrt((self.std**2 + s1 * s1) / (self.std**2 + s0 * s0))
        return (mu + (xbar.to(_F64) - mu) * ratio).to(xbar.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn((require_int("n", n, low=1), *self.event_shape), generator=generator, dtype=_F64)
        return self.mean + self.std * z

    def log_prob(self, x0: Tensor, sigma: Sigma = 0.0) -> Tensor:
        self._check_state(x0, "x0")
        s = _sigma(sigma, x0)
        var = self.std**2 + s * s  # a scalar, or one per sample
        # a scalar mean broadcasts over the sample: the dimension is the data's, not the mean's
        d = (x0.to(_F64) - self.mean.to(x0.device)).reshape(x0.shape[0], -1)
        return -0.5 * (d.pow(2).sum(1) / var + d.shape[1] * torch.log(2 * math.pi * var))


class GaussianMixture(Oracle):
    """Data Σ_k π_k N(μ_k, c_k² I): ``weights`` (K,), ``means`` (K, *event_shape), ``stds`` (K,)."""

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor) -> None:
        self.weights = _numbers("weights", weights)
        self.means = _numbers("means", means)
        self.stds = _numbers("stds", stds)
        k = self.weights.numel()
        if self.weights.ndim != 1 or not bool(((self.weights > 0) & torch.isfinite(self.weights)).all()):
            raise ValueError(
                f"weights must be a 1-D tensor of finite positive numbers, got {describe(self.weights)}"
            )
        if self.means.ndim < 2 or self.means.shape[0] != k:
            raise ValueError(f"means must have shape (K={k}, *event_shape), got {tuple(self.means.shape)}")
        require_finite("means", self.means)
        if self.stds.shape != (k,):
            raise ValueError(f"stds must have shape ({k},), got {describe(self.stds)}")
        _check_stds(self.stds, "stds")
        self.weights = self.weights / self.weights.sum()
        self.event_shape = self.means.shape[1:]

    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.15) -> GaussianMixture:
        """K equal-weight 2-D components on a circle, the usual toy benchmark."""
        k = require_int("k", k, low=1)
        radius = require_nonnegative("radius", radius)
        std = require_positive("std", std)
        angles = torch.arange(k, dtype=_F64) * (2 * math.pi / k)
        means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        return cls(torch.ones(k, dtype=_F64), means, torch.full((k,), std, dtype=_F64))

    def _component_terms(self, sigma: Sigma, xbar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(x̄ - μ_k, c_k² + σ², log posterior weights), shapes (B,K,D), (B,K,1), (B,K)."""
        self._check_state(xbar)
        s = _sigma(sigma, xbar).reshape(-1, 1)  # (B or 1, 1)
        flat = xbar.to(_F64).reshape(xbar.shape[0], 1, -1)  # (B, 1, D)
        mu = self.means.to(xbar.device).reshape(1, self.means.shape[0], -1)  # (1, K, D)
        var = self.stds.to(xbar.device) ** 2 + s * s  # (B or 1, K)
        diff = flat - mu
        dims = flat.shape[-1]
        logits = (
            torch.log(self.weights.to(xbar.device))
            - 0.5 * dims * torch.log(2 * math.pi * var)
            - 0.5 * diff.pow(2).sum(-1) / var
        )
        return diff, var.unsqueeze(-1), logits

    def eps(self, sigma: Sigma, xbar: Tensor) -> Tensor:
        diff, var, logits = self._component_terms(sigma, xbar)
        w = torch.softmax(logits, dim=1).unsqueeze(-1)
        s = torch.as_tensor(sigma, dtype=_F64, device=xbar.device).reshape(-1, 1)
        out = s * (w * diff / var).sum(1)
        return out.reshape(xbar.shape).to(xbar.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.weights, require_int("n", n, low=1), replacement=True, generator=generator)
        z = torch.randn((n, *self.event_shape), generator=generator, dtype=_F64)
        std = self.stds[k].reshape(-1, *([1] * len(self.event_shape)))
        return self.means[k] + std * z

    def log_prob(self, x0: Tensor, sigma: Sigma = 0.0) -> Tensor:
        _, _, logits = self._component_terms(sigma, x0)
        return torch.logsumexp(logits, dim=1)
