"""diffode: DDIM sampling as numerical ODE solving.

In σ = √((1-ᾱ)/ᾱ) and x̄ = x/√ᾱ, deterministic DDIM is exactly Euler's method on
dx̄/dσ = ε_θ(x̄/√(1+σ²), t(σ)). diffode wraps an ε-network as that vector field and integrates
it with interchangeable solvers through one loop, :func:`solve`.
"""

from diffode import metrics, models, oracles, pretrained, solvers, study, testing
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
from diffode.sampling import sample
from diffode.schedule import ContinuousVPSchedule, Schedule
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
    "ModelField",
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
__version__ = "0.1.0"
