"""Peer implementations as test oracles and benchmark contestants: diffusers' scheduler loop and
k-diffusion's samplers, run on a diffode network model ``model(x, t)`` from x-space noise.

k-diffusion's package ``__init__`` imports its training modules (and their dependencies), so
:func:`k_diffusion_sampling` loads ``k_diffusion/sampling.py`` alone by file, with the one helper
it needs from ``k_diffusion.utils`` and without torchsde (only its Brownian-tree noise, unused
by the deterministic samplers, needs that).
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from diffode import EpsField, Schedule

Model = Callable[[Tensor, Tensor], Tensor]


def k_diffusion_sampling() -> types.ModuleType | None:
    """k-diffusion's ``sampling`` module, or ``None`` when k-diffusion is not installed."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    name = "_diffode_peer_k_diffusion_sampling"
    if name in sys.modules:
        return sys.modules[name]
    path = f"{next(iter(spec.submodule_search_locations))}/sampling.py"
    with open(path) as file:
        source = file.read()
    # the relative import and torchsde only serve the SDE samplers' noise; stub them
    source = source.replace("from . import utils", "").replace("import torchsde", "")
    module = types.ModuleType(name)
    module.__file__ = path
    module.utils = types.SimpleNamespace(  # type: ignore[attr-defined]
        append_dims=lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    )
    exec(compile(source, path, "exec"), module.__dict__)
    sys.modules[name] = module
    return module


def k_diffusion_sample(
    sampler: str, model: Model, schedule: Schedule, noise: Tensor, sigmas: Tensor, **kwargs: Any
) -> Tensor:
    """Run k-diffusion's ``sample_<sampler>`` on the σ grid ``sigmas`` (ending at 0) with the
    denoiser D(x̄; σ) = x̂₀ of ``model`` (the same field diffode integrates), from x-space noise."""
    module = k_diffusion_sampling()
    if module is None:
        raise ModuleNotFoundError("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    field = EpsField(model, schedule)

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        return field.denoised(float(sigma.reshape(-1)[0]), x)

    start = noise * math.sqrt(1 + float(sigmas[0]) ** 2)
    return getattr(module, f"sample_{sampler}")(denoiser, start, sigmas, disable=True, **kwargs)


def diffusers_sample(
    scheduler: Any, model: Model, noise: Tensor, stop: int | None = None, timesteps: list[int] | None = None
) -> Tensor:
    """diffusers' denoising loop (as its pipelines run it) with ``scheduler`` after
    ``set_timesteps`` (called again here with the same count, which resets its history), from
    x-space noise; with ``stop``, the latents after that many steps.

    Schedulers whose latents are x̄ (``init_noise_sigma`` > 1: Euler, Heun, LMS) start from
    noise·√(1+σ₀²) at their first σ exactly, not from their approximate ``init_noise_sigma``, so
    every peer starts from the same x-space noise. ``timesteps``: the scheduler's own custom
    timesteps (``set_timesteps(timesteps=...)``) instead of its spacing."""
    if timesteps is None:
        scheduler.set_timesteps(scheduler.num_inference_steps)
    else:
        scheduler.set_timesteps(timesteps=timesteps)
    if hasattr(scheduler, "sigmas") and noise.dtype == torch.float64:
        # diffusers stores its grid in float32; a float64 run keeps it in float64 (the values are
        # the same float32 table entries, only the step coefficients gain precision)
        scheduler.sigmas = scheduler.sigmas.to(torch.float64)
    first = float(scheduler.sigmas[0]) if hasattr(scheduler, "sigmas") else 0.0
    xbar_latents = float(scheduler.init_noise_sigma) > 1.0
    latents = noise * math.sqrt(1 + first**2) if xbar_latents else noise.clone()
    for t in scheduler.timesteps[:stop]:
        inp = scheduler.scale_model_input(latents, t)
        times = torch.full((noise.shape[0],), float(t), dtype=noise.dtype)
        latents = scheduler.step(model(inp, times), t, latents).prev_sample
    return latents


def diffusers_schedule(scheduler: Any) -> Schedule:
    """The diffode schedule of a diffusers scheduler's own (float32) ᾱ table, so that both
    sides read the same table."""
    return Schedule.from_alphas_cumprod(scheduler.alphas_cumprod.to(torch.float64))
