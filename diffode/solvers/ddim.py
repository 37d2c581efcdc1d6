"""The generalized DDIM sampler of Song, Meng & Ermon (2021), eq. 12 and 16, in σ/x̄ coordinates."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from diffode.field import VectorField
from diffode.solvers.base import Solver, gaussian_noise
from diffode.validation import require_bool, require_nonnegative


class DDIM(Solver):
    """Generalized DDIM step with noise scale η. Order 1 (η = 0), 1 evaluation per step.

    From σ₀ to σ₁ < σ₀ with ε = f(σ₀, x̄) and x̂₀ = x̄ - σ₀ε, the paper's update
    x_{t'} = α' x̂₀ + √(1-ᾱ'-σ_η²) ε + σ_η z, divided by α' = 1/√(1+σ₁²), reads

        x̄₁ = x̂₀ + c ε + d z,   d = η σ₁ √(σ₀² - σ₁²)/σ₀,   c = √(σ₁² - d²),

    since σ_η² = η² (1-ᾱ')/(1-ᾱ) (1-ᾱ/ᾱ') and d = σ_η/α'. η = 0 gives c = σ₁, d = 0: exactly
    Euler (deterministic DDIM); η = 1 is DDPM's ancestral sampler on the subsequence.

    ``sigma_hat=True`` is the paper's σ̂ variant ("DDPM, larger variance"): the η = 1 mean with
    noise σ̂ = √(1 - ᾱ/ᾱ'), i.e. d = σ̂/α' = √((σ₀² - σ₁²)(1+σ₁²)/(1+σ₀²)), as in the reference
    code's ``ddpm_steps`` without its clipping of x̂₀. The final step into σ = 0 adds no noise in
    every variant (σ_η = 0 there; the reference code masks σ̂ at t = 0).

    Randomness comes from the ``generator`` given to ``solve``/``sample``: one
    ``torch.Generator`` for the batch, or a list with one per sample. η > 0 only runs forward
    (σ decreasing).
    """

    name = "ddim"
    order = 1
    evals_per_step = 1
    single_step = True

    def __init__(self, eta: float = 0.0, *, sigma_hat: bool = False) -> None:
        self.eta = require_nonnegative("eta", eta)
        self.sigma_hat = require_bool("sigma_hat", sigma_hat)
        if self.sigma_hat and self.eta not in (0.0, 1.0):
            raise ValueError(
                f"DDIM(sigma_hat=True) is the σ̂ variant, whose step is η = 1's mean with noise σ̂: it "
                f"has no η of its own, got eta={self.eta}; leave eta out"
            )
        if self.sigma_hat:
            # one name for one sampler (run manifests compare reprs)
            self.eta = 1.0
        self.stochastic = self.sigma_hat or self.eta > 0

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> Any:
        if self.stochastic and sigmas.numel() > 1 and sigmas[-1] > sigmas[0]:
            raise ValueError(
                f"{self!r} is stochastic and cannot run on an increasing σ grid (encoding); "
                "use eta=0 (deterministic DDIM) to encode"
            )
        if self.eta > 1 and not self.sigma_hat:
            s0, s1 = sigmas[:-1], sigmas[1:]
            d2 = self.eta**2 * s1**2 * (s0**2 - s1**2) / s0**2
            if bool((d2 > s1**2).any()):
                raise ValueError(
                    f"eta={self.eta} makes the DDIM noise exceed the target noise level on this grid "
                    "(1 - ᾱ' - σ_η² < 0); use eta <= 1"
                )
        return generator

    def step(self, f: VectorField, s0: float, s1: float, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        eps = f(s0, x)
        if self.sigma_hat:
            d = math.sqrt((s0 * s0 - s1 * s1) * (1 + s1 * s1) / (1 + s0 * s0))
            c = s1 * s1 / s0
        else:
            d = self.eta * s1 * math.sqrt(max(s0 * s0 - s1 * s1, 0.0)) / s0
            c = math.sqrt(s1 * s1 - d * d)
        x_next = x + (c - s0) * eps
        if d > 0:
            x_next = x_next + d * gaussian_noise(x, state)
        return x_next, state

    def __repr__(self) -> str:
        return f"DDIM(eta={self.eta}{', sigma_hat=True' if self.sigma_hat else ''})"


__all__ = ["DDIM"]
