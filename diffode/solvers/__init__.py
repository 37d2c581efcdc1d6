"""Interchangeable solvers for the DDIM ODE (and any ODE ``dx/dσ = f(σ, x)``)."""

from diffode.solvers.base import Euler, Solver
from diffode.solvers.ddim import DDIM
from diffode.solvers.registry import get_solver, solver_names

__all__ = ["DDIM", "Euler", "Solver", "get_solver", "solver_names"]
