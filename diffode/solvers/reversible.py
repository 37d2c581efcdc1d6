"""Running a sampler backwards exactly: an algebraically reversible sampler and implicit inverses.

Two ways to undo sampling steps, both usable as solvers on an increasing σ grid:

- :class:`BDIA` is a sampler whose step is its own inverse: the map from the states at two
  neighbouring grid points to the next pair runs backwards with the same formula, so encoding
  with it and decoding again reproduce the input up to floating-point round-off.
- :class:`InverseOf` inverts any deterministic single-step solver (Euler/DDIM, Heun, Midpoint,
  RK4, …) step by step: each step's implicit equation is solved by Anderson-accelerated
  fixed-point iteration to a tolerance, so decoding with that solver on the same grid
  reproduces the input to that tolerance. Wrapping a reversible solver, it only inverts the
  step out of σ = 0.

:func:`diffode.encode` (``method="exact"``) uses both; they are ordinary solvers of
:func:`diffode.solve` as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffode import fixed_point
from diffode.boundary import invert_into_zero
from diffode.field import PredictingField, Sigma, VectorField
from diffode.fixed_point import (
    DEFAULT_MAX_ITER,
    FLOOR_FACTOR,
    STEP_MEMORY,
    FixedPoint,
    default_acceptance,
    default_tolerance,
    solve_fixed_point,
)
from diffode.solvers.base import Solver
from diffode.validation import (
    describe,
    require_floating,
    require_int,
    require_nonnegative,
    require_positive,
    wide_float,
)


class BDIA(Solver):
    """Bidirectional integration approximation (BDIA) with γ = 1. Order 2, 1 evaluation per step.

    BDIA (Zhang, Lewis & Kleijn 2023, "Exact diffusion inversion via bi-directional integration
    approximation", arXiv 2307.10829) replaces DDIM's one-step update by a two-step one. From the
    state x̄_k at σ_k, let D_j = x̄_k + (σ_j - σ_k) f(σ_k, x̄_k) be the DDIM prediction at σ_j
    (one evaluation serves both neighbours). Then

        x̄_{k-1} = D_{k-1} + r (x̄_{k+1} - D_{k+1}),    r = c(σ_{k-1}) / c(σ_{k+1}),

    with c(σ) = √(σ_data² + σ²): the state two grid points up keeps its deviation from the DDIM
    prediction, rescaled. Solving for x̄_{k+1} gives the same formula with σ_{k-1} and σ_{k+1}
    exchanged, so the step is its own inverse: run on the reversed grid with the same
    evaluations, it retraces a trajectory to round-off without any iteration. The first step of
    a solve has no earlier state and is a DDIM (Euler) step, unless ``companion`` provides the
    state at the second grid point.

    The choice of c fixes the coordinates v = x̄/c(σ) in which the two-step difference is formed
    (EDM's input scaling). A two-step method carries a parasitic mode that changes sign every
    step; with an exact inverse, whatever damps it in one direction amplifies it in the other.
    In v, Gaussian data of standard deviation σ_data follow a constant linearised flow, so the
    mode neither grows nor decays in either direction, and both the samples (σ decreasing) and
    the latents (σ increasing) stay clean. σ_data = 1 (the default, ``"bdia"``) forms the
    difference in x-space: that is the published BDIA-DDIM, z_{i-1} = z_{i+1} - DDIM(z_i; t_i →
    t_{i+1}) + DDIM(z_i; t_i → t_{i-1}). σ_data = 0.5 (``"bdia-edm"``, EDM's value for data in
    [-1, 1]) is a variant that keeps the latents of the oracles closer to N(0, I) at few steps;
    σ_data → ∞ forms it in x̄ (the leapfrog rule), which amplifies round-off in sampling;
    σ_data = 0 in the data-prediction coordinates u = x̄/σ, which damps the mode in sampling (the
    Jacobian there, Cov[x₀ | x̄]/σ, is positive semi-definite for an exact denoiser) but lets it
    grow while encoding, so latents are far from N(0, I). docs/encoding.md has the measurements.

    Order: σ_k is the middle of [σ_{k+1}, σ_{k-1}] in any smooth time up to O(h²) when the grid
    spacing varies smoothly, which keeps the explicit midpoint rule's second order (measured
    2.0 on Karras grids and on DDIM's uniform grid above t = 100, Gaussian and mixture oracles).

    Args:
        sigma_data: the data's standard deviation in the scaling above; ≥ 0. 1 (x-space) is the
            published method; any other value is a variant, named ``"bdia-edm"`` at 0.5.
        companion: the x̄ state at the second grid point (shape and dtype of the start state):
            :func:`diffode.encode` (``method="exact"``) returns it in x-space and
            :func:`diffode.decode` passes it here. With it the first step costs no evaluation
            and decoding retraces the encoding. ``None``: start with a DDIM step (fresh noise).
    """

    name = "bdia"
    order = 2
    evals_per_step = 1
    reversible = True

    def __init__(self, sigma_data: float = 1.0, companion: Tensor | None = None) -> None:
        self.sigma_data = require_nonnegative("sigma_data", sigma_data)
        self.companion = None if companion is None else require_floating("companion", companion)
        # only the published coordinates carry the published name
        variants = {1.0: "bdia", 0.5: "bdia-edm"}
        self.name = variants.get(self.sigma_data, f"bdia(sigma_data={self.sigma_data:g})")

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> Any:
        if self.companion is None:
            return None
        if self.companion.shape != x.shape or self.companion.dtype != x.dtype:
            raise ValueError(
                f"companion must match the start state: shape {tuple(x.shape)} and dtype {x.dtype}, got "
                f"shape {tuple(self.companion.shape)} and dtype {self.companion.dtype}"
            )
        if sigmas.numel() < 3 or float(sigmas[1]) == 0.0:
            raise ValueError(
                f"a companion is the state at the second σ of the grid, but the grid {describe(sigmas)} "
                "has no positive second σ; pass companion=None"
            )
        return None

    def step(self, f: VectorField, s0: float, s1: float, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        if state is None:
            first = self.companion if self.companion is not None else x + (s1 - s0) * f(s0, x)
            return first, (s0, x)
        s_prev, x_prev = state
        eps = f(s0, x)
        ratio = math.hypot(self.sigma_data, s1) / math.hypot(self.sigma_data, s_prev)
        # Formed in float64 (MPS has none) and rounded once: each rounding is a perturbation that
        # the two-step method's parasitic mode grows while decoding, and the several roundings of
        # float32 arithmetic doubled the digits model's float32 round trips (3.3e-5 against 2.1e-5
        # at 100 steps; docs/encoding.md). The deviation x_prev - D_prev is small, so rescaling
        # it and adding it to D_next loses no digits.
        work = wide_float(x.device)
        xw, ew = x.to(work), eps.to(work)
        out = xw + (s1 - s0) * ew + ratio * (x_prev.to(work) - (xw + (s_prev - s0) * ew))
        return out.to(x.dtype), (s0, x)

    def __repr__(self) -> str:
        companion = "" if self.companion is None else f", companion=<shape {tuple(self.companion.shape)}>"
        return f"BDIA(sigma_data={self.sigma_data}{companion})"


@dataclass(frozen=True)
class InverseStep:
    """What :class:`InverseOf` reports after inverting one step (to its ``observer``).

    Attributes:
        sigma, sigma_next: the step, upwards (the sampling step runs from ``sigma_next`` down).
        residual: per sample, float64 ``(batch,)``: how far the sampling step from the result
            lands from the given state, max abs in x-space at ``sigma`` (0 for a reversible
            solver's algebraic steps).
        iterations: per sample, int64 ``(batch,)``.
        evaluations: network rows evaluated for this step (per-sample cost: divide by batch).
    """

    sigma: float
    sigma_next: float
    residual: Tensor
    iterations: Tensor
    evaluations: int


class InversionError(ValueError):
    """Exact inversion missed its tolerance: ``sample`` on the step σ ``sigma`` → ``sigma_next``
    ended at ``residual`` (x-space, max abs) above what was asked (``tol``, relative to the
    state's scale; ``floor``: the measured round-off floor, relative)."""

    def __init__(
        self,
        message: str,
        *,
        sample: int,
        sigma: float,
        sigma_next: float,
        residual: float,
        tol: float,
        floor: float,
    ) -> None:
        super().__init__(message)
        self.sample, self.sigma, self.sigma_next = sample, sigma, sigma_next
        self.residual, self.tol, self.floor = residual, tol, floor


@dataclass
class _InverseRun:
    """Per-solve state of :class:`InverseOf`: the inner solver's state, counters, the field's
    value at the last result and the denoised state x̄ - σf at the last step's start (the next
    step's predictor), and per sample the denoiser's slope measured in the last step (the next
    step's gain)."""

    inner: Any
    iterations: int = 0
    max_iterations: int = 0
    evaluations: int = 0
    carry: tuple[float, Tensor] | None = None
    denoised: tuple[float, Tensor] | None = None
    slope_d: Tensor | None = None


class _Tap:
    """The field as :class:`InverseOf` passes it on: counts the rows it evaluates (the
    per-sample cost) and, with ``keep_first``, keeps the value of its first evaluation. A
    single-step solver's first evaluation is f at the step's start (a Runge–Kutta tableau has
    c₁ = 0), which is the next step's predictor."""

    def __init__(self, f: PredictingField, run: _InverseRun, keep_first: bool = False) -> None:
        self.f, self.run, self.keep_first = f, run, keep_first
        self.value: Tensor | None = None

    def __call__(self, sigma: Sigma, x: Tensor) -> Tensor:
        return self.predict(sigma, x)[0]

    def predict(self, sigma: Sigma, x: Tensor) -> tuple[Tensor, Tensor]:
        self.run.evaluations += x.shape[0]
        value, x0 = self.f.predict(sigma, x)
        if self.keep_first and self.value is None:
            self.value = value
        return value, x0

    def predict_x(self, sigma: Sigma, x: Tensor) -> tuple[Tensor, Tensor]:
        self.run.evaluations += x.shape[0]
        return self.f.predict_x(sigma, x)

    def rows(self, index: Tensor) -> _Tap:
        return _Tap(self.f.rows(index), self.run)


class InverseOf(Solver):
    """The exact inverse of sampling with a deterministic single-step or reversible solver.
    Order: that of ``solver``. Evaluations per step: ``solver.evals_per_step`` per iteration
    and sample, plus one to measure the round-off floor for a sample that stalls above the
    tolerance; the predictor is free (the field's value at the step's start is the first stage
    of the previous step's last iteration). A reversible solver: its own evaluations.

    On an increasing σ grid, the step from s0 up to s1 returns the y that the wrapped solver's
    step from s1 down to s0 maps onto the given state: ``solver.step(f, s1, s0, y) = x``. Run
    on the reversed sampling grid [0, σ₁, …, σ_S] it undoes sampling step by step, so decoding
    the result with ``solver`` on the same grid reproduces the input up to the residuals (plus
    the round-off of the decoding itself). Its first step, out of σ = 0, inverts the step into
    σ = 0 that :func:`diffode.solve` takes itself (:func:`diffode.boundary.invert_into_zero`),
    whatever the wrapped solver. An algebraically reversible solver (``solver.reversible``, e.g.
    :class:`BDIA`) is its own inverse: its steps are taken as they are, upwards.

    Each implicit equation is solved per sample by
    :func:`~diffode.fixed_point.solve_fixed_point` (Anderson acceleration). The predictor holds
    the denoised state D = x̄ - σf fixed over the step, y₀ = D + (s1/s0)(x - D) (the explicit
    reverse Euler step y₀ = x + (s1 - s0) f(s0, x) when D is D(s0)), with D(s1) extrapolated
    linearly in log σ from the starts of this step and the last. The first iteration divides its
    residual by r + (1 - r) c, r = s0/s1: the sampling step's derivative is r I + (1 - r) ∂D/∂x̄,
    and c is the denoiser's slope measured per sample by the previous step's first iteration (1
    on the first step, the plain iteration). Samples that have converged are no longer
    evaluated (the field's ``rows``). A sample stops at the tolerance, or when its residual
    stops improving; it has converged when it reached the tolerance or, with the
    default tolerance, the round-off floor of the sampling step measured at its result. With the
    default tolerance, a sample that reaches it returns one more Anderson step, unevaluated
    (:data:`~diffode.fixed_point.LEAP`), which lands it at the round-off floor. A
    sample that has not raises :class:`InversionError` (a ``ValueError``) naming the sample,
    the step, the residual and the options that help; it never returns silently. The iteration
    converges when the sampling step is a small perturbation of the identity; coarse steps
    through regions where the network's Jacobian exceeds 1/Δσ (a real network near σ = 0,
    where the sampling step folds) may not converge at all. Testing convergence synchronises
    with the device once per iteration, twice while a settled sample's floor is looked for.

    Args:
        solver: a deterministic single-step :class:`Solver` (Euler, DDIM with η = 0, any
            Runge–Kutta method, singlestep DPM-Solver++) or a reversible one (:class:`BDIA`).
            Multistep solvers (their state carries history), adaptive and stochastic ones are
            refused.
        tol: per-sample tolerance on ‖solver.step(y) - x‖∞ / max(1, ‖x‖∞, ‖y₀‖∞) (y₀ the
            predictor), met by the returned y; ``None``:
            :func:`~diffode.fixed_point.default_tolerance` of the coarser of the state's dtype
            and the network's and the unevaluated last step above, or the measured round-off
            floor where that is higher.
        max_iter: fixed-point iterations allowed per step and sample (on the step into σ = 0,
            per attempt: the second attempt for stalled samples gets as many again).
        memory: Anderson history length (0: plain damped iteration); ``None``:
            :data:`~diffode.fixed_point.STEP_MEMORY`, and on the step into σ = 0, the nearly
            singular one, a second attempt for the samples that stall
            (:func:`~diffode.boundary.invert_into_zero`).
        observer: called with an :class:`InverseStep` after every step (per-sample residuals,
            iterations and cost); :func:`diffode.encode` collects them.
    """

    name = "inverse"

    def __init__(
        self,
        solver: Solver,
        *,
        tol: float | None = None,
        max_iter: int = DEFAULT_MAX_ITER,
        memory: int | None = None,
        observer: Callable[[InverseStep], None] | None = None,
    ) -> None:
        if not isinstance(solver, Solver):
            raise TypeError(
                f"solver must be a diffode Solver object (use diffode.solvers.get_solver(name) for a "
                f"name), got {type(solver).__name__}"
            )
        if solver.stochastic:
            raise ValueError(
                f"{solver!r} is stochastic: its steps add fresh noise and have no inverse; invert a "
                "deterministic solver (DDIM with eta=0 is Euler)"
            )
        if solver.adaptive:
            raise ValueError(
                f"{solver!r} is adaptive: its steps depend on its error control, so a step cannot be "
                "inverted on its own; encode with method='reverse', or invert a fixed-step solver"
            )
        if isinstance(solver, InverseOf):
            raise ValueError(f"{solver!r} is an inverse already; invert the sampler itself")
        if not (solver.single_step or solver.reversible):
            what = (
                "is a backend's integrator, whose steps diffode does not invert"
                if solver.name == "torchdiffeq"
                else "carries state between steps (a multistep history), so one of its steps cannot "
                "be inverted on its own"
            )
            raise ValueError(
                f"{solver!r} {what}; invert one of diffode's single-step solvers (euler, heun, "
                "midpoint, rk4, dpmpp-2s) or encode with method='reverse'"
            )
        self.solver = solver
        self.tol = None if tol is None else require_positive("tol", tol)
        self.max_iter = require_int("max_iter", max_iter, low=1)
        self.memory = None if memory is None else require_int("memory", memory, low=0)
        self.observer = observer
        self.order = solver.order
        # per fixed-point iteration; the iteration count is data-dependent, so NFE is only known
        # after the solve
        self.evals_per_step = solver.evals_per_step

    def init(self, f: VectorField, sigmas: Tensor, x: Tensor, generator: Any = None) -> _InverseRun:
        if sigmas.numel() > 1 and float(sigmas[1]) < float(sigmas[0]):
            raise ValueError(
                f"{self!r} undoes sampling steps and runs on an increasing σ grid, got the decreasing "
                f"grid {describe(sigmas)}; pass the sampling grid reversed (sigmas.flip(0))"
            )
        if self.solver.reversible:
            return _InverseRun(self.solver.init(f, sigmas, x, None))
        return _InverseRun(self.solver.init(f, sigmas.flip(0), x, None))

    def leave_zero(self, f: PredictingField, s1: float, x: Tensor, state: _InverseRun) -> tuple[Tensor, Any]:
        criteria = self._criteria(f, x)
        found = invert_into_zero(
            _Tap(f, state), s1, x, max_iter=self.max_iter, memory=self.memory, **criteria
        )
        # more steps lower σ₁ only on grids that do not start at the schedule's σ_min already
        # (trailing spacing starts at σ(T/S - 1))
        schedule = getattr(getattr(f, "model", f), "schedule", None)
        lowest = schedule is not None and s1 <= schedule.sigma_min * (1 + 1e-9)
        self._finish(state, 0.0, s1, criteria, found, before=0, more_steps=not lowest)
        state.carry = None if found.aux is None else (s1, found.aux)
        # this step's map is x̂₀ itself, so its secant is the denoiser's slope at σ₁: the next
        # step's gain
        state.slope_d = torch.where(found.secant.isnan(), 1.0, found.secant.clamp(0.0, 1.0))
        return found.y, state

    def step(
        self, f: PredictingField, s0: float, s1: float, x: Tensor, state: _InverseRun
    ) -> tuple[Tensor, Any]:
        before = state.evaluations
        if self.solver.reversible:
            y, state.inner = self.solver.step(_Tap(f, state), s0, s1, x, state.inner)
            zero = x.new_zeros(x.shape[0], dtype=torch.float64)
            self._report(state, s0, s1, zero, before, zero.long())
            return y, state

        def sampling_step(y: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor | None]:
            tap = _Tap(f if rows is None else f.rows(rows), state, keep_first=True)
            out, _ = self.solver.step(tap, s1, s0, y, state.inner)
            return out, tap.value

        carry = state.carry
        # the field at (s0, x) is the first stage of the previous step's accepted iterate: solve
        # hands each step the x the previous one returned, so the σ tells that it applies (after
        # a leap, x is one unevaluated Anderson step from that iterate, within a few units of
        # round-off: as good a start for the predictor)
        slope = carry[1] if carry is not None and carry[0] == s0 else _Tap(f, state)(s0, x)
        # Predictor: the field is (x̄ - D)/σ with D = x̄ - σf the denoised state, whose flow with D
        # held fixed (x̄ - D ∝ σ) the Euler step undoes exactly; D at s1 is extrapolated linearly
        # in log σ from this step's start and the last one's (on the digits model, float32, 50
        # steps: 7.5 -> 7.0 evaluations per step with the gain below; docs/encoding.md).
        denoised = x - s0 * slope
        last = state.denoised
        if last is not None and 0 < last[0] < s0:
            denoised_s1 = denoised + math.log(s1 / s0) / math.log(s0 / last[0]) * (denoised - last[1])
        else:
            denoised_s1 = denoised
        state.denoised = (s0, denoised)
        guess = denoised_s1 + (s1 / s0) * (x - denoised_s1)
        criteria = self._criteria(f, x)
        # The step's derivative is r I + (1 - r) ∂D/∂x̄ with r = s0/s1 (Euler's exactly, the others'
        # nearly): the first iteration divides its residual by r + (1 - r) c, c the denoiser's
        # slope along that iteration's step in the previous step (1 before any: the identity). On
        # the digits network c falls from about 0.5 below σ = 1 to 0.03 above σ = 4.
        ratio = s0 / s1
        slope_d = state.slope_d
        gain = 1.0 if slope_d is None else ratio + (1 - ratio) * slope_d
        found = solve_fixed_point(
            sampling_step,
            x,
            guess,
            max_iter=self.max_iter,
            memory=STEP_MEMORY if self.memory is None else self.memory,
            gain=gain,
            **criteria,
        )
        measured = ((found.secant - ratio) / (1 - ratio)).clamp(0.0, 1.0)
        state.slope_d = torch.where(measured.isnan(), 1.0 if slope_d is None else slope_d, measured)
        state.carry = None if found.aux is None else (s1, found.aux)
        self._finish(state, s0, s1, criteria, found, before)
        return found.y, state

    def _criteria(self, f: PredictingField, x: Tensor) -> dict[str, Any]:
        """The stopping and acceptance rule of :func:`solve_fixed_point`: the tolerance asked
        for, or the defaults of the coarser of ``x``'s dtype and the network's (a float16 network
        integrated in float32) with the measured round-off floor."""
        if self.tol is not None:
            return {"tol": self.tol, "accept": None, "floor_ok": False, "leap": False}
        dtype = x.dtype
        network = getattr(getattr(f, "model", None), "network_dtype", None)
        if network is not None and torch.finfo(network).eps > torch.finfo(dtype).eps:
            dtype = network
        return {
            "tol": default_tolerance(dtype),
            "accept": default_acceptance(dtype),
            "floor_ok": True,
            "resolution": torch.finfo(dtype).eps,
            "leap": fixed_point.LEAP,
        }

    def _report(
        self, state: _InverseRun, s0: float, s1: float, residual: Tensor, before: int, iterations: Tensor
    ) -> None:
        if self.observer is not None:
            self.observer(InverseStep(s0, s1, residual, iterations, state.evaluations - before))

    def _finish(
        self,
        state: _InverseRun,
        s0: float,
        s1: float,
        criteria: dict[str, Any],
        found: FixedPoint,
        before: int,
        more_steps: bool = True,
    ) -> None:
        """Record the step σ ``s0`` → ``s1``; raise if a sample missed the tolerance (offering
        more steps if ``more_steps``: they change this step)."""
        tol = criteria["accept"] or criteria["tol"]
        most = int(found.iterations.max())
        state.iterations += most
        state.max_iterations = max(state.max_iterations, most)
        # x-space: the target x̄ lives at s0
        absolute = found.residual * found.scale / math.sqrt(1.0 + s0 * s0)
        self._report(state, s0, s1, absolute, before, found.iterations)
        if bool(found.converged.all()):
            return
        failed = (~found.converged).nonzero()[:, 0]
        worst = int(failed[found.residual[failed].argmax()])
        residual, floor = float(found.residual[worst]), float(found.floor[worst])
        # a tolerance that this sample would have met on this step, rounded up to one significant
        # digit (an explicit tol also changes the other steps' iterations, so not a promise)
        if math.isfinite(residual) and residual > 0:
            exponent = math.floor(math.log10(residual))
            meets = float(f"{math.ceil(residual / 10.0**exponent * (1 - 1e-9))}e{exponent}")
            # an explicit tol applies to every step of every sample, not to this one alone
            accept = f"accept this residual on every step of every sample (tol={meets:g}; CLI --tol), "
        else:
            accept = ""
        steps = (
            "a finer grid (more steps=, CLI --steps, or more values in an explicit grid; "
            "timesteps='logsnr' keeps every step's σ ratio moderate), "
            if more_steps
            else ""
        )
        # a sample stopped by the iteration limit may go on converging; one that stopped
        # improving before it (stagnation) does not, however many iterations it is allowed
        iterations = int(found.iterations[worst])
        limited = iterations >= self.max_iter
        stopped = "" if limited else " (where it stopped improving)"
        more = f"more iterations (max_iter={self.max_iter} now; CLI --max-iter), " if limited else ""
        raise InversionError(
            f"exact inversion of {self.solver!r} did not converge on the step σ {s0:.6g} -> {s1:.6g} for "
            f"sample {worst} ({failed.numel()} of {found.residual.numel()} samples): residual "
            f"{residual:.3g} (relative; {float(absolute[worst]):.3g} in x) after "
            f"{iterations} iterations{stopped}, above "
            + (
                f"the acceptance {tol:.3g} (tol {criteria['tol']:.3g}) and {FLOOR_FACTOR:g} times the "
                f"round-off floor {floor:.3g}"
                if self.tol is None
                else f"tol {tol:.3g}"
            )
            + f". Options: {steps}{more}{accept}or method='reverse' (CLI --method reverse)",
            sample=worst,
            sigma=s0,
            sigma_next=s1,
            residual=float(absolute[worst]),
            tol=tol,
            floor=floor,
        )

    def stats(self, state: _InverseRun) -> dict[str, int]:
        return {
            "iterations": state.iterations,
            "max_iterations": state.max_iterations,
            "sample_evaluations": state.evaluations,
        }

    def __repr__(self) -> str:
        return f"InverseOf({self.solver!r}, tol={self.tol}, max_iter={self.max_iter}, memory={self.memory})"


__all__ = ["BDIA", "InverseOf", "InverseStep", "InversionError"]
