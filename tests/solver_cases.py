"""Every fixed-step solver of diffode, so that tests iterating over solvers cover a new one
automatically. Register a new fixed-step solver here (and its name in the registry)."""

from __future__ import annotations

from diffode.solvers import (
    BDIA,
    DDIM,
    DEIS,
    IPNDM,
    RK4,
    AdamsBashforth,
    DPMSolverPP,
    Euler,
    Heun,
    Heun3,
    Midpoint,
    Ralston,
    Solver,
    UniPC,
)

FIXED_STEP_SOLVERS: list[Solver] = [
    Euler(),
    DDIM(0.0),
    Heun(),
    Midpoint(),
    Ralston(),
    Heun3(),
    RK4(),
    AdamsBashforth(2),
    AdamsBashforth(3),
    AdamsBashforth(4),
    DPMSolverPP(1),
    DPMSolverPP(2),
    DPMSolverPP(3),
    DPMSolverPP(3, exact=True),
    DPMSolverPP(2, multistep=False),
    BDIA(),
    BDIA(sigma_data=0.5),
    *(UniPC(order, variant) for variant in ("bh1", "bh2") for order in (1, 2, 3)),
    IPNDM(4),
    DEIS(1),
    DEIS(2),
    DEIS(3),
    *(DEIS(order, basis="t", lower_order_final=False) for order in (1, 2, 3)),
]
"""One default-configured instance of each deterministic fixed-step solver; each one's ``name``
is its registry string."""


def solver_id(solver: Solver) -> str:
    """A readable pytest id: the solver's registry name."""
    return solver.name


def is_multistep(solver: Solver) -> bool:
    """Whether ``solver`` reuses past evaluations (one evaluation per step, history in its state)."""
    if isinstance(solver, BDIA | UniPC):
        return True  # UniPC's corrector reuses the previous step even at order 1
    if isinstance(solver, AdamsBashforth | DEIS):
        return solver.order > 1
    if isinstance(solver, IPNDM):
        return solver.max_order > 1
    return isinstance(solver, DPMSolverPP) and solver.multistep and solver.steps_order > 1


def needs_schedule(solver: Solver) -> bool:
    """Whether ``solver`` needs the field's schedule (DEIS's tAB interpolates in its time t)."""
    return isinstance(solver, DEIS) and solver.basis == "t" and solver.order > 1
