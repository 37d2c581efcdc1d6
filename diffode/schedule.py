"""Noise schedules: ᾱ in float64 and the map between network time t and ODE noise level σ.

σ = √((1-ᾱ)/ᾱ) is increasing in t. A discrete schedule (``T`` training steps, t = 0 … T-1,
the convention of diffusers and of the DDIM reference code) maps σ back to t by linear
interpolation in log σ between neighbouring table entries, returning the exact integer on a
table entry. The continuous VP schedule of score-SDE models has closed forms both ways.

Both implement :class:`NoiseSchedule`, the small interface the rest of diffode relies on: σ(t),
t(σ), the σ range and whether the schedule is a discrete table. Code that needs the table
(integer timesteps, the training loss) checks ``schedule.discrete`` and gets the table through
:func:`require_discrete`.
"""

from __future__ import annotations

import bisect
import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from diffode.validation import describe, require_int, require_nonnegative, require_positive

_F64 = torch.float64


def _as_f64(value: float | Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(_F64)
    return torch.tensor(value, dtype=_F64)


class NoiseSchedule(ABC):
    """What diffode needs of a noise schedule: the maps between network time t and σ.

    Attributes:
        discrete: ``True`` for a table of training steps t = 0 … T-1 (a :class:`Schedule`),
            ``False`` for a continuous time range (:class:`ContinuousVPSchedule`).
    """

    discrete: ClassVar[bool]

    @property
    @abstractmethod
    def sigma_min(self) -> float:
        """The smallest noise level the network was trained on."""

    @property
    @abstractmethod
    def sigma_max(self) -> float:
        """The largest noise level the network was trained on (∞ for zero terminal SNR)."""

    @property
    def sigma_max_finite(self) -> float:
        """The largest finite σ the network was trained on (σ_max unless it is ∞)."""
        return self.sigma_max

    @abstractmethod
    def sigma(self, t: float | Tensor) -> Tensor:
        """σ(t) in float64, same shape as ``t`` (network time units)."""

    @abstractmethod
    def t(self, sigma: float | Tensor) -> Tensor:
        """Network time t(σ) in float64, same shape as ``sigma``, clamped to the time range."""


def _require_beta(name: str, value: float) -> float:
    """A β endpoint of a named schedule: a number in (0, 1)."""
    if not 0 < require_positive(name, value) < 1:
        raise ValueError(f"{name} must lie in (0, 1), got {value}")
    return value


def require_discrete(
    schedule: NoiseSchedule, need: str = "this needs a discrete schedule (a table of training steps)"
) -> Schedule:
    """``schedule`` as the discrete table it is; ``ValueError(need)`` for a continuous one.

    ``need`` says what needs the table and what to do instead (the error message).
    """
    if not schedule.discrete:
        raise ValueError(need)
    if not isinstance(schedule, Schedule):
        raise TypeError(
            "a discrete schedule must be a diffode.Schedule (a table of ᾱ_t), "
            f"got {type(schedule).__name__}; "
            "build it with Schedule.from_alphas_cumprod"
        )
    return schedule


class Schedule(NoiseSchedule):
    """A discrete DDPM schedule given by its cumulative products ᾱ_t, t = 0 … T-1 (float64).

    Build one with a constructor: :meth:`linear`, :meth:`scaled_linear`, :meth:`cosine`,
    :meth:`from_betas`, :meth:`from_alphas_cumprod`, or :meth:`vp` for the continuous VP
    schedule. ᾱ_{T-1} = 0 (zero terminal SNR, σ_max = ∞) is allowed.

    Attributes:
        alphas_cumprod: ᾱ, float64 tensor of shape ``(T,)``, strictly decreasing, ᾱ_0 < 1.
        sigmas: σ_t = √((1-ᾱ_t)/ᾱ_t), float64 tensor of shape ``(T,)``, strictly increasing.
        T: number of training steps; the network is called with t in 0 … T-1.
    """

    discrete = True

    def __init__(self, alphas_cumprod: Tensor) -> None:
        ac = torch.as_tensor(alphas_cumprod).detach().to("cpu", _F64)
        if ac.ndim != 1 or ac.numel() < 2:
            raise ValueError(
                f"alphas_cumprod must be a 1-D tensor with at least 2 entries, got shape {tuple(ac.shape)}"
            )
        if torch.isnan(ac).any() or (ac[:-1] <= 0).any() or (ac[-1] < 0) or (ac >= 1).any():
            raise ValueError(
                "alphas_cumprod must lie in (0, 1) (the last entry may be 0 for zero terminal SNR), "
                f"got {describe(ac)}"
            )
        if not bool((ac[1:] < ac[:-1]).all()):
            raise ValueError(
                f"alphas_cumprod must be strictly decreasing in t, got {describe(ac)}; "
                "check that the betas are all in (0, 1)"
            )
        sigmas = torch.sqrt((1 - ac) / ac)
        # t(σ) inverts the table: neighbouring ᾱ one rounding apart can give equal σ, and a
        # denormal last ᾱ an infinite one that is not meant as zero terminal SNR
        good = sigmas[1:] > sigmas[:-1]
        if ac[-1] != 0:
            good &= torch.isfinite(sigmas[1:])
        if not bool(good.all()):
            t = int(torch.nonzero(~good)[0, 0])
            raise ValueError(
                f"alphas_cumprod gives σ = √((1-ᾱ)/ᾱ) that is not finite and strictly increasing in t "
                f"(at t = {t}, {t + 1}: ᾱ = {float(ac[t])!r}, {float(ac[t + 1])!r}); use ᾱ values that "
                "differ by more than round-off, and exactly 0 for a zero-terminal-SNR last entry"
            )
        self.alphas_cumprod = ac
        self.sigmas = sigmas
        self._log_sigmas = torch.log(self.sigmas)
        self.T = int(ac.numel())

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor) -> Schedule:
        """Schedule from ᾱ_t, shape ``(T,)``, strictly decreasing in (0, 1)."""
        return cls(torch.as_tensor(alphas_cumprod))

    @classmethod
    def from_betas(cls, betas: Tensor) -> Schedule:
        """Schedule from β_t, shape ``(T,)``, each in (0, 1); ᾱ_t = Π_{s≤t} (1 - β_s).

        β = 1 is accepted for the last entry only, which gives zero terminal SNR.
        """
        b = torch.as_tensor(betas).detach().to("cpu", _F64)
        if b.ndim != 1 or b.numel() < 2:
            raise ValueError(
                f"betas must be a 1-D tensor with at least 2 entries, got shape {tuple(b.shape)}"
            )
        if torch.isnan(b).any() or (b <= 0).any() or (b[:-1] >= 1).any() or b[-1] > 1:
            raise ValueError(f"betas must each lie in (0, 1), got {describe(b)}")
        ac = torch.cumprod(1 - b, dim=0)
        vanished = torch.nonzero(ac[:-1] == 0)
        if vanished.numel():
            raise ValueError(
                f"betas drive ᾱ_t = Π(1 - β) to 0 (float64 underflow) at t = {int(vanished[0, 0])} of "
                f"{b.numel()}; use smaller betas or fewer steps"
            )
        return cls(ac)

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
        """The DDPM linear schedule: β linear from ``beta_start`` to ``beta_end`` over T steps."""
        require_int("T", T, low=2)
        _require_beta("beta_start", beta_start)
        _require_beta("beta_end", beta_end)
        return cls.from_betas(torch.linspace(beta_start, beta_end, T, dtype=_F64))

    @classmethod
    def scaled_linear(cls, T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Schedule:
        """Latent-diffusion schedule: √β linear from √beta_start to √beta_end, squared."""
        require_int("T", T, low=2)
        _require_beta("beta_start", beta_start)
        _require_beta("beta_end", beta_end)
        return cls.from_betas(torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=_F64) ** 2)

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
        """Improved-DDPM cosine schedule: f(u) = cos²((u/T + s)/(1 + s)·π/2) and ᾱ_t = f(t+1)/f(0)
        for the training steps t = 0 … T-1 (step t is the (t+1)-th of T, as in IDDPM and diffusers).

        Betas are clipped at ``max_beta`` (Nichol & Dhariwal, 2021).
        """
        require_int("T", T, low=2)
        require_nonnegative("s", s)
        if not 0 < require_positive("max_beta", max_beta) <= 1:
            raise ValueError(f"max_beta must lie in (0, 1] (1 gives zero terminal SNR), got {max_beta}")
        steps = torch.arange(T + 1, dtype=_F64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = torch.clamp(1 - f[1:] / f[:-1], max=max_beta)
        return cls.from_betas(betas)

    @classmethod
    def vp(
        cls,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        eps: float = 1e-3,
        time_scale: float = 1.0,
    ) -> ContinuousVPSchedule:
        """Continuous VP schedule of score-SDE models: ᾱ(t) = exp(-½t²(β_max-β_min) - tβ_min).

        t ranges over [eps, 1]; the network is called with ``t * time_scale`` (use 999 for
        models trained with DDPM-style integer times).
        """
        return ContinuousVPSchedule(beta_min, beta_max, eps, time_scale)

    # ------------------------------------------------------------------ maps
    @property
    def sigma_min(self) -> float:
        """σ at the first training step, the smallest noise level the network was trained on."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """σ at the last training step (∞ for zero terminal SNR)."""
        return float(self.sigmas[-1])

    @property
    def sigma_max_finite(self) -> float:
        """The largest finite table entry: σ_max, or σ at T-2 with zero terminal SNR."""
        finite = self.sigmas[torch.isfinite(self.sigmas)]
        return float(finite[-1])

    def sigma(self, t: float | Tensor) -> Tensor:
        """σ(t) in float64, same shape as ``t``; exact table values at integer t, log-σ
        interpolation in between. t must lie in [0, T-1]."""
        tt = _as_f64(t)
        if torch.isnan(tt).any() or (tt < 0).any() or (tt > self.T - 1).any():
            raise ValueError(f"t must lie in [0, {self.T - 1}], got {describe(tt)}")
        low = torch.clamp(torch.floor(tt), max=self.T - 2).long()
        w = tt - low
        exact = w == 0
        log_s = torch.lerp(self._log_sigmas[low], self._log_sigmas[low + 1], w)
        # towards an infinite σ (zero terminal SNR) the log-σ line is infinite too (lerp gives NaN)
        interpolated = torch.where(torch.isinf(self._log_sigmas[low + 1]), math.inf, torch.exp(log_s))
        return torch.where(exact, self.sigmas[low], torch.where(w == 1, self.sigmas[low + 1], interpolated))

    def t(self, sigma: float | Tensor) -> Tensor:
        """Network time t(σ) in float64, same shape as ``sigma``: linear in log σ between table
        entries, the exact integer on an entry, clamped to [0, T-1] outside the table (σ ≤ 0
        included; NaN gives NaN: this runs on every evaluation and checks nothing)."""
        if isinstance(sigma, float | int) and sigma > 0:
            # a Python scalar (the per-evaluation path of the fields): a bisection on the table
            # in host arithmetic instead of half a dozen tensor operations
            if not hasattr(self, "_table_lists"):
                self._table_lists = (self.sigmas.tolist(), self._log_sigmas.tolist())
            sigmas, logs = self._table_lists
            entry = min(max(bisect.bisect_right(sigmas, sigma) - 1, 0), self.T - 2)
            if sigma == sigmas[entry]:
                return torch.tensor(float(entry), dtype=_F64)
            lo, hi = logs[entry], logs[entry + 1]
            if math.isinf(hi):  # zero terminal SNR: above the last finite entry is T-1
                return torch.tensor(float(entry + (sigma > sigmas[entry])), dtype=_F64)
            w = min(max((math.log(sigma) - lo) / (hi - lo), 0.0), 1.0)
            return torch.tensor(entry + w, dtype=_F64)
        s = _as_f64(sigma)
        table = self._log_sigmas.to(s.device)
        log_s = torch.log(s.clamp(min=0.0))
        idx = torch.searchsorted(table, log_s.reshape(-1), right=True).reshape(s.shape)
        low = torch.clamp(idx - 1, 0, self.T - 2)
        lo, hi = table[low], table[low + 1]
        w = torch.clamp((log_s - lo) / (hi - lo), 0.0, 1.0)
        # hi is +inf for zero terminal SNR: everything above the last finite entry maps to T-1
        w = torch.where(torch.isinf(hi) & (log_s > lo), torch.ones_like(w), w)
        return low.to(_F64) + w

    def __eq__(self, other: object) -> bool:
        """Equal when both are discrete tables with identical ᾱ."""
        if not isinstance(other, Schedule):
            return NotImplemented
        return torch.equal(self.alphas_cumprod, other.alphas_cumprod)

    def __hash__(self) -> int:
        return hash((self.T, self.sigma_min, self.sigma_max))

    def __repr__(self) -> str:
        return f"Schedule(T={self.T}, sigma_min={self.sigma_min:.4g}, sigma_max={self.sigma_max:.4g})"


class ContinuousVPSchedule(NoiseSchedule):
    """The continuous VP schedule of score-SDE models, t ∈ [eps, 1] (see :meth:`Schedule.vp`).

    σ(t)² = exp(½t²Δ + tβ_min) - 1 with Δ = β_max - β_min, inverted in closed form. The
    network is called with ``t * time_scale``.
    """

    discrete = False

    def __init__(self, beta_min: float, beta_max: float, eps: float, time_scale: float) -> None:
        require_positive("beta_min", beta_min)
        require_positive("beta_max", beta_max)
        require_positive("eps", eps)
        require_positive("time_scale", time_scale)
        if beta_max <= beta_min:
            raise ValueError(f"beta_max must exceed beta_min, got beta_min={beta_min}, beta_max={beta_max}")
        if eps >= 1:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        self.beta_min, self.beta_max, self.eps, self.time_scale = beta_min, beta_max, eps, time_scale

    @property
    def sigma_min(self) -> float:
        """σ(eps), the smallest noise level of the time range."""
        return float(self.sigma(self.eps * self.time_scale))

    @property
    def sigma_max(self) -> float:
        """σ(1), the largest noise level of the time range (finite)."""
        return float(self.sigma(self.time_scale))

    def sigma(self, t: float | Tensor) -> Tensor:
        """σ in float64 for network time ``t`` (in units of ``time_scale``)."""
        tt = _as_f64(t) / self.time_scale
        if torch.isnan(tt).any() or (tt < 0).any() or (tt > 1).any():
            raise ValueError(f"t must lie in [0, {self.time_scale}], got {describe(_as_f64(t))}")
        return torch.sqrt(torch.expm1(0.5 * tt * tt * (self.beta_max - self.beta_min) + tt * self.beta_min))

    def t(self, sigma: float | Tensor) -> Tensor:
        """Network time for σ in closed form, clamped to [eps, 1] (σ ≤ 0 included; NaN gives NaN)
        and scaled by ``time_scale``."""
        s = _as_f64(sigma).clamp(min=0.0)
        delta = self.beta_max - self.beta_min
        log1p_s2 = torch.log1p(s * s)
        tt = (torch.sqrt(self.beta_min**2 + 2 * delta * log1p_s2) - self.beta_min) / delta
        return torch.clamp(tt, self.eps, 1.0) * self.time_scale

    def _key(self) -> tuple[float, float, float, float]:
        return (self.beta_min, self.beta_max, self.eps, self.time_scale)

    def __eq__(self, other: object) -> bool:
        """Equal when both are continuous VP schedules with the same parameters."""
        if not isinstance(other, ContinuousVPSchedule):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"ContinuousVPSchedule(beta_min={self.beta_min}, beta_max={self.beta_max}, eps={self.eps}, "
            f"sigma_min={self.sigma_min:.4g}, sigma_max={self.sigma_max:.4g})"
        )
