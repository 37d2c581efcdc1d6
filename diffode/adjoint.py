"""Gradients through a solve whose memory does not grow with the number of steps.

Two methods, chosen by :func:`diffode.solve` (``adjoint=True``) from the solver:

- **Fixed-step solvers: the exact discrete adjoint by recomputation.** The forward pass runs the
  ordinary loop without a graph and keeps only the starting state. The backward pass walks the
  steps in reverse by recursive bisection: to differentiate steps i … j it recomputes the state
  at the midpoint m without a graph, differentiates m … j, then i … m. Only one step's graph
  exists at a time, and the recursion holds ⌈log₂ N⌉ + 1 states (state-sized tensors, not network
  activations), so for N steps the cost is N backward steps plus about N·log₂(N)/2 recomputed
  forward steps, against autograd's N step graphs held at once. The gradient is that of the
  computed discrete solution (to round-off), multistep history and a reversible solver's
  companion state included: every tensor in the solver state is a differentiated variable.
  A network that draws random numbers (dropout in training mode) draws the same ones when a step
  is recomputed: the generator states at the start of each step are kept (:class:`RandomStates`,
  as ``torch.utils.checkpoint`` does). Other side effects of a call happen again with each
  recomputation: a BatchNorm layer in training mode updates its running statistics about
  log₂(N)/2 + 1 times per step instead of once (its outputs, and so the gradient, are unaffected);
  put such layers in eval mode, or use ``adjoint=False``.
- **Adaptive solvers: the continuous adjoint** of torchdiffeq's ``odeint_adjoint`` (Chen et al.,
  2018) with the solver's method and tolerances on the positive part of the grid; the final
  step into σ = 0 is differentiated by ordinary autograd. The gradient is that of the exact ODE
  solution up to the tolerances, not that of the discrete forward solve. Its backward pass
  evaluates the field at other σ than the forward pass did, so random draws inside the network
  are not replayed: put it in eval mode.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from diffode.solvers.adaptive import EmbeddedRungeKutta
from diffode.solvers.backends import Torchdiffeq
from diffode.solvers.base import Solver

Step = Callable[[int, Tensor, Any], tuple[Tensor, Any]]
"""``advance(i, x, state) -> (x, state)``: step i of the grid, the loop body of :func:`diffode.solve`."""


def _map_tensors(state: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``state`` with ``fn`` applied to every floating tensor in it, through tuples, lists, dicts
    and dataclasses (solver states are built from these)."""
    if isinstance(state, Tensor):
        return fn(state) if state.is_floating_point() else state
    if isinstance(state, (tuple, list)):
        items = [_map_tensors(v, fn) for v in state]
        return type(state)(items) if not hasattr(state, "_fields") else type(state)(*items)
    if isinstance(state, dict):
        return {k: _map_tensors(v, fn) for k, v in state.items()}
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        changes = {
            f.name: _map_tensors(getattr(state, f.name), fn) for f in dataclasses.fields(state) if f.init
        }
        return dataclasses.replace(state, **changes)
    return state


def _differentiable(state: Any) -> tuple[Any, list[Tensor]]:
    """A copy of ``state`` whose floating tensors are fresh leaves that require grad, and those."""
    inputs: list[Tensor] = []

    def fresh(t: Tensor) -> Tensor:
        leaf = t.detach().requires_grad_(True)
        inputs.append(leaf)
        return leaf

    return _map_tensors(state, fresh), inputs


def _tensors(state: Any) -> list[Tensor]:
    found: list[Tensor] = []

    def collect(t: Tensor) -> Tensor:
        found.append(t)
        return t

    _map_tensors(state, collect)
    return found


class RandomStates:
    """The random-number generator states (CPU, and the state's CUDA device) at the start of each
    step of a forward solve, replayed when the backward pass recomputes that step."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device if device.type == "cuda" else None
        self.states: dict[int, tuple[Tensor, Tensor | None]] = {}

    def record(self, i: int) -> None:
        """Keep the states as step ``i`` starts."""
        cuda = None if self.cuda is None else torch.cuda.get_rng_state(self.cuda)
        self.states[i] = (torch.get_rng_state(), cuda)

    @contextmanager
    def replay(self, i: int) -> Iterator[None]:
        """Run a block from the states step ``i`` started with, leaving the generators as they were."""
        cpu, cuda = self.states[i]
        with torch.random.fork_rng(devices=[] if self.cuda is None else [self.cuda]):
            torch.set_rng_state(cpu)
            if cuda is not None and self.cuda is not None:
                torch.cuda.set_rng_state(cuda, self.cuda)
            yield


class _Recompute:
    """The backward pass of the checkpointed solve (see the module notes)."""

    def __init__(
        self,
        advance: Step,
        n_steps: int,
        initial_state: Any,
        params: Sequence[Tensor],
        randomness: RandomStates,
    ) -> None:
        self.advance = advance
        self.n_steps = n_steps
        self.initial_state = initial_state
        self.params = list(params)
        self.randomness = randomness
        self.param_grads: list[Tensor | None] = []

    def _advance(self, k: int, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        with self.randomness.replay(k):
            return self.advance(k, x, state)

    def gradients(self, x: Tensor, grad: Tensor) -> tuple[Tensor, list[Tensor | None]]:
        """d(loss)/dx and d(loss)/dparams from d(loss)/d(final state) ``grad``."""
        self.param_grads = [None] * len(self.params)
        g_x, _ = self._backprop(0, self.n_steps, x, self.initial_state, grad, [])
        return g_x, self.param_grads

    def _backprop(
        self, i: int, j: int, x: Tensor, state: Any, g_x: Tensor, g_state: list[Tensor | None]
    ) -> tuple[Tensor, list[Tensor | None]]:
        """Gradients at step i's input (x and the state's tensors) from those at step j's output."""
        if j - i == 1:
            return self._one_step(i, x, state, g_x, g_state)
        m = (i + j) // 2
        x_m, state_m = x, state
        with torch.no_grad():
            for k in range(i, m):
                x_m, state_m = self._advance(k, x_m, state_m)
        g_x, g_state = self._backprop(m, j, x_m, state_m, g_x, g_state)
        return self._backprop(i, m, x, state, g_x, g_state)

    def _one_step(
        self, i: int, x: Tensor, state: Any, g_x: Tensor, g_state: list[Tensor | None]
    ) -> tuple[Tensor, list[Tensor | None]]:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            state_in, state_inputs = _differentiable(state)
            x_out, state_out = self._advance(i, x_in, state_in)
            outputs = [x_out, *_tensors(state_out)]
            # the final state's solver tensors do not reach the result: no gradient arrives for them
            grads_out = [g_x, *g_state] + [None] * (len(outputs) - 1 - len(g_state))
            pairs = [
                (o, g) for o, g in zip(outputs, grads_out, strict=True) if g is not None and o.requires_grad
            ]
            inputs = [x_in, *state_inputs, *self.params]
            grads = torch.autograd.grad(
                [o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True
            )
        n_state = len(state_inputs)
        for k, g in enumerate(grads[1 + n_state :]):
            if g is not None:
                total = self.param_grads[k]
                self.param_grads[k] = g if total is None else total + g
        g_x_in = grads[0] if grads[0] is not None else torch.zeros_like(x)
        return g_x_in, list(grads[1 : 1 + n_state])


class _Checkpointed(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, recompute: _Recompute, forward: Callable[[Tensor], Tensor], x: Tensor, *params: Tensor
    ) -> Tensor:
        ctx.recompute = recompute
        ctx.save_for_backward(x)
        with torch.no_grad():
            return forward(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        g_x, g_params = ctx.recompute.gradients(x, grad)
        return (None, None, g_x, *g_params)


class _FirstDerivativesOnly(torch.autograd.Function):
    """The identity, whose backward pass refuses to build a graph: both adjoints recompute the
    solve without one (torchdiffeq's under ``no_grad``), so with ``create_graph=True`` a gradient
    of their gradients (a gradient penalty) would lose its terms through the solve in silence."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        # a copy, not a view: the caller may edit the result in place (clamp_)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            raise ValueError(
                "adjoint=True gives first derivatives only, and this backward pass was asked for a "
                "graph (create_graph=True, for gradients of gradients); use adjoint=False"
            )
        return grad


def first_derivatives_only(x: Tensor) -> Tensor:
    """``x``, marked so that differentiating it with ``create_graph=True`` raises ``ValueError``."""
    return _FirstDerivativesOnly.apply(x)


def checkpointed(
    advance: Step,
    n_steps: int,
    x: Tensor,
    initial_state: Any,
    params: Sequence[Tensor],
    forward: Callable[[Tensor], Tensor],
    randomness: RandomStates,
) -> Tensor:
    """``forward(x)`` (the solve loop, run without a graph), differentiable with respect to ``x``
    and ``params`` by recomputing the ``n_steps`` steps of ``advance`` from ``initial_state``,
    a solver state that ``forward`` does not touch (see the module notes); ``forward`` records
    each step's generator states in ``randomness``, and the recomputed steps replay them."""
    recompute = _Recompute(advance, n_steps, initial_state, params, randomness)
    out: Tensor = _Checkpointed.apply(recompute, forward, x, *params)
    return out


class _OdeFunc(torch.nn.Module):
    """The field as ``odeint_adjoint`` calls it, ``func(t, y)``; parameters are passed explicitly."""

    def __init__(self, f: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.f = f

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.f(t, y)


def _odeint_method(stepper: Solver) -> tuple[str, float, float]:
    """The torchdiffeq method and tolerances that stand for an adaptive ``stepper``."""
    if isinstance(stepper, EmbeddedRungeKutta) and stepper.name in ("dopri5", "bosh3"):
        if stepper.per_sample:
            raise ValueError(
                f"adjoint=True integrates {stepper!r} through torchdiffeq's odeint_adjoint, whose step size "
                "is one for the whole batch, so per_sample=True would be ignored; pass per_sample=False, "
                "or adjoint=False (plain autograd through the per-sample steps)"
            )
        return stepper.name, stepper.rtol, stepper.atol
    if isinstance(stepper, Torchdiffeq) and stepper.tolerances is not None:
        return stepper.method, *stepper.tolerances
    raise ValueError(
        f"adjoint=True has no continuous adjoint for {stepper!r}; use Dopri5, Bosh3 or "
        "Torchdiffeq(<adaptive method>), or a fixed-step solver (exact discrete adjoint)"
    )


def continuous_adjoint(
    f: Callable[[Tensor, Tensor], Tensor],
    stepper: Solver,
    values: list[float],
    advance: Step,
    x: Tensor,
    params: Sequence[Tensor],
) -> Tensor:
    """The solve of an adaptive ``stepper`` over the σ grid ``values`` by torchdiffeq's
    ``odeint_adjoint`` on its positive, finite part, with the boundary steps (out of σ = 0 or ∞,
    into σ = 0) taken by ``advance`` under ordinary autograd."""
    from torchdiffeq import odeint_adjoint

    method, rtol, atol = _odeint_method(stepper)
    n_steps = len(values) - 1
    first = 1 if values[0] == 0.0 or math.isinf(values[0]) else 0
    # the grid point where the positive, finite part ends
    end = n_steps - 1 if values[-1] == 0.0 and n_steps - 1 >= first else n_steps
    if first:
        x, _ = advance(0, x, None)
    if end > first:
        t = torch.tensor(values[first : end + 1], dtype=torch.float64, device=x.device)
        # step_t makes every step end on the grid points, so f is never evaluated beyond them
        # (near σ = 0 that would be below zero). The backward pass integrates each interval the
        # other way round, and torchdiffeq copies step_t for it before negating the times of a
        # decreasing grid: given as is, the backward steps were not clipped (measured: f at
        # σ = 107 on a grid from 80), so it gets step_t in its own orientation
        func = _OdeFunc(f)
        backward_t = -t if values[first] > values[end] else t
        # in float32 at least, as the torchdiffeq backend does (torchdiffeq rounds the times to
        # the state's dtype)
        dtype = x.dtype
        try:
            x = odeint_adjoint(
                func,
                x.to(torch.promote_types(dtype, torch.float32)),
                t,
                rtol=rtol,
                atol=atol,
                method=method,
                options={"step_t": t},
                adjoint_options={"step_t": backward_t},
                adjoint_params=tuple(params),
            )[-1].to(dtype)
        except AssertionError as err:
            # torchdiffeq reports step-size underflow and non-finite states with assert
            raise ValueError(
                f"{stepper!r} (continuous adjoint) failed between σ = {values[first]:.6g} and "
                f"σ = {values[end]:.6g}: {err}; check that the model returns finite values"
            ) from err
    if end < n_steps:
        x, _ = advance(n_steps - 1, x, None)
    return x


__all__ = ["RandomStates", "Step", "checkpointed", "continuous_adjoint", "first_derivatives_only"]
