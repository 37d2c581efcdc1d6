"""σ grids: the one description of a discretisation.

A grid is a strictly monotone float64 tensor of σ values. Sampling grids decrease and end at
σ = 0; the step into σ = 0 is taken by the solve loop without calling the network there.
Timestep spacings follow the DDIM reference code and diffusers (reference §6), Karras et al.
(2022) give the ρ-spaced grid.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from diffode.schedule import ContinuousVPSchedule, Schedule
from diffode.validation import check_sigma_grid, describe, require_int, require_positive

TIMESTEP_SPACINGS = ("uniform", "leading", "quadratic", "trailing", "linspace", "karras")

GridSpec = str | Tensor


def spaced_timesteps(schedule: Schedule, steps: int, spacing: str = "uniform") -> Tensor:
    """Integer training timesteps for ``steps`` sampling steps, descending, int64 of shape ``(S,)``.

    Spacings (T = ``schedule.T``, S = ``steps``):

    - ``"uniform"`` (= ``"leading"``): ``arange(S) * (T // S)``, the DDIM reference code's
      ``range(0, T, T // S)`` limited to S entries (identical when S divides T), and diffusers'
      ``"leading"``.
    - ``"quadratic"``: ``int(v)`` for v in ``linspace(0, √(0.8 T), S)²`` (the reference code's
      ``"quad"``). Where truncation repeats a timestep the repeat is dropped, so fewer than S
      steps are taken; the reference code takes a zero-length step there, an identity.
    - ``"trailing"``: ``round(T - i T/S) - 1`` for i = 0 … S-1 (diffusers).
    - ``"linspace"``: ``round(linspace(0, T-1, S))`` (diffusers).
    """
    if isinstance(schedule, ContinuousVPSchedule):
        raise ValueError(
            f"timesteps={spacing!r} needs a discrete schedule; for a continuous VP schedule pass "
            "timesteps='karras' or an explicit float tensor of σ values"
        )
    T = schedule.T
    require_int("steps", steps, low=1, high=T)
    if spacing in ("uniform", "leading"):
        ts = np.arange(steps, dtype=np.int64) * (T // steps)
    elif spacing == "quadratic":
        ts = np.unique(np.array([int(v) for v in np.linspace(0, math.sqrt(T * 0.8), steps) ** 2]))
    elif spacing == "trailing":
        ts = np.round(T - np.arange(steps) * (T / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, steps)).astype(np.int64)
    else:
        raise ValueError(f"timesteps spacing must be one of {TIMESTEP_SPACINGS[:-1]}, got {spacing!r}")
    return torch.from_numpy(np.sort(ts)[::-1].copy())


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) σ_i = (σ_max^{1/ρ} + i/(S-1)(σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ, float64 ``(S,)``.

    Descending from ``sigma_max`` to ``sigma_min``; no final zero (see :func:`sigma_grid`).
    """
    require_int("steps", steps, low=1)
    require_positive("sigma_min", sigma_min)
    require_positive("sigma_max", sigma_max)
    require_positive("rho", rho)
    if sigma_min >= sigma_max and steps > 1:
        raise ValueError(f"sigma_min must be below sigma_max, got {sigma_min} and {sigma_max}")
    if steps == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sigmas_from_timesteps(schedule: Schedule, ts: Tensor) -> Tensor:
    """σ grid (float64, ``(S+1,)``) for descending integer timesteps, with the final σ = 0 appended."""
    ts = check_timesteps(schedule, ts)
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([schedule.sigmas[ts], zero])


def check_timesteps(schedule: Schedule, ts: Tensor) -> Tensor:
    """Validate explicit integer timesteps: 1-D, strictly decreasing, each in 0 … T-1."""
    if isinstance(schedule, ContinuousVPSchedule):
        raise ValueError("integer timesteps need a discrete schedule; pass σ values as a float tensor")
    if ts.ndim != 1 or ts.numel() == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D tensor, got shape {tuple(ts.shape)}")
    ts = ts.to("cpu", torch.int64)
    if (ts < 0).any() or (ts > schedule.T - 1).any():
        raise ValueError(f"timesteps must lie in 0 … {schedule.T - 1}, got {describe(ts)}")
    if ts.numel() > 1 and not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(
            f"timesteps must be strictly decreasing with no duplicates, got {describe(ts)}; "
            "sort them with torch.sort(ts, descending=True) and drop repeats"
        )
    return ts


def sigma_grid(
    schedule: Schedule,
    steps: int | None = None,
    timesteps: GridSpec = "uniform",
    *,
    rho: float = 7.0,
) -> Tensor:
    """The decreasing σ grid for sampling, float64 ``(S+1,)``, ending with σ = 0.

    Args:
        schedule: the noise schedule.
        steps: number of network-evaluating steps S; required for string spacings, must be
            ``None`` or equal to the length of an explicit tensor.
        timesteps: a spacing name (see :func:`spaced_timesteps`, plus ``"karras"``), a strictly
            decreasing integer tensor of training timesteps, or a strictly decreasing float
            tensor of σ values (a trailing 0 is appended when absent).
        rho: the Karras ρ.
    """
    if isinstance(timesteps, Tensor):
        if timesteps.ndim != 1 or timesteps.numel() == 0:
            raise ValueError(f"timesteps must be a non-empty 1-D tensor, got shape {tuple(timesteps.shape)}")
        n = timesteps.numel() - int(timesteps.is_floating_point() and float(timesteps[-1]) == 0.0)
        if steps is not None and steps != n:
            raise ValueError(
                f"steps={steps} disagrees with the {n} steps of the explicit timesteps tensor; "
                "pass steps=None"
            )
        if not timesteps.is_floating_point():
            return sigmas_from_timesteps(schedule, timesteps)
        grid = check_sigma_grid(timesteps, "timesteps")
        if grid.numel() > 1 and grid[1] > grid[0]:
            raise ValueError(f"timesteps given as σ values must decrease for sampling, got {describe(grid)}")
        if float(grid[-1]) != 0.0:
            grid = torch.cat([grid, torch.zeros(1, dtype=torch.float64)])
        return grid
    if not isinstance(timesteps, str):
        raise TypeError(f"timesteps must be a spacing name or a tensor, got {type(timesteps).__name__}")
    if steps is None:
        raise ValueError(f"steps is required with timesteps={timesteps!r}; pass steps=S")
    if timesteps == "karras":
        sig = karras_sigmas(schedule.sigma_min, _finite_sigma_max(schedule), steps, rho)
        return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
    if timesteps not in TIMESTEP_SPACINGS:
        raise ValueError(f"timesteps must be one of {TIMESTEP_SPACINGS} or a tensor, got {timesteps!r}")
    return sigmas_from_timesteps(schedule, spaced_timesteps(schedule, steps, timesteps))


def _finite_sigma_max(schedule: Schedule) -> float:
    finite = schedule.sigmas[torch.isfinite(schedule.sigmas)]
    return float(finite[-1])
