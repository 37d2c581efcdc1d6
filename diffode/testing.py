"""Property-testing tools for your own models, fields and solvers.

Hypothesis strategies that draw the objects diffode works with (schedules, σ grids, exact
oracles, small random ε-networks), and assertions that check a model or solver against the
exact answers diffode knows (round trips, the Euler = DDIM identity, convergence orders). An
example test is in docs/encoding.md.

The strategies need ``hypothesis``, part of the ``dev`` extra (``pip install "diffode[dev]"``);
it is imported when a strategy is first called, so the assertions and :class:`RandomEpsNet` work
without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from diffode.boundary import into_zero
from diffode.encoding import EXACT_TIMESTEPS, Encoding, decode, encode
from diffode.field import EpsField, Model, VectorField
from diffode.grids import check_timesteps
from diffode.oracles import Gaussian, GaussianMixture
from diffode.schedule import Schedule
from diffode.solvers.base import Solver
from diffode.solvers.registry import get_solver
from diffode.solvers.reversible import InversionError
from diffode.study import Reference, convergence_study
from diffode.validation import describe, require_floating, require_int, require_nonnegative, require_positive

_F64 = torch.float64


def _strategies() -> ModuleType:
    try:
        from hypothesis import strategies
    except ImportError as err:
        raise ImportError(
            'diffode.testing strategies need hypothesis: pip install "diffode[dev]" '
            "(or pip install hypothesis)"
        ) from err
    return strategies


# ---------------------------------------------------------------------------------------------
# A small random ε-network
# ---------------------------------------------------------------------------------------------


class RandomEpsNet(nn.Module):
    """A seeded random ε-network ``model(x, t)`` for any event shape, with a known Lipschitz bound.

    ε(x, t) = W₂ tanh(W₁ x + V e(t) + b) + c, on the flattened non-batch dimensions, with
    sinusoidal features e(t) of the time t (training-step units, periods of 600 to 20000 steps,
    so the field is smooth in σ on the scale of sampling steps). W₁ is scaled
    to spectral norm 1 and W₂ to spectral norm ``lipschitz``, so ‖∂ε/∂x‖₂ ≤ ``lipschitz``
    everywhere. With ``lipschitz`` < 1 the fixed-point iteration that inverts an Euler step
    contracts on every grid (factor ≤ lipschitz·Δσ/√(1+σ²) < lipschitz), which makes exact
    inversion a well-posed test. The weights are float64 buffers and the forward pass runs in
    the dtype of ``x``; a field (:class:`~diffode.EpsField`) calls a module in the dtype of its
    weights, so through a field it computes in float64 whatever the state's dtype, and the
    state's dtype decides the solver's arithmetic only. ``RandomEpsNet(...).float()`` is a
    float32 network.

    Unlike a trained network, its Jacobian is not symmetric and its flow does not contract
    towards a data set: use it to test code paths, shapes, dtypes and algebraic identities, and
    the oracles (:mod:`diffode.oracles`) for statements about sample quality.

    Args:
        event_shape: the shape of one sample, e.g. ``(2,)`` or ``(1, 8, 8)``.
        hidden: hidden width.
        lipschitz: the bound on ‖∂ε/∂x‖₂ (> 0).
        seed: the seed of the weights.
    """

    w1: Tensor
    w2: Tensor
    v: Tensor
    b: Tensor
    c: Tensor
    freqs: Tensor

    def __init__(
        self, event_shape: Sequence[int], *, hidden: int = 32, lipschitz: float = 0.5, seed: int = 0
    ) -> None:
        super().__init__()
        if isinstance(event_shape, (str, bytes)) or not isinstance(event_shape, Sequence):
            raise TypeError(f"event_shape must be a sequence of ints such as (1, 8, 8), got {event_shape!r}")
        self.event_shape = torch.Size(require_int("event_shape entries", n, low=1) for n in event_shape)
        dims = math.prod(self.event_shape)
        require_int("hidden", hidden, low=1)
        self.lipschitz = require_positive("lipschitz", lipschitz)
        g = torch.Generator().manual_seed(require_int("seed", seed))
        w1 = torch.randn(hidden, dims, generator=g, dtype=_F64)
        w2 = torch.randn(dims, hidden, generator=g, dtype=_F64)
        self.register_buffer("w1", w1 / torch.linalg.matrix_norm(w1, 2))
        self.register_buffer("w2", self.lipschitz * w2 / torch.linalg.matrix_norm(w2, 2))
        self.register_buffer("v", torch.randn(hidden, 8, generator=g, dtype=_F64))
        self.register_buffer("b", 0.5 * torch.randn(hidden, generator=g, dtype=_F64))
        self.register_buffer("c", 0.2 * torch.randn(dims, generator=g, dtype=_F64))
        # periods of 600 to 20000 steps: smooth in t on the scale of sampling steps (even with
        # 1000 of them), so that convergence orders show in tests
        self.register_buffer("freqs", torch.logspace(-3.5, -2, 4, dtype=_F64))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.shape[1:] != self.event_shape:
            raise ValueError(f"x must have shape (batch, *{tuple(self.event_shape)}), got {tuple(x.shape)}")
        dtype = x.dtype
        angles = t.to(dtype).reshape(-1, 1) * self.freqs.to(dtype)
        features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
        hidden = torch.tanh(
            x.reshape(x.shape[0], -1) @ self.w1.to(dtype).T + features @ self.v.to(dtype).T + self.b.to(dtype)
        )
        return (hidden @ self.w2.to(dtype).T + self.c.to(dtype)).reshape(x.shape)


# ---------------------------------------------------------------------------------------------
# Hypothesis strategies
# ---------------------------------------------------------------------------------------------


def schedules(*, max_T: int = 1000, max_random_T: int = 100) -> Any:
    """Strategy for :class:`~diffode.Schedule`: the linear, scaled-linear and cosine schedules
    with T in 2 … ``max_T``, and schedules from random betas in [1e-4, 0.2] with T up to
    ``max_random_T``."""
    st = _strategies()
    named = st.sampled_from([Schedule.linear, Schedule.scaled_linear, Schedule.cosine])
    from_named = st.builds(lambda make, T: make(T), named, st.integers(2, max_T))
    from_betas = st.integers(2, max_random_T).flatmap(
        lambda T: st.lists(st.floats(1e-4, 0.2), min_size=T, max_size=T).map(
            lambda betas: Schedule.from_betas(torch.tensor(betas, dtype=_F64))
        )
    )
    return st.one_of(from_named, from_betas)


def sigma_grids(
    *,
    direction: str = "decreasing",
    min_size: int = 2,
    max_size: int = 20,
    sigma_min: float = 1e-2,
    sigma_max: float = 100.0,
    final_zero: bool = False,
) -> Any:
    """Strategy for strictly monotone float64 σ grids, log-uniform in [``sigma_min``, ``sigma_max``].

    Args:
        direction: ``"decreasing"`` (sampling) or ``"increasing"`` (encoding).
        min_size, max_size: number of positive σ values.
        final_zero: append σ = 0 (decreasing grids only), as sampling grids end.
    """
    st = _strategies()
    if direction not in ("decreasing", "increasing"):
        raise ValueError(f"direction must be 'decreasing' or 'increasing', got {direction!r}")
    if final_zero and direction == "increasing":
        raise ValueError("final_zero=True needs direction='decreasing': encoding grids never start at 0")
    require_int("min_size", min_size, low=1)
    require_int("max_size", max_size, low=min_size)
    require_positive("sigma_min", sigma_min)
    if not sigma_max > sigma_min:
        raise ValueError(f"sigma_max must exceed sigma_min, got {sigma_min} and {sigma_max}")
    logs = st.floats(math.log(sigma_min), math.log(sigma_max))

    def build(values: list[float]) -> Tensor:
        grid = torch.tensor(sorted(values, reverse=direction == "decreasing"), dtype=_F64).exp()
        return torch.cat([grid, torch.zeros(1, dtype=_F64)]) if final_zero else grid

    # distinct logarithms may still round to one σ; keep only strictly monotone grids
    return (
        st.lists(logs, min_size=min_size, max_size=max_size, unique=True)
        .map(build)
        .filter(lambda g: bool((g[1:] != g[:-1]).all()))
    )


def oracle_models(*, dims: tuple[int, int] = (1, 4), max_components: int = 4) -> Any:
    """Strategy for exact oracles: :class:`~diffode.oracles.Gaussian` and
    :class:`~diffode.oracles.GaussianMixture` on ``dims[0]`` … ``dims[1]`` dimensions, means in
    [-2, 2], standard deviations in [0.2, 1.5]."""
    st = _strategies()
    d = st.integers(*dims)
    coordinate = st.floats(-2.0, 2.0)
    std = st.floats(0.2, 1.5)
    gaussian = d.flatmap(
        lambda n: st.builds(
            lambda mean, c: Gaussian(torch.tensor(mean, dtype=_F64), c),
            st.lists(coordinate, min_size=n, max_size=n),
            std,
        )
    )

    def mixture(n: int, k: int) -> Any:
        return st.builds(
            lambda w, m, c: GaussianMixture(
                torch.tensor(w, dtype=_F64), torch.tensor(m, dtype=_F64), torch.tensor(c, dtype=_F64)
            ),
            st.lists(st.floats(0.1, 1.0), min_size=k, max_size=k),
            st.lists(st.lists(coordinate, min_size=n, max_size=n), min_size=k, max_size=k),
            st.lists(std, min_size=k, max_size=k),
        )

    mixtures = st.tuples(d, st.integers(1, max_components)).flatmap(lambda nk: mixture(*nk))
    return st.one_of(gaussian, mixtures)


def eps_networks(
    *, event_shapes: Sequence[Sequence[int]] = ((2,), (3, 4), (1, 4, 4)), lipschitz: float = 0.5
) -> Any:
    """Strategy for seeded :class:`RandomEpsNet` instances of the given event shapes."""
    st = _strategies()
    return st.builds(
        lambda shape, seed, hidden: RandomEpsNet(shape, hidden=hidden, lipschitz=lipschitz, seed=seed),
        st.sampled_from([tuple(s) for s in event_shapes]),
        st.integers(0, 2**31 - 1),
        st.integers(4, 32),
    )


# ---------------------------------------------------------------------------------------------
# Assertions
# ---------------------------------------------------------------------------------------------


def assert_round_trip(
    model: Model,
    schedule: Schedule,
    x0: Tensor,
    *,
    steps: int,
    timesteps: Any = None,
    solver: str | Solver = "euler",
    method: str = "exact",
    atol: float,
    rtol: float = 0.0,
    encoder: Callable[..., Tensor | Encoding] = encode,
    decoder: Callable[..., Tensor] = decode,
) -> float:
    """Assert that decoding the encoding of ``x0`` gives ``x0`` back within tolerance.

    Calls ``encoder(model, schedule, x0, steps=, timesteps=, solver=, method=, return_info=True)``
    (a latents tensor or an :class:`~diffode.encoding.Encoding` may come back) and
    ``decoder(model, schedule, latents, steps=, timesteps=, solver=, companion=)``; pass your own
    ``encoder``/``decoder`` with these signatures to test them. When an ``Encoding`` comes back,
    the decoder gets its grid (``timesteps=encoding.sigmas``, ``steps=None``), so the default
    ``timesteps=None`` (the encoder's default grid for ``method``) needs nothing repeated.

    Passes when max |decoded - x0| ≤ ``atol`` + ``rtol``·max |x0|. Returns that error (float).
    Raises ``AssertionError`` with the achieved error when it is missed, and also when exact
    inversion does not converge (:class:`~diffode.solvers.reversible.InversionError`: the residual reached).
    """
    x0 = require_floating("x0", x0)
    require_nonnegative("atol", atol)
    require_nonnegative("rtol", rtol)
    try:
        encoded = encoder(
            model,
            schedule,
            x0,
            steps=steps,
            timesteps=timesteps,
            solver=solver,
            method=method,
            return_info=True,
        )
    except InversionError as err:
        raise AssertionError(
            f"round trip (solver={solver!r}, method={method!r}, steps={steps}, timesteps={timesteps!r}): "
            f"exact inversion did not converge for sample {err.sample} on the step σ {err.sigma:.6g} -> "
            f"{err.sigma_next:.6g}, reaching a residual of {err.residual:.3g} (bound atol={atol:g}, "
            f"rtol={rtol:g}): {err}"
        ) from err
    if isinstance(encoded, Encoding):
        latents, companion = encoded.latents, encoded.companion
        back = decoder(
            model, schedule, latents, steps=None, timesteps=encoded.sigmas, solver=solver, companion=companion
        )
    else:
        # a bare latents tensor carries no grid: decode on the one the encoder defaults to for
        # the method (the implicit inverses' differs from sampling's), else the one given
        if timesteps is None and method == "exact" and not get_solver(solver).reversible:
            timesteps = EXACT_TIMESTEPS
        back = decoder(
            model, schedule, encoded, steps=steps, timesteps=timesteps, solver=solver, companion=None
        )
    diff = (back.detach().to(_F64) - x0.detach().to(_F64)).abs()
    error = float(diff.max())
    bound = atol + rtol * float(x0.detach().abs().max())
    if not error <= bound:
        worst = int(diff.reshape(diff.shape[0], -1).amax(1).argmax())
        raise AssertionError(
            f"round trip (solver={solver!r}, method={method!r}, steps={steps}, timesteps={timesteps!r}) "
            f"missed x0 by {error:.3g} (sample {worst}), above the bound {bound:.3g} "
            f"(atol={atol:g}, rtol={rtol:g})"
        )
    return error


def assert_euler_is_ddim(
    model: Model,
    schedule: Schedule,
    x: Tensor,
    timesteps: Sequence[int] | Tensor,
    *,
    solver: str | Solver = "euler",
    rtol: float | None = None,
) -> float:
    """Assert that one step of ``solver`` on the DDIM ODE equals the closed-form DDIM update.

    Walks the descending integer ``timesteps`` (then ᾱ = 1, σ = 0) from the x-space state ``x``
    at the first one. Each step is taken twice: as the DDIM update of reference §4 in float64,
    x̂₀ = (x_t - √(1-ᾱ_t) ε)/√ᾱ_t, x_t' = √ᾱ_t' x̂₀ + √(1-ᾱ_t') ε with ε = model(x_t, t), and as
    ``solver.step`` on :class:`~diffode.EpsField` in x̄ = x/√ᾱ (the step into σ = 0 as
    :func:`diffode.solve` takes it). ``solver`` is anything claimed to equal DDIM: Euler,
    ``DDIM(eta=0)``, first-order DPM-Solver++, or your own.

    The reference calls ``model`` as the field does: on x cast to the network's dtype (an
    ``nn.Module``'s parameters; a plain function gets the state's), with t in that dtype.
    Passes when every step agrees to ``rtol`` relative to the largest |x̄| involved (default
    1e-12 where state and network are float64, and otherwise 1e-6 scaled by the unit
    round-off of the coarser of the two relative to float32's: round-off of a few operations).
    Returns the largest relative deviation.
    """
    stepper = get_solver(solver)
    x = require_floating("x", x)
    raw = timesteps if isinstance(timesteps, Tensor) else torch.as_tensor(list(timesteps))
    if raw.numel() and (raw.is_floating_point() or raw.dtype == torch.bool):
        raise TypeError(f"timesteps must be integer training timesteps, got {describe(raw)}")
    ts: list[int] = check_timesteps(schedule, raw).tolist()
    if len(ts) < 2:
        # with one timestep only the step into σ = 0 is taken, which is solve's, not the solver's
        raise ValueError(
            f"timesteps must hold at least two timesteps, so that the solver takes a step, got {ts}"
        )
    field = EpsField(model, schedule)
    network = field.network_dtype or x.dtype
    if rtol is None:
        coarser = max(torch.finfo(network).eps, torch.finfo(x.dtype).eps)
        rtol = 1e-12 if coarser == torch.finfo(_F64).eps else 1e-6 * coarser / torch.finfo(torch.float32).eps
    ac = torch.cat([schedule.alphas_cumprod, torch.ones(1, dtype=_F64)])  # ac[-1]: ᾱ = 1 after t = 0
    grid = torch.cat([schedule.sigmas[ts], torch.zeros(1, dtype=_F64)])
    state = stepper.init(field, grid, x * math.sqrt(1 + float(grid[0]) ** 2), None)
    worst = 0.0
    # an assertion needs no graph (a network with trainable parameters would build one)
    with torch.no_grad():
        for t, t_next in pairwise([*ts, -1]):
            s0 = float(schedule.sigmas[t])
            s1 = 0.0 if t_next < 0 else float(schedule.sigmas[t_next])
            a, a_next = ac[t], ac[t_next]
            inp = x.to(network)
            eps = model(inp, torch.full((x.shape[0],), float(t), dtype=network, device=x.device)).to(_F64)
            x0_hat = (x.to(_F64) - (1 - a).sqrt() * eps) / a.sqrt()
            expected = (a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps) / a_next.sqrt()
            xbar = x * math.sqrt(1 + s0 * s0)
            if s1 == 0.0:
                got = into_zero(field, s0, xbar)
            else:
                got, state = stepper.step(field, s0, s1, xbar, state)
            size = max(float(xbar.abs().max()), float(expected.abs().max()), 1e-300)
            deviation = float((got.to(_F64) - expected).abs().max()) / size
            worst = max(worst, deviation)
            if not deviation <= rtol:
                raise AssertionError(
                    f"{stepper!r} deviates from the closed-form DDIM update on the step t = {t} -> {t_next} "
                    f"(σ {s0:.6g} -> {s1:.6g}) by {deviation:.3g} relative, above rtol = {rtol:g}"
                )
            x = (got / math.sqrt(1 + s1 * s1)).to(x.dtype)
    return worst


def assert_convergence_order(
    f: VectorField,
    x: Tensor,
    solver: str | Solver,
    order: float,
    *,
    steps: Sequence[int],
    grid: Callable[[int], Tensor],
    reference: Reference = None,
    window: float = 0.3,
) -> float:
    """Assert that ``solver`` converges at ``order`` ± ``window`` on the grids ``grid(n)``.

    Runs :func:`diffode.study.convergence_study` (RMS error of the final state against
    ``reference``, by default a float64 Dopri5 solve of each span at rtol 1e-10) for the step
    counts ``steps`` and compares the negated least-squares slope of log error against the log
    of the grids' positive finite intervals (:attr:`~diffode.study.StudyRow.intervals`) with
    ``order``. Choose step counts in the solver's asymptotic range and with errors
    well above the reference's (and round-off). Grids that end at σ = 0 take the same
    first-order final step in the solve and in the reference, so the order measured is that of
    the positive part.

    Returns the measured order.
    """
    study = convergence_study(f, x, {"solver": solver}, list(steps), grid=grid, reference=reference)
    measured = study.orders["solver"]
    errors = [f"{row.rms_error:.3g}" for row in study.rows]
    if measured is None or not abs(measured - order) <= window:
        raise AssertionError(
            f"{solver!r} converged at order {measured} on steps {list(steps)} (RMS errors {errors}), "
            f"expected {order} ± {window}"
        )
    return measured


__all__ = [
    "RandomEpsNet",
    "assert_convergence_order",
    "assert_euler_is_ddim",
    "assert_round_trip",
    "eps_networks",
    "oracle_models",
    "schedules",
    "sigma_grids",
]
