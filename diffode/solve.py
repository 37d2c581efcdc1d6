"""``solve``: the one integration loop of diffode.

Every front door (sampling, encoding, studies, the CLI) and every fixed-step or adaptive solver
runs through this loop. It validates its inputs once, walks the σ grid, takes the steps at the
ends of the σ axis through :mod:`diffode.boundary` (into σ = 0, out of σ = 0, out of σ = ∞, so
the field is never evaluated at σ = 0), counts evaluations and reports through a typed callback.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from diffode import boundary
from diffode.adjoint import RandomStates, checkpointed, continuous_adjoint, first_derivatives_only
from diffode.field import ModelField, Sigma
from diffode.solvers.base import Solver
from diffode.solvers.registry import get_solver
from diffode.validation import check_generator, check_sigma_grid, describe, require_finite, require_floating

Generator = torch.Generator | list[torch.Generator] | None


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after each step: step ``index`` took the state from σ = ``sigma`` to
    σ = ``sigma_next``; ``x`` is the new state (x̄ on the DDIM ODE, caller's dtype); ``nfe`` the
    evaluations so far; ``denoised`` the field's x̂₀ at the step's start (shape and dtype of
    ``x``), or ``None`` for a plain callable field, for steps that made no evaluation at their
    start (per-sample adaptive control, a reversible solver's given companion) and for the
    torchdiffeq backend's steps, whose σ arrives as a tensor in the state's dtype (its first
    step's x̂₀ is that of the initial step size's evaluation at its start)."""

    index: int
    sigma: float
    sigma_next: float
    x: Tensor
    nfe: int
    denoised: Tensor | None = None


Callback = Callable[[StepInfo], None]


@dataclass
class Solution:
    """Result of :func:`solve`.

    Attributes:
        x: the state at the last grid point, shape and dtype of the input state.
        nfe: evaluations of ``f`` made by this solve.
        sigmas: the float64 σ grid that was followed, shape ``(N,)``.
        xs: with ``save=True``, the states at every grid point, shape ``(N, *x.shape)``.
        stats: solver counters, e.g. ``{"accepted": ..., "rejected": ...}`` for adaptive solvers;
            empty where torchdiffeq's ``odeint_adjoint`` integrated (``adjoint=True`` with an
            adaptive solver), which reports no steps.
    """

    x: Tensor
    nfe: int
    sigmas: Tensor
    xs: Tensor | None = None
    stats: dict[str, int] = field(default_factory=dict)


class _Budget:
    """The evaluations of one solve, counted against the solver's ``max_nfe``."""

    def __init__(self, solver: Solver) -> None:
        self.solver = solver
        self.limit = solver.max_nfe
        self.nfe = 0
        self.intervals = 0  # grid intervals an adaptive solver integrates (set by solve)

    def spend(self, sigma: Sigma) -> None:
        if self.limit is not None and self.nfe >= self.limit:
            where = sigma if isinstance(sigma, float) else float(torch.as_tensor(sigma).max())
            # every interval takes at least one attempted step, whatever the tolerances
            least = self.intervals * self.solver.evals_per_step
            dense = (
                f", or pass fewer grid points: its {self.intervals} intervals take at least one step of "
                f"{self.solver.evals_per_step} evaluations each ({least})"
                if least >= self.limit / 2
                else ""
            )
            raise ValueError(
                f"{self.solver!r} used its max_nfe={self.limit} evaluations before reaching the end of "
                f"the grid (next evaluation at σ = {where:.6g}); loosen rtol/atol or raise max_nfe{dense}"
            )
        self.nfe += 1


class _Counted:
    """The field as steppers see it in one solve (a :class:`~diffode.field.PredictingField`).

    It is diffode's one evaluation counter, enforces the solver's ``max_nfe`` budget, checks that
    a plain callable returns the state's shape and dtype, and, when a callback listens, keeps the
    x̂₀ of the evaluation at each step's start for :attr:`StepInfo.denoised`.
    """

    def __init__(self, f: Callable[[Sigma, Tensor], Tensor], solver: Solver, watch: bool) -> None:
        self.f = f
        self.model = f if isinstance(f, ModelField) else None
        self.budget = _Budget(solver)
        self.watch = watch and self.model is not None
        # x̂₀ bookkeeping for the callback: the newest evaluation at a scalar σ, and the first one
        # at the current step's start
        self._last: tuple[float, Tensor] | None = None
        self._start = math.nan
        self._fresh: Tensor | None = None
        self._carried: Tensor | None = None

    @property
    def nfe(self) -> int:
        return self.budget.nfe

    def rows(self, index: Tensor) -> _Counted:
        """The field restricted to the batch rows ``index`` (1-D int64 on the state's device), for
        solvers that evaluate part of the batch (per-sample step control, samples that converged
        early): a network field's conditioning follows the rows (:meth:`ModelField.rows`), and
        evaluations count towards this solve."""
        view = _Counted(
            self.model.rows(index) if self.model is not None else self.f, self.budget.solver, False
        )
        view.budget = self.budget
        return view

    def _count(self, sigma: Sigma) -> None:
        self.budget.spend(sigma)

    def _plain(self, sigma: Sigma, x: Tensor) -> Tensor:
        out = self.f(sigma, x)
        if not isinstance(out, Tensor) or out.shape != x.shape or out.dtype != x.dtype:
            got = (
                f"shape {tuple(out.shape)}, dtype {out.dtype}"
                if isinstance(out, Tensor)
                else type(out).__name__
            )
            raise ValueError(
                f"the field must return dx/dσ with the state's shape {tuple(x.shape)} and dtype {x.dtype}, "
                f"got {got}; return one value per state element (cast with .to(x.dtype))"
            )
        return out

    def __call__(self, sigma: Sigma, x: Tensor) -> Tensor:
        if self.model is None:
            self._count(sigma)
            return self._plain(sigma, x)
        return self.predict(sigma, x)[0]

    def predict(self, sigma: Sigma, x: Tensor) -> tuple[Tensor, Tensor]:
        self._count(sigma)
        if self.model is None:
            value = self._plain(sigma, x)
            scale = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x) if isinstance(sigma, Tensor) else sigma
            return value, x - scale * value
        value, x0 = self.model.predict(sigma, x)
        if self.watch and isinstance(sigma, float):
            if sigma == self._start and self._fresh is None:
                self._fresh = x0
            self._last = (sigma, x0)
        return value, x0

    def predict_x(self, sigma: Sigma, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.model is None:
            raise ValueError(
                "a grid that starts at sigma = inf needs a network field that can be read there "
                "(diffode.field_for(model, schedule, 'v_prediction' or 'sample')), got a plain callable"
            )
        self._count(sigma)
        eps, x0 = self.model.predict_x(sigma, x)
        if self.watch and sigma == self._start and self._fresh is None:
            # the step out of σ = ∞ evaluates the network at its start too
            self._fresh = x0
        return eps, x0

    def begin(self, sigma: float) -> None:
        """A step starts at ``sigma``: an FSAL solver may not evaluate there, so the newest
        evaluation at that σ (the end of the previous step) is carried as its x̂₀."""
        self._start, self._fresh = sigma, None
        last = self._last
        self._carried = last[1] if last is not None and last[0] == sigma else None

    def denoised(self) -> Tensor | None:
        """x̂₀ at the current step's start, if the field gives one and it was evaluated there."""
        return self._fresh if self._fresh is not None else self._carried


def _distinct(tensors: list[Any]) -> list[Any]:
    """``tensors`` without repeats (by identity): a tensor listed twice as an input of the adjoint's
    autograd function would receive its gradient twice (a learned null embedding that is both a
    parameter of the model and the unconditional input of guidance)."""
    return list({id(t): t for t in tensors}.values())


def _adjoint_params(
    f: Callable[..., Tensor], stepper: Solver, given: Sequence[Tensor] | None
) -> list[Tensor]:
    """The tensors ``adjoint=True`` differentiates besides the state (see :func:`solve`)."""
    if stepper.stochastic:
        raise ValueError(
            f"adjoint=True recomputes the solve backwards, which {stepper!r} cannot do: it draws fresh "
            "noise; use a deterministic solver, or plain autograd (adjoint=False)"
        )
    if given is None:
        # parameters are found only on modules: a plain function (or a field around one) may
        # close over tensors that require grad, and they would get no gradient in silence
        if not isinstance(f, torch.nn.Module) or not isinstance(getattr(f, "model", f), torch.nn.Module):
            plain = f if not isinstance(f, torch.nn.Module) else f.model
            raise ValueError(
                f"adjoint=True finds the parameters to differentiate only on nn.Modules, and the "
                f"{'field' if plain is f else 'model'} is a {type(plain).__name__}: pass "
                "adjoint_params=[...] (the tensors it uses that need gradients), or adjoint_params=() "
                "for gradients with respect to x alone"
            )
        # conditioning tensors (a text embedding being optimised) are inputs, not parameters
        conditioning = getattr(f, "conditioning", None)
        inputs = [] if conditioning is None else conditioning.tensors()
        return _distinct([p for p in [*f.parameters(), *inputs] if p.requires_grad])
    if isinstance(given, Tensor):
        raise TypeError(
            f"adjoint_params must be a list or tuple of tensors, got a tensor of shape {tuple(given.shape)} "
            "(iterating it would give its rows, views that the field does not use); wrap it: "
            "adjoint_params=[tensor]"
        )
    if given:
        params = _distinct(list(given))
        for k, p in enumerate(params):
            if not isinstance(p, Tensor) or not p.is_floating_point():
                raise TypeError(f"adjoint_params[{k}] must be a floating tensor, got {type(p).__name__}")
            if not p.requires_grad:
                raise ValueError(
                    f"adjoint_params[{k}] (shape {tuple(p.shape)}) does not require grad, so no gradient "
                    "can reach it; leave it out, or call requires_grad_() on it"
                )
        return params
    return []


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
    adjoint: bool = False,
    adjoint_params: Sequence[Tensor] | None = None,
) -> Solution:
    """Integrate ``dx/dσ = f(σ, x)`` along the σ grid ``sigmas``.

    ``solve`` builds whatever autograd graph ``f`` and ``x`` call for: gradients flow through it
    (the front doors ``sample``/``encode``/``decode`` switch that off unless asked). With
    ``adjoint=True`` the backward pass keeps memory that does not grow with the number of steps
    (:mod:`diffode.adjoint`): the exact gradient of the discrete solution by recomputation for
    fixed-step solvers, the continuous adjoint for adaptive ones.

    Args:
        f: any callable ``f(sigma, x)`` returning a tensor shaped like ``x``; σ arrives as a
            Python float, a ``(batch,)`` float64 tensor from per-sample adaptive solvers, or a
            0-d tensor in the state's dtype (float32 at least, as is x then) from the torchdiffeq
            backend (its time variable).
        x: the state at ``sigmas[0]``, a floating tensor of shape ``(batch, ...)``; its dtype
            and device are kept throughout.
        sigmas: strictly monotone σ grid (converted to float64): decreasing to sample, increasing
            to encode. The steps at the ends of the σ axis are :mod:`diffode.boundary`'s, so ``f``
            is never evaluated at σ = 0: a decreasing grid ending at 0 ends with the step x̄ → x̂₀;
            an increasing grid starting at 0 starts with the solver's
            :meth:`~diffode.solvers.Solver.leave_zero` (x is then the data); a decreasing grid
            starting at σ = ∞ (zero terminal SNR) starts from x-space noise ``x`` through the
            network's x̂₀ (a field that supports ``predict_x``, and a deterministic solver).
        solver: a :class:`~diffode.solvers.Solver` or its name (see ``diffode.solvers.solver_names()``).
        generator: randomness for stochastic solvers: a ``torch.Generator`` or one per sample.
        callback: called with a :class:`StepInfo` after every step.
        save: keep the state at every grid point in ``Solution.xs``.
        progress: draw a progress bar on stderr.
        adjoint: differentiate ``Solution.x`` with respect to ``x`` and ``adjoint_params`` with
            memory independent of the step count (deterministic solvers; not the ``scipy``
            backend). ``Solution.xs`` and the callback's states then carry no gradient. Fixed-step
            solvers recompute steps in the backward pass, replaying the random draws each step
            made (dropout); a BatchNorm layer in training mode updates its running statistics
            again with each recomputation (:mod:`diffode.adjoint`).
        adjoint_params: a list or tuple of the tensors besides ``x`` to differentiate with
            ``adjoint=True`` (repeats count once); ``None``: the parameters of ``f`` that require
            grad, where ``f`` is an ``nn.Module`` whose ``model`` (if it has one) is one too (a
            field around a network module), and its conditioning tensors; otherwise
            ``ValueError``, as a function's tensors cannot be found: pass them, or ``()`` for
            gradients with respect to ``x`` alone.

    Returns:
        A :class:`Solution`. Raises ``ValueError`` when the state becomes non-finite, naming the
        first step where it did (checked once, after the loop, to avoid a device sync per step).
    """
    x = require_finite("x", require_floating("x", x))
    if x.ndim == 0:
        raise ValueError("x must have a leading batch dimension, got a 0-d tensor")
    check_generator(generator, x.shape[0])
    grid = check_sigma_grid(sigmas)
    stepper = get_solver(solver)
    if not callable(f):
        raise TypeError(
            "f must be a callable vector field f(sigma, x) (e.g. EpsField(model, schedule)), got "
            f"{describe(f)}"
        )
    if x.numel() == 0:
        # nothing to integrate (an adaptive solver's step-size control would meet 0/0)
        return Solution(x.clone(), 0, grid, x.new_empty((len(grid), *x.shape)) if save else None)
    values = grid.tolist()
    if math.isinf(values[0]) and stepper.stochastic:
        raise ValueError(
            f"solver {stepper!r} is stochastic, but the first step out of sigma = inf (zero terminal SNR) "
            "is taken deterministically; use eta=0 or a deterministic solver, or start the grid at a "
            "finite σ (for example timesteps='leading')"
        )
    if callback is not None and not callable(callback):
        raise TypeError(
            "callback must be callable (it is called with a StepInfo after every step), got "
            f"{describe(callback)}"
        )
    counted = _Counted(f, stepper, watch=callback is not None)
    n_steps = len(values) - 1
    counted.budget.intervals = sum(
        1 for a, b in itertools.pairwise(values) if min(a, b) > 0 and not math.isinf(max(a, b))
    )

    def advance(i: int, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Step i of the grid: the body of the loop below, also used by the adjoint's recomputation."""
        s0, s1 = values[i], values[i + 1]
        counted.begin(s0)
        if math.isinf(s0):
            return boundary.out_of_infinity(counted, s1, x), state
        if s1 == 0.0:
            return boundary.into_zero(counted, s0, x), state
        if s0 == 0.0:
            return stepper.leave_zero(counted, s1, x, state)
        return stepper.step(counted, s0, s1, x, state)

    saved: list[Tensor] = []
    finite_flags: list[Tensor] = []
    final: list[Any] = []

    # the discrete adjoint recomputes steps: it replays the random draws each one made
    randomness = RandomStates(x.device)
    replayed = adjoint and not stepper.adaptive

    def run(x: Tensor) -> Tensor:
        state = stepper.init(counted, grid, x, generator)
        saved[:] = [x] if save else []
        for i in tqdm(range(n_steps), desc=stepper.name or "solve", disable=not progress):
            if replayed:
                randomness.record(i)
            x, state = advance(i, x, state)
            finite_flags.append(torch.isfinite(x).all())
            if save:
                saved.append(x)
            if callback is not None:
                callback(StepInfo(i, values[i], values[i + 1], x, counted.nfe, counted.denoised()))
        final[:] = [state]
        return x

    if not adjoint:
        x = run(x)
    else:
        params = _adjoint_params(f, stepper, adjoint_params)
        if stepper.adaptive:
            if callback is not None or save:
                raise ValueError(
                    "adjoint=True with an adaptive solver integrates through torchdiffeq's odeint_adjoint, "
                    "which reports no steps: leave callback and save out, or use a fixed-step solver"
                )
            x = continuous_adjoint(counted, stepper, values, advance, x, params)
        else:
            x = checkpointed(
                advance, n_steps, x, stepper.init(counted, grid, x, generator), params, run, randomness
            )
        x = first_derivatives_only(x)
        # max_nfe bounds the forward solve; the backward pass recomputes it on its own account
        counted.budget.limit = None
        if not finite_flags and not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"the state became non-finite between σ {values[0]:.6g} and {values[-1]:.6g} (the "
                "continuous adjoint reports no steps); check that the model returns finite values, "
                "or solve without adjoint=True to find the step"
            )
    if finite_flags:
        flags = torch.stack(finite_flags).cpu()
        if not bool(flags.all()):
            bad = int((~flags).nonzero()[0, 0])
            raise ValueError(
                f"the state became non-finite at step {bad} (σ {values[bad]:.6g} -> {values[bad + 1]:.6g}); "
                "check that the model returns finite values and that the solver is stable on this grid"
                + (
                    f"; a {x.dtype} state overflows at large σ (x̄ = x·√(1+σ²)): integrate in float32 "
                    "(diffode.sample does) and let the network run in low precision"
                    if x.dtype in (torch.float16, torch.bfloat16)
                    else ""
                )
            )
    return Solution(
        x=x,
        nfe=counted.nfe,
        sigmas=grid,
        xs=torch.stack(saved) if save else None,
        stats=stepper.stats(final[0]) if final else {},
    )
