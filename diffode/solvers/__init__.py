"""Interchangeable solvers for the DDIM ODE (and any ODE ``dx/dσ = f(σ, x)``)."""

from diffode.solvers.adaptive import Bosh3, Dopri5, EmbeddedPair, EmbeddedRungeKutta
from diffode.solvers.backends import Scipy, Torchdiffeq
from diffode.solvers.base import Euler, Solver, UnstableStepError
from diffode.solvers.controller import IController
from diffode.solvers.ddim import DDIM
from diffode.solvers.exponential import DEIS, DPMSolverPP
from diffode.solvers.multistep import IPNDM, AdamsBashforth
from diffode.solvers.registry import get_solver, solver_names, without_stability_check
from diffode.solvers.reversible import BDIA, InverseOf, InversionError
from diffode.solvers.runge_kutta import (
    RK4,
    ButcherTableau,
    Heun,
    Heun3,
    Midpoint,
    Ralston,
    RungeKutta,
    rk_stages,
)
from diffode.solvers.unipc import UniPC

__all__ = [
    "BDIA",
    "DDIM",
    "DEIS",
    "IPNDM",
    "RK4",
    "AdamsBashforth",
    "Bosh3",
    "ButcherTableau",
    "DPMSolverPP",
    "Dopri5",
    "EmbeddedPair",
    "EmbeddedRungeKutta",
    "Euler",
    "Heun",
    "Heun3",
    "IController",
    "InverseOf",
    "InversionError",
    "Midpoint",
    "Ralston",
    "RungeKutta",
    "Scipy",
    "Solver",
    "Torchdiffeq",
    "UniPC",
    "UnstableStepError",
    "get_solver",
    "rk_stages",
    "solver_names",
    "without_stability_check",
]
