"""Input checks shared by the public entry points.

Every public function validates its arguments here, once, so that steppers and the solve
loop can trust their inputs. Each check raises ``ValueError`` or ``TypeError`` naming the
argument, the offending value and the fix.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import numpy as np
import torch
from torch import Tensor

SEED_LIMIT = 2**32
"""Seeds are below this: torch's CPU generator keeps 32 bits of a seed, so 2**32 would repeat
seed 0 (its draws, the noise of a sample, a training run)."""


def describe(value: Any, limit: int = 8) -> str:
    """A short, readable rendering of ``value`` for error messages."""
    if isinstance(value, Tensor):
        flat = value.detach().flatten().tolist()
        body = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in flat[:limit])
        more = ", ..." if len(flat) > limit else ""
        return f"tensor([{body}{more}], shape={tuple(value.shape)}, dtype={value.dtype})"
    return repr(value)


def require_bool(name: str, value: Any) -> bool:
    """``value`` as a Python bool: ``True``, ``False`` or a NumPy bool. Anything else (a string
    such as ``"false"``, 0 or 1) is a ``TypeError``: ``bool()`` would read ``"false"`` as True."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {describe(value)}")


def _as_int(value: Any) -> int | None:
    """``value`` as a Python int if it is one of any integer type (NumPy's, a 0-d integer
    tensor), ``None`` otherwise: bools (Python's, NumPy's or a bool tensor) and tensors with
    dimensions are not integers, though ``operator.index`` reads them as such."""
    if isinstance(value, (bool, np.bool_)) or (
        isinstance(value, Tensor) and (value.dtype == torch.bool or value.ndim)
    ):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def require_choice_int(name: str, value: Any, choices: tuple[int, ...]) -> int:
    """``value`` as a Python int (any integer type but bool) that is one of ``choices``, else
    ``ValueError`` listing them."""
    number = _as_int(value)
    if number is None or number not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {describe(value)}")
    return number


def require_tensor(name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_floating(name: str, value: Any) -> Tensor:
    tensor = require_tensor(name, value)
    if not tensor.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {tensor.dtype}; "
            f"convert it with {name}.float()"
        )
    return tensor


def require_finite(name: str, value: Tensor) -> Tensor:
    """Reject NaN and infinity. This synchronises with the device, so call it once per call."""
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); pass finite values")
    return value


def require_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int: any integer type (NumPy's, a 0-d integer tensor) but bool."""
    number = _as_int(value)
    if number is None:
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    value = number
    if low is not None and value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be at most {high}, got {value}")
    return value


def wide_float(device: torch.device) -> torch.dtype:
    """The widest floating dtype ``device`` computes in: float64, or float32 on MPS (which has
    no float64); for sums whose rounding the result would otherwise inherit."""
    return torch.float32 if device.type == "mps" else torch.float64


def require_device(name: str, value: Any) -> torch.device:
    """``value`` (a device or its name: ``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...) as a
    ``torch.device``; ``ValueError`` when it is not a device, not available here, or holds no
    data (``meta``). ``name`` is the argument or option the message names."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} {value!r} is not a torch device; use cpu, cuda, cuda:1, mps, ...") from None
    if device.type == "meta":
        raise ValueError(f"{name} {value}: meta tensors hold no values to sample; use cpu")
    if device.type != "cpu":
        backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
        is_available = getattr(backend, "is_available", None)
        if not callable(is_available) or not is_available():
            raise ValueError(f"{name} {value}: {device.type} is not available on this machine; use cpu")
    return device


def require_floating_dtype(name: str, value: Any) -> torch.dtype:
    """``value`` if it is a floating-point ``torch.dtype``; ``TypeError`` otherwise."""
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise TypeError(f"{name} must be a floating torch.dtype such as torch.float32, got {describe(value)}")
    return value


def _real(name: str, value: Any) -> float:
    """``value`` as a float: numbers.Real, i.e. Python's and NumPy's integers and floats
    (np.float32 from a sweep), not bool; an integer too large for a float is infinite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {describe(value)}")
    try:
        return float(value)
    except OverflowError:
        return math.inf


def require_nonnegative(name: str, value: Any) -> float:
    number = _real(name, value)
    if not number >= 0 or number == math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def require_positive(name: str, value: Any) -> float:
    number = _real(name, value)
    if not number > 0 or number == math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def check_sigma_grid(sigmas: Any, name: str = "sigmas") -> Tensor:
    """Return ``sigmas`` as a 1-D float64 CPU tensor after checking it is a valid σ grid.

    A grid is strictly monotone (either direction), non-negative, and finite except that a
    decreasing grid may start at +inf (zero-terminal-SNR schedules).
    """
    if isinstance(sigmas, (list, tuple)):
        if any(isinstance(s, (bool, np.bool_)) for s in sigmas):
            raise TypeError(f"{name} must hold numbers, got {sigmas!r}")
        sigmas = torch.tensor(sigmas, dtype=torch.float64)
    grid = require_floating(name, sigmas)
    if grid.requires_grad:
        # the grid is read as numbers (steps, stopping, the network's times): no gradient could
        # reach it, and a silent detach would make backward() fail far from here
        raise ValueError(
            f"{name} requires grad, but solvers take σ values as constants and no gradient reaches "
            f"them; pass {name}.detach()"
        )
    grid = grid.to("cpu", torch.float64)
    if grid.ndim != 1 or grid.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(grid.shape)}")
    if torch.isnan(grid).any() or (grid < 0).any():
        raise ValueError(f"{name} must hold σ values >= 0 without NaN, got {describe(grid)}")
    if grid.numel() > 1:
        diffs = grid[1:] - grid[:-1]
        decreasing = bool((diffs < 0).all())
        increasing = bool((diffs > 0).all())
        if not (decreasing or increasing):
            raise ValueError(
                f"{name} must be strictly monotone (all decreasing for sampling, all increasing "
                f"for encoding) with no repeated values, got {describe(grid)}"
            )
        finite_part = grid[1:] if decreasing else grid
        if torch.isinf(finite_part).any():
            raise ValueError(f"{name} may be infinite only in its first entry, got {describe(grid)}")
    elif torch.isinf(grid).any():
        raise ValueError(f"{name} must be finite, got {describe(grid)}")
    return grid


def check_generator(generator: Any, batch: int) -> None:
    """Randomness for a batch of ``batch`` samples: ``None``, one ``torch.Generator``, or a list
    of one per sample; ``TypeError`` or ``ValueError`` naming the fix otherwise."""
    if isinstance(generator, (list, tuple)):
        if not all(isinstance(g, torch.Generator) for g in generator):
            raise TypeError(f"generator lists must hold torch.Generator objects, got {describe(generator)}")
        if len(generator) != batch:
            raise ValueError(
                f"generator is a list of {len(generator)} generators for a batch of {batch}; pass one per "
                "sample, or a single torch.Generator for the whole batch"
            )
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            "generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), a list of one "
            f"per sample, or None, got {describe(generator)}"
        )
