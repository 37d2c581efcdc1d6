"""``solve``: the one integration loop of diffode.

Every front door (sampling, encoding, studies, the CLI) and every fixed-step or adaptive solver
runs through this loop. It validates its inputs once, walks the σ grid, takes the step into
σ = 0 itself (first order, x̄ → x̂₀, so the field is never evaluated at σ = 0), counts evaluations and
reports through a typed callback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffode.field import Sigma
from tqdm import tqdm
from diffode.solvers.base import Solver, step_to_zero
from diffode.solvers.registry import get_solver
from diffode.validation import check_sigma_grid, require_finite, require_floating

Generator = torch.Generator | list[torch.Generator] | None


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after each step: step ``index`` took the state from σ = ``sigma`` to
    σ = ``sigma_next``; ``x`` is the new state (x̄ on the DDIM ODE, caller's dtype); ``nfe`` the
    evaluations so far."""

    index: int
    sigma: float
    sigma_next: float
    x: Tensor
    nfe: int


Callback = Callable[[StepInfo], None]


@dataclass
class Solution:
    """Result of :func:`solve`.

    Attributes:
        x: the state at the last grid point, shape and dtype of the input state.
        nfe: evaluations of ``f`` made by this solve.
        sigmas: the float64 σ grid that was followed, shape ``(N,)``.
        xs: with ``save=True``, the states at every grid point, shape ``(N, *x.shape)``.
        stats: solver counters, e.g. ``{"accepted": ..., "rejected": ...}`` for adaptive solvers.
    """

    x: Tensor
    nfe: int
    sigmas: Tensor
    xs: Tensor | None = None
    stats: dict[str, int] = field(default_factory=dict)


class _Counted:
    """Wraps ``f`` to count its evaluations for this solve alone: the one evaluation counter of
    diffode. It enforces the solver's ``max_nfe`` budget (adaptive solvers), raising ``ValueError``
    on the evaluation past it."""

    def __init__(self, f: Callable[[Sigma, Tensor], Tensor], solver: Solver) -> None:
        self.f = f
        self.nfe = 0
        self.solver = solver
        self.limit = solver.max_nfe

    def __call__(self, sigma: Sigma, x: Tensor) -> Tensor:
        if self.limit is not None and self.nfe >= self.limit:
            where = sigma if isinstance(sigma, float) else float(torch.as_tensor(sigma).max())
            raise ValueError(
                f"{self.solver!r} used its max_nfe={self.limit} evaluations before reaching the end of "
                f"the grid (next evaluation at σ = {where:.6g}); loosen rtol/atol or raise max_nfe"
            )
        self.nfe += 1
        return self.f(sigma, x)

    def denoised(self, sigma: float, x: Tensor) -> Tensor:
        """The step into σ = 0 (:func:`~diffode.solvers.base.step_to_zero`), counted once."""
        self.nfe += 1
        return step_to_zero(self.f, sigma, x)


def solve(
    f: Callable[[Sigma, Tensor], Tensor],
    x: Tensor,
    sigmas: Tensor,
    solver: str | Solver = "euler",
    *,
    generator: Generator = None,
    callback: Callback | None = None,
    save: bool = False,
    progress: bool = False,
) -> Solution:
    """Integrate ``dx/dσ = f(σ, x)`` along the σ grid ``sigmas``.

    Args:
        f: any callable ``f(sigma, x)`` returning a tensor shaped like ``x``; σ arrives as a
            Python float (or a ``(batch,)`` float64 tensor from per-sample adaptive solvers).
        x: the state at ``sigmas[0]``, a floating tensor of shape ``(batch, ...)``; its dtype
            and device are kept throughout.
        sigmas: strictly monotone σ grid (converted to float64): decreasing to sample, increasing
            to encode. A step into σ = 0 is taken as x̄ - σ f(σ, x̄) (first order), so ``f`` is
            never evaluated at σ = 0; an increasing grid must start above 0.
        solver: a :class:`~diffode.solvers.Solver` or its name (see ``diffode.solvers.solver_names()``).
        generator: randomness for stochastic solvers: a ``torch.Generator`` or one per sample.
        callback: called with a :class:`StepInfo` after every step.
        save: keep the state at every grid point in ``Solution.xs``.
        progress: draw a progress bar on stderr.

    Returns:
        A :class:`Solution`. Raises ``ValueError`` when the state becomes non-finite, naming the
        first step where it did (checked once, after the loop, to avoid a device sync per step).
    """
    x = require_finite("x", require_floating("x", x))
    if x.ndim == 0:
        raise ValueError("x must have a leading batch dimension, got a 0-d tensor")
    grid = check_sigma_grid(sigmas)
    stepper = get_solver(solver)
    if grid.numel() > 1 and grid[1] > grid[0] and grid[0] == 0:
        raise ValueError(
            "sigmas starts at 0 and increases, which would evaluate f at σ = 0; start the encoding "
            "grid at a positive σ such as schedule.sigma_min"
        )
    counted = _Counted(f, stepper)
    state = stepper.init(counted, grid, x, generator)
    values = grid.tolist()
    saved = [x] if save else []
    finite_flags: list[Tensor] = []
    n_steps = len(values) - 1
    for i in tqdm(range(n_steps), desc=stepper.name or "solve", disable=not progress):
        s0, s1 = values[i], values[i + 1]
        if s1 == 0.0:
            x = step_to_zero(counted, s0, x)
        else:
            x, state = stepper.step(counted, s0, s1, x, state)
        finite_flags.append(torch.isfinite(x).all())
        if save:
            saved.append(x)
        if callback is not None:
            callback(StepInfo(i, s0, s1, x, counted.nfe))
    if finite_flags:
        flags = torch.stack(finite_flags).cpu()
        if not bool(flags.all()):
            bad = int((~flags).nonzero()[0, 0])
            raise ValueError(
                f"the state became non-finite at step {bad} (σ {values[bad]:.6g} -> {values[bad + 1]:.6g}); "
                "check that the model returns finite values and that the solver is stable on this grid"
            )
    return Solution(
        x=x,
        nfe=counted.nfe,
        sigmas=grid,
        xs=torch.stack(saved) if save else None,
        stats=stepper.stats(state),
    )
