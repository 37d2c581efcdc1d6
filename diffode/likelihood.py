"""Log-likelihoods through the probability-flow ODE (reference §11; Song et al., 2021).

The DDIM ODE dx̄/dσ = ε(σ, x̄) is a continuous normalising flow: along a solution,
d log p_σ(x̄(σ))/dσ = -∇_x̄·ε(σ, x̄). :func:`likelihood` integrates the augmented state
(x̄, ℓ) with dℓ/dσ = ∇_x̄·ε from σ_min (the data, t = 0) up to σ_max through :func:`diffode.solve`
(so NFE counting, every adaptive solver and backend, and per-sample step control come with it),
and adds up the coordinate changes. With D the dimension of one sample and x_T the x-space state
at σ_max:

    log p(x) = log N(x_T; 0, I)                     the prior, in x at σ_max
             - D log √(1 + σ_max²)                  x → x̄ at σ_max (x̄ = x √(1+σ²))
             + ℓ(σ_max)                             ∫ ∇·ε dσ from σ_min to σ_max
             + D log √(1 + σ_min²)                  x̄ → x at σ_min

The only approximation besides the solver's is the prior: the model's marginal at σ_max is
replaced by N(0, I) in x (exact only as σ_max → ∞). The divergence is exact (the Jacobian's
trace by ``torch.func``, D vector-Jacobian products per evaluation) or Hutchinson's unbiased
estimate vᵀ(∂ε/∂x̄)v with probes v drawn once per sample and held fixed over the whole solve.

Both divergences take one Jacobian of the network per batch and read each sample's block of it,
so the network must treat the samples of a batch independently (eval mode: no batch norm
statistics).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diffode.conditioning import Cond, Guidance
from diffode.field import Coefficient, Model, ModelField, Sigma, _from_eps, field_for
from diffode.sampling import graph_mode
from diffode.schedule import NoiseSchedule
from diffode.solve import Generator, solve
from diffode.solvers.adaptive import Bosh3, Dopri5
from diffode.solvers.backends import TORCHDIFFEQ_METHODS, Scipy, Torchdiffeq
from diffode.solvers.base import Solver
from diffode.solvers.registry import get_solver
from diffode.validation import (
    check_generator,
    describe,
    require_finite,
    require_floating,
    require_int,
    require_nonnegative,
    require_positive,
)

DEFAULT_TOL = 1e-5
"""rtol and atol of a named solver unless given (score_sde's likelihood tolerances)."""
DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
EXACT_CHUNK_ELEMENTS = 2**24
"""The most cotangent elements the exact divergence pulls back at once (D probes × batch × D):
the basis is split into chunks of at most this size (``torch.func.vmap``'s ``chunk_size``)."""

_F64 = torch.float64
_LN2 = math.log(2.0)


def mean_and_stderr(values: Tensor) -> tuple[float, float]:
    """The mean of ``values`` (1-D) and its standard error, std/√n with the n-1 std (0 for n = 1).
    ``ValueError`` for no values or non-finite ones."""
    v = values.detach().to("cpu", _F64).reshape(-1)
    n = v.numel()
    if n == 0 or not bool(torch.isfinite(v).all()):
        raise ValueError(f"values must be finite and at least one, got {describe(values)}")
    stderr = float(v.std() / math.sqrt(n)) if n > 1 else 0.0
    return float(v.mean()), stderr


@dataclass(frozen=True)
class Likelihood:
    """Result of :func:`likelihood`, one entry per sample.

    Attributes:
        nats: float64 ``(batch,)``: log p(x) in nats, summed over the non-batch dimensions. With
            ``levels``, the one-sample variational lower bound on the log-probability of the
            discrete data, log p(x + u) + D log Δ (u the uniform dequantisation noise, Δ the bin
            width), whose expectation over u is at most log P(x).
        bpd: float64 ``(batch,)``: bits per dimension, -nats / (D ln 2); with ``levels`` an
            upper bound (in expectation) on the discrete data's -log₂ P(x) / D.
        nfe: evaluations of the augmented field (each is one network call and its Jacobian
            products: D of them for the exact divergence, ``probes`` for Hutchinson's).
        log_density: float64 ``(batch,)``: log p of the point integrated (x, or its
            dequantisation x + u), in nats.
        latent: float64 ``(batch, ...)``: the x-space state at σ_max where the prior was read.
        dims: D, the number of dimensions of one sample.
        levels: the number of quantisation levels, or ``None`` for continuous data.
        stats: the solver's counters (accepted and rejected steps).
    """

    nats: Tensor
    bpd: Tensor
    nfe: int
    log_density: Tensor
    latent: Tensor
    dims: int
    levels: int | None = None
    stats: dict[str, int] = field(default_factory=dict)

    def summary(self) -> tuple[float, float]:
        """Mean bits per dimension over the batch and its standard error."""
        return mean_and_stderr(self.bpd)


class LogDensityField(ModelField):
    """The augmented field of the log-density ODE on the state (x̄, ℓ), shape ``(batch, D + 1)``:
    dx̄/dσ = ε(σ, x̄) (flattened) and dℓ/dσ = ∇_x̄·ε(σ, x̄).

    It is a :class:`~diffode.field.ModelField` in ε form, its "network" the wrapped field, so that
    :func:`diffode.solve` reads it like any network field: x̂₀ = (x̄ - σε, ℓ - σ∇·ε), and a solver
    that evaluates part of the batch gets :meth:`rows`, which keeps each sample's conditioning
    and probes.

    Args:
        inner: the field of the network (:func:`diffode.field_for`).
        shape: the shape of one sample, D = prod(shape).
        tangents: float64 ``(P, batch, D)``: the probes v of Hutchinson's estimate
            (1/P) Σ vᵀ(∂ε/∂x̄)v, or ``None`` for the exact trace.
    """

    prediction = "epsilon"

    def __init__(
        self, inner: ModelField, shape: tuple[int, ...], tangents: Tensor | None, loop: bool = False
    ) -> None:
        super().__init__(inner)
        self.inner = inner
        self.shape = shape
        self.dims = math.prod(shape)
        self.tangents = tangents
        self.loop = loop

    def rows(self, index: Tensor) -> LogDensityField:
        part = LogDensityField(self.inner.rows(index), self.shape, None, self.loop)
        if self.tangents is not None:
            part.tangents = self.tangents.index_select(1, index.to(self.tangents.device))
        return part

    def _pullbacks(
        self, pullback: Callable[[Tensor], tuple[Tensor, ...]], tangents: Tensor, chunk: int
    ) -> Tensor:
        """``pullback`` of each tangent along the first dimension, stacked: batched by
        ``torch.func.vmap``, or one by one for a network that vmap cannot batch (diffusers' UNets
        ask for their input's memory format, which vmap does not answer)."""
        if not self.loop:
            try:
                return torch.func.vmap(pullback, chunk_size=chunk)(tangents)[0]
            except RuntimeError as err:
                if "vmap" not in str(err):
                    raise
                self.loop = True
        return torch.stack([pullback(t)[0] for t in tangents])

    def _run(self, sigma: Sigma, x: Tensor, alpha: Coefficient) -> Tensor:
        # x = αx̄ is the x-space state the inner field reads; ε as a function of x̄ is E(αx̄), so
        # ∂ε/∂x̄ = α ∂E/∂x and the trace is taken in x and scaled by α
        k, d = x.shape[0], self.dims

        def eps_of(flat: Tensor) -> Tensor:
            return self.inner.predict_x(sigma, flat.reshape(k, *self.shape))[0].reshape(k, d)

        # torch.func differentiates with respect to x alone, whatever the caller's grad mode
        # (function transforms ignore an outer no_grad), so nothing reaches the caller's graph
        # unless it asked for one (likelihood(grad=True))
        try:
            primal_and_pullback = torch.func.vjp(eps_of, x[:, :d])  # typed as (out, pullback[, aux])
            eps, pullback = primal_and_pullback[0], primal_and_pullback[1]
            if self.tangents is None:
                basis = torch.eye(d, dtype=x.dtype, device=x.device).unsqueeze(1).expand(d, k, d)
                chunk = max(1, EXACT_CHUNK_ELEMENTS // (k * d))
                rows = self._pullbacks(pullback, basis, chunk)  # (D, k, D): ∂ε/∂x rows
                trace = torch.diagonal(rows, dim1=0, dim2=2).sum(-1)
            else:
                v = self.tangents.to(x.dtype)
                trace = (self._pullbacks(pullback, v, v.shape[0]) * v).sum(-1).mean(0)
        except RuntimeError as err:
            if "in-place operation" not in str(err):
                raise
            # torch's advice ("rewrite the function") misleads: a module in training mode
            # updates its own buffers (BatchNorm's running statistics) as it runs
            model = self.inner.model
            training = (
                "it is in training mode (BatchNorm updates its running statistics): call model.eval() first"
            )
            in_place = "it updates a buffer or a tensor it holds in place: make its forward pass free of that"
            if isinstance(model, torch.nn.Module):
                reason = training if any(m.training for m in model.modules()) else in_place
            else:
                reason = f"if {training}; else {in_place}"
            raise ValueError(
                "the model changes its own state when called, which the divergence's differentiation cannot "
                f"follow: {reason}"
            ) from None
        scale = alpha.reshape(-1) if isinstance(alpha, Tensor) else alpha
        return torch.cat([eps, (scale * trace).unsqueeze(1)], dim=1)

    def _split(self, out: Tensor, x: Tensor, alpha: Coefficient, s: Coefficient) -> tuple[Tensor, Tensor]:
        return _from_eps(out, x, alpha, s)


def likelihood(
    model: Model | ModelField,
    schedule: NoiseSchedule,
    x: Tensor,
    *,
    solver: str | Solver = "dopri5",
    rtol: float | None = None,
    atol: float | None = None,
    divergence: str = "exact",
    probes: int = 1,
    probe: str = "rademacher",
    generator: Generator = None,
    levels: int | None = None,
    prediction: str = "epsilon",
    cond: Cond | None = None,
    guidance: float | Guidance | None = None,
    uncond: Cond | None = None,
    progress: bool = False,
    grad: bool = False,
) -> Likelihood:
    """Log-likelihood of data ``x`` under the model's probability-flow ODE, in nats and bits/dim.

    ``x`` is the model's state at its first training timestep (t = 0, σ = ``schedule.sigma_min``)
    in x-space; the ODE is integrated up to σ_max, where the prior is N(0, I) in x (module
    docstring for the formula and its one approximation).

    Args:
        model: a network ``model(x, t)`` predicting ``prediction``, or a field such as
            :class:`~diffode.DenoiserField` (see :func:`~diffode.field_for`).
        schedule: the schedule the model was trained with; σ_max must be finite.
        x: data, floating ``(batch, ...)``; with ``levels``, on the K-level grid of [-1, 1].
        solver: an adaptive solver: ``"dopri5"`` or ``"bosh3"`` (diffode's, with per-sample step
            control, so a sample's result does not depend on its batch), ``"torchdiffeq:<method>"``,
            ``"scipy:<method>"``, or an adaptive :class:`~diffode.solvers.Solver` object.
        rtol, atol: tolerances of a named solver (default :data:`DEFAULT_TOL` each); a solver
            object carries its own. They bound the error of x̄ and of ℓ, whose error goes
            straight into the nats.
        divergence: ``"exact"`` (the Jacobian's trace, D vector-Jacobian products per evaluation:
            for small D) or ``"hutchinson"`` (unbiased, ``probes`` products per evaluation).
        probes: Hutchinson probes per sample, averaged.
        probe: their distribution, ``"rademacher"`` (±1, the lower variance) or ``"gaussian"``.
        generator: randomness for the probes and the dequantisation: a ``torch.Generator``, or one
            per sample (each sample's draws then depend only on its own generator). Per sample,
            the dequantisation noise is drawn first, then the probes.
        levels: K, for data quantised to K evenly spaced levels in [-1, 1] (256 for 8-bit images,
            17 for scikit-learn's digits): x is dequantised uniformly within its bin of width
            Δ = 2/(K-1), and ``nats``/``bpd`` are those of the discrete data, a variational bound
            (see :class:`Likelihood`). ``None``: continuous data, bpd = -nats / (D ln 2).
        prediction: what the network predicts (``"epsilon"``, ``"sample"``, ``"v_prediction"``,
            ``"score"``).
        cond: conditioning of a conditional network, one row per sample (see ``field_for``).
        guidance, uncond: classifier-free guidance (see ``field_for``): the likelihood under the
            guided probability-flow ODE, i.e. of the distribution its deterministic sampler
            draws from.
        progress: draw a progress bar on stderr.
        grad: keep the autograd graph through the solve (gradients of the nats with respect to
            ``x`` or the model's parameters); off by default, and the result is then detached.

    Returns:
        A :class:`Likelihood`.
    """
    x = require_finite("x", require_floating("x", x))
    if x.ndim < 2:
        raise ValueError(
            f"x must have shape (batch, ...) with at least one dimension per sample, got {tuple(x.shape)}; "
            "add the sample dimension with x.unsqueeze(-1)"
        )
    if x.shape[0] == 0:
        raise ValueError("x holds no samples (batch 0)")
    if x[0].numel() == 0:
        raise ValueError(
            f"x has no dimensions per sample (shape {tuple(x.shape)}); a likelihood needs at least one"
        )
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(
            f"schedule must be a diffode.Schedule or another NoiseSchedule, got {type(schedule).__name__}"
        )
    sigma_min, sigma_max = float(schedule.sigma_min), float(schedule.sigma_max)
    if not math.isfinite(sigma_max):
        raise ValueError(
            "schedule has zero terminal SNR (sigma_max = inf), where the ODE cannot be integrated to; "
            "use a schedule with a finite sigma_max"
        )
    stepper = _adaptive_solver(solver, rtol, atol)
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    probes = require_int("probes", probes, low=1)
    if divergence == "exact" and probe != "rademacher":
        raise ValueError(
            f"probe={probe!r} applies to divergence='hutchinson' only; drop probe or pass "
            "divergence='hutchinson'"
        )
    if divergence == "exact" and probes != 1:
        raise ValueError(
            f"probes={probes} applies to divergence='hutchinson' only; "
            "drop probes or pass divergence='hutchinson'"
        )
    spacing = None if levels is None else _bin_width(levels)
    batch, shape = x.shape[0], tuple(x.shape[1:])
    check_generator(generator, batch)
    dims = math.prod(shape)
    inner = field_for(model, schedule, prediction, cond=cond, guidance=guidance, uncond=uncond)
    with graph_mode(grad):
        start = x.to(_F64) if grad else x.detach().to(_F64)
        point = start
        if spacing is not None:
            # x's own dtype rounds the levels; the bins are those of the exact levels
            start = start + (_check_on_grid(start, spacing, x.dtype) - start).detach()
            # uniform dequantisation within the bin: x + Δ(u - ½), u ~ U[0, 1)^D
            point = start + spacing * (_draw(generator, batch, (1, *shape), "uniform", start)[0] - 0.5)
        tangents = None
        if divergence == "hutchinson":
            tangents = _draw(generator, batch, (probes, dims), probe, start)
        augmented = LogDensityField(inner, shape, tangents)
        state = torch.cat(
            [point.reshape(batch, dims) * math.sqrt(1 + sigma_min**2), point.new_zeros(batch, 1)], dim=1
        )
        grid = torch.tensor([sigma_min, sigma_max], dtype=_F64)
        out = solve(augmented, state, grid, stepper, progress=progress)
        latent = out.x[:, :dims] / math.sqrt(1 + sigma_max**2)
        prior = -0.5 * (latent.pow(2).sum(1) + dims * math.log(2 * math.pi))
        # the x ↔ x̄ log-determinants at both ends: D log √(1+σ²) each
        log_density = (
            prior
            + out.x[:, dims]
            - 0.5 * dims * math.log1p(sigma_max**2)
            + 0.5 * dims * math.log1p(sigma_min**2)
        )
        nats = log_density if spacing is None else log_density + dims * math.log(spacing)
        return Likelihood(
            nats=nats,
            bpd=-nats / (dims * _LN2),
            nfe=out.nfe,
            log_density=log_density,
            latent=latent.reshape(batch, *shape),
            dims=dims,
            levels=levels,
            stats=out.stats,
        )


def _adaptive_solver(solver: str | Solver, rtol: float | None, atol: float | None) -> Solver:
    """The adaptive solver for ``likelihood``'s ``solver``, ``rtol`` and ``atol``: one grid interval
    [σ_min, σ_max] is integrated in one go, which only a step-size controller does well."""
    if isinstance(solver, Solver):
        if rtol is not None or atol is not None:
            raise ValueError(
                f"rtol/atol apply to a solver named by a string; {solver!r} carries its own tolerances"
            )
        stepper = solver
    else:
        r = DEFAULT_TOL if rtol is None else require_positive("rtol", rtol)
        a = DEFAULT_TOL if atol is None else require_positive("atol", atol)
        stepper = _named_solver(solver, r, a)
    if not stepper.adaptive:
        raise ValueError(
            f"likelihood integrates [sigma_min, sigma_max] in one interval and needs an adaptive solver, "
            f"got {stepper!r}; use 'dopri5', 'bosh3', 'torchdiffeq:dopri5' or 'scipy:RK45'"
        )
    return stepper


def _named_solver(name: str, rtol: float, atol: float) -> Solver:
    named: dict[str, Any] = {"dopri5": Dopri5, "bosh3": Bosh3}
    if name in named:
        stepper: Solver = named[name](rtol=rtol, atol=atol, per_sample=True)
        return stepper
    prefix, sep, method = name.partition(":") if isinstance(name, str) else ("", "", "")
    if sep and prefix == "torchdiffeq":
        # a fixed-grid method takes no tolerances: Torchdiffeq's refusal of them would be advice
        # about tolerances that the caller did not pass
        adaptive = method in TORCHDIFFEQ_METHODS and TORCHDIFFEQ_METHODS[method].adaptive
        return Torchdiffeq(method, rtol=rtol, atol=atol) if adaptive else Torchdiffeq(method)
    if sep and prefix == "scipy":
        return Scipy(method, rtol=rtol, atol=atol)
    # any other name: the registry's error for unknown names, else a fixed-step solver refused above
    return get_solver(name)


def _bin_width(levels: int) -> float:
    """Δ = 2/(K-1), the spacing of K evenly spaced levels in [-1, 1]."""
    k = require_int("levels", levels, low=2)
    return 2.0 / (k - 1)


def _check_on_grid(x: Tensor, spacing: float, dtype: torch.dtype) -> Tensor:
    """The levels -1 + iΔ in [-1, 1] nearest to ``x`` (float64); ``ValueError`` unless ``x`` is on
    them to the round-off of ``dtype``, the dtype the data came in."""
    levels = round(2 / spacing) + 1
    # a level in [-1, 1] stored in that dtype is off by up to half its unit of round-off
    resolution = torch.finfo(dtype).eps
    if 4 * resolution > spacing:
        raise ValueError(
            f"levels={levels}: x is {str(dtype).removeprefix('torch.')}, whose resolution "
            f"({resolution:.3g}) does not separate {levels} levels {spacing:.3g} apart; pass the data as "
            "it was before that cast (or snap(x.float(), levels, slack=...) if it was only rounded)"
        )
    index = (x.to(_F64) + 1) / spacing
    off = (index - index.round()).abs().max()
    outside = bool(((index < -0.5) | (index > levels - 0.5)).any())
    # data mapped from integers is off its level by its dtype's round-off (float32: ~1e-7 Δ)
    if outside or float(off) > 1e-3 + resolution / spacing:
        raise ValueError(
            f"levels={levels}: x must lie on the {levels} evenly spaced levels -1, -1 + {spacing:g}, …, 1; "
            f"got values {float(off):.3g} bins off the grid{' or outside [-1, 1]' if outside else ''}. "
            "Quantise the data first (diffode.likelihood.snap), or pass levels=None for continuous data"
        )
    return index.round() * spacing - 1


def snap(x: Tensor, levels: int, *, slack: float) -> Tensor:
    """``x`` moved to the nearest of ``levels`` evenly spaced levels in [-1, 1] (same shape and
    dtype), for data stored at another resolution (such as 17-level digits saved as 8-bit images,
    off their levels by up to 1/255). ``ValueError`` when a value is further than ``slack``
    (in x units) from every level."""
    spacing = _bin_width(levels)
    slack = require_nonnegative("slack", slack)
    require_finite("x", x)
    nearest = ((x.to(_F64) + 1) / spacing).round().clamp(0, levels - 1) * spacing - 1
    off = float((nearest - x.to(_F64)).abs().max()) if x.numel() else 0.0
    if off > slack:
        raise ValueError(
            f"the data is not on {levels} levels: a value is {off:.3g} from the nearest level (allowed "
            f"{slack:.3g}); pass the number of levels the data was quantised to"
        )
    return nearest.to(x.dtype)


def _draw(generator: Generator, batch: int, shape: tuple[int, ...], kind: str, like: Tensor) -> Tensor:
    """Random draws of ``kind`` (``"uniform"``, ``"rademacher"``, ``"gaussian"``), float64
    ``(shape[0], batch, *shape[1:])`` on ``like``'s device: from one generator, or per sample
    from ``generator[i]`` (each drawn on its generator's device)."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([_draw_one(g, shape, kind).to(like.device) for g in generator], dim=1)
    return _draw_one(generator, (shape[0], batch, *shape[1:]), kind).to(like.device)


def _draw_one(generator: torch.Generator | None, shape: tuple[int, ...], kind: str) -> Tensor:
    """float64 draws of ``kind``, on the generator's device (the CPU without one)."""
    device = generator.device if generator is not None else torch.device("cpu")
    if kind == "uniform":
        return torch.rand(shape, generator=generator, dtype=_F64, device=device)
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=_F64, device=device)
    signs = torch.randint(0, 2, shape, generator=generator, device=device)
    return signs.to(_F64) * 2 - 1


__all__ = ["DEFAULT_TOL", "Likelihood", "LogDensityField", "likelihood", "mean_and_stderr", "snap"]
