"""Small independent references shared by the tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def wavy_model(scale: float = 1.0):
    """A deterministic, nonlinear stand-in for an ε-network: depends on every input and on t."""

    def model(x: Tensor, t: Tensor) -> Tensor:
        tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return scale * torch.sin(1.3 * x + 0.01 * tt) + 0.1 * torch.cos(0.7 * x.flip(-1))

    return model


def ddim_reference_loop(model, betas: Tensor, seq: list[int], x: Tensor) -> Tensor:
    """The DDIM reference code's ``generalized_steps`` with η = 0 (ᾱ_{-1} = 1), written plainly."""
    b = torch.cat([torch.zeros(1, dtype=torch.float64), betas.to(torch.float64)])
    a = (1 - b).cumprod(0)  # a[t + 1] = ᾱ_t, a[0] = 1

    seq_next = [-1, *seq[:-1]]
    for i, j in zip(reversed(seq), reversed(seq_next), strict=True):
        at, at_next = a[i + 1], a[j + 1]
        t = torch.full((x.shape[0],), float(i), dtype=torch.promote_types(x.dtype, torch.float32))
        et = model(x, t)
        x0 = (x - et * (1 - at).sqrt().to(x.dtype)) / at.sqrt().to(x.dtype)
        x = at_next.sqrt().to(x.dtype) * x0 + (1 - at_next).sqrt().to(x.dtype) * et
    return x


def reference_uniform(T: int, S: int) -> list[int]:
    """DDIM reference code "uniform" skip, limited to S entries."""
    return list(range(0, T, T // S))[:S]


def reference_quad(T: int, S: int) -> list[int]:
    """DDIM reference code "quad": int(v) for v in linspace(0, sqrt(0.8 T), S)**2."""
    return [int(s) for s in list(np.linspace(0, np.sqrt(T * 0.8), S) ** 2)]


def slope(steps, errors) -> float:
    """Least-squares slope of log(error) against log(steps)."""
    return float(np.polyfit(np.log(np.asarray(steps, float)), np.log(np.asarray(errors, float)), 1)[0])


def tiny_unet(diffusers, seed: int = 0, kind: str = "UNet2DModel", **extra):
    """A randomly initialised 8×8, 3-channel diffusers network (``kind``, a diffusers class name)
    small enough for CPU tests; ``extra`` adds or replaces constructor arguments (class embeddings,
    cross-attention blocks)."""
    torch.manual_seed(seed)
    config = dict(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return getattr(diffusers, kind)(**(config | extra))
