"""diffode: DDIM sampling as numerical ODE solving.

In σ = √((1-ᾱ)/ᾱ) and x̄ = x/√ᾱ, deterministic DDIM is exactly Euler's method on
dx̄/dσ = ε_θ(x̄/√(1+σ²), t(σ)). diffode wraps an ε-network as that vector field and integrates
it with interchangeable solvers through one loop, :func:`solve`.

The optional, heavier parts (``metrics``, ``pretrained``, ``study``, ``testing``, which needs
hypothesis) are imported on first use of ``diffode.<name>``, so ``import diffode`` stays light.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import TYPE_CHECKING

from diffode import models, oracles, solvers
from diffode.conditioning import Guidance
from diffode.diffusers_interop import DiffusersModel, from_diffusers, load_diffusers
from diffode.encoding import Encoding, decode, encode
from diffode.field import (
    PREDICTIONS,
    DenoiserField,
    EpsField,
    ModelField,
    ScoreField,
    VectorField,
    VField,
    X0Field,
    field_for,
)
from diffode.grids import karras_sigmas, sigma_grid, spaced_timesteps
from diffode.interpolation import interpolate
from diffode.likelihood import Likelihood, likelihood
from diffode.sampling import sample
from diffode.schedule import ContinuousVPSchedule, NoiseSchedule, Schedule
from diffode.solve import Solution, StepInfo, solve
from diffode.solvers import DDIM, Euler, Solver

__all__ = [
    "DDIM",
    "PREDICTIONS",
    "ContinuousVPSchedule",
    "DenoiserField",
    "DiffusersModel",
    "Encoding",
    "EpsField",
    "Euler",
    "Guidance",
    "Likelihood",
    "ModelField",
    "NoiseSchedule",
    "Schedule",
    "ScoreField",
    "Solution",
    "Solver",
    "StepInfo",
    "VField",
    "VectorField",
    "X0Field",
    "decode",
    "encode",
    "field_for",
    "from_diffusers",
    "interpolate",
    "karras_sigmas",
    "likelihood",
    "load_diffusers",
    "metrics",
    "models",
    "oracles",
    "pretrained",
    "sample",
    "sigma_grid",
    "solve",
    "solvers",
    "spaced_timesteps",
    "study",
    "testing",
]

if TYPE_CHECKING:
    from diffode import metrics, pretrained, study, testing

_LAZY = ("metrics", "pretrained", "study", "testing")

try:
    # single source: the version in pyproject.toml, as installed
    __version__ = version("diffode")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> ModuleType:
    """Import the optional submodules on first access (PEP 562)."""
    if name in _LAZY:
        module = importlib.import_module(f"diffode.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'diffode' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
