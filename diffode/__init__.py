"""diffode: DDIM sampling as numerical ODE solving.

In σ = √((1-ᾱ)/ᾱ) and x̄ = x/√ᾱ, deterministic DDIM is exactly Euler's method on
dx̄/dσ = ε_θ(x̄/√(1+σ²), t(σ)). diffode wraps an ε-network as that vector field and integrates
it with interchangeable solvers through one loop, :func:`solve`.
"""

from diffode import oracles, solvers
from diffode.field import EpsField, VectorField
from diffode.grids import karras_sigmas, sigma_grid, spaced_timesteps
from diffode.sampling import sample
from diffode.schedule import ContinuousVPSchedule, Schedule
from diffode.solve import Solution, StepInfo, solve
from diffode.solvers import DDIM, Euler, Solver

__all__ = [
    "DDIM",
    "ContinuousVPSchedule",
    "EpsField",
    "Euler",
    "Schedule",
    "Solution",
    "Solver",
    "StepInfo",
    "VectorField",
    "karras_sigmas",
    "oracles",
    "sample",
    "sigma_grid",
    "solve",
    "solvers",
    "spaced_timesteps",
]
__version__ = "0.1.0"
