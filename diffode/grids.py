"""σ grids: the one description of a discretisation.

A grid is a strictly monotone float64 tensor of σ values. Sampling grids decrease and end at
σ = 0; the step into σ = 0 is taken by the solve loop without calling the network there.
Timestep spacings follow the DDIM reference code and diffusers (reference §6), Karras et al.
(2022) give the ρ-spaced grid.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from diffode.atomic import atomic_write
from diffode.schedule import NoiseSchedule, require_discrete
from diffode.validation import check_sigma_grid, describe, require_int, require_positive, require_tensor

if TYPE_CHECKING:
    from diffode.field import PredictingField
    from diffode.solvers.base import Solver

TIMESTEP_SPACINGS = ("uniform", "leading", "quadratic", "trailing", "linspace", "karras", "logsnr")
SIGMA_SPACINGS = ("karras", "logsnr")
"""The spacings defined on σ itself rather than on the training timesteps."""

GridSpec = str | Tensor


def spaced_timesteps(schedule: NoiseSchedule, steps: int, spacing: str = "uniform") -> Tensor:
    """Integer training timesteps for ``steps`` sampling steps, descending, int64 of shape ``(S,)``.

    Spacings (T = ``schedule.T``, S = ``steps``):

    - ``"uniform"`` (= ``"leading"``): ``arange(S) * (T // S)``, the DDIM reference code's
      ``range(0, T, T // S)`` limited to S entries (identical when S divides T), and diffusers'
      ``"leading"``.
    - ``"quadratic"``: ``int(v)`` for v in ``linspace(0, √(0.8 T), S)²`` (the reference code's
      ``"quad"``). Where truncation repeats a timestep the repeat is dropped, so fewer than S
      steps are taken; the reference code takes a zero-length step there, an identity.
    - ``"trailing"``: the first S of ``round(arange(T, 0, -T/S)) - 1`` (diffusers' timesteps
      to the bit: NumPy's ``arange`` and exact halves make a few S differ by one from
      ``round(T - i T/S) - 1``; where ``arange`` gives S + 1 values, diffusers keeps a last
      timestep -1, which is dropped here).
    - ``"linspace"``: ``round(linspace(0, T-1, S))`` (diffusers).
    """
    T = require_discrete(
        schedule,
        f"the {spacing!r} spacing needs a discrete schedule (it picks entries of its table); for a "
        "continuous VP schedule build the grid with sigma_grid and timesteps 'uniform' (uniform in t), "
        "'karras', 'logsnr' or an explicit float tensor of σ values",
    ).T
    steps = require_int("steps", steps, low=1, high=T)
    if spacing in ("uniform", "leading"):
        ts = np.arange(steps, dtype=np.int64) * (T // steps)
    elif spacing == "quadratic":
        ts = np.unique(np.array([int(v) for v in np.linspace(0, math.sqrt(T * 0.8), steps) ** 2]))
    elif spacing == "trailing":
        # np.arange with a float step, as diffusers writes it: its values are not T - i·T/S
        # to the last bit, and the exact halves (S = 48: 937.5) round the other way. For some S
        # (62 of 1 … 1000 at T = 1000, S = 61 the first) it gives one value more, and diffusers a
        # timestep -1: the first S are kept
        ts = (np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1)[:steps]
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, steps)).astype(np.int64)
    else:
        integer = tuple(s for s in TIMESTEP_SPACINGS if s not in SIGMA_SPACINGS)
        raise ValueError(f"timesteps spacing must be one of {integer}, got {spacing!r}")
    return torch.from_numpy(np.sort(ts)[::-1].copy())


def _ramp(sigma_min: float, sigma_max: float, steps: int) -> Tensor:
    """The checked arguments of a σ-spaced grid builder and its ramp 0 … 1 over ``steps`` points."""
    steps = require_int("steps", steps, low=1)
    require_positive("sigma_min", sigma_min)
    require_positive("sigma_max", sigma_max)
    if sigma_min >= sigma_max and steps > 1:
        raise ValueError(f"sigma_min must be below sigma_max, got {sigma_min} and {sigma_max}")
    return torch.linspace(0, 1, steps, dtype=torch.float64)


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) σ_i = (σ_max^{1/ρ} + i/(S-1)(σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ, float64 ``(S,)``.

    Descending from ``sigma_max`` to ``sigma_min``; no final zero (see :func:`sigma_grid`).
    """
    require_positive("rho", rho)
    ramp = _ramp(sigma_min, sigma_max, steps)
    if steps == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    lowest = max(abs(math.log(sigma_min)), abs(math.log(sigma_max))) / math.log(sys.float_info.max)
    too_small = ValueError(
        f"rho={rho} is too small for σ in [{sigma_min:g}, {sigma_max:g}]: σ^(1/ρ) overflows or "
        f"underflows; use rho > {lowest:.3g} (7 is EDM's)"
    )
    try:
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    except OverflowError:
        raise too_small from None
    if hi == 0.0:  # both underflowed (σ_max < 1): the grid would hold zeros
        raise too_small
    sigmas = (hi + ramp * (lo - hi)) ** rho
    # (σ^{1/ρ})^ρ is σ only to round-off (2.8e-14 above σ_max at ρ = 5): the ends are the given σ
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return sigmas


def logsnr_sigmas(sigma_min: float, sigma_max: float, steps: int) -> Tensor:
    """σ values uniform in log-SNR (= -2 log σ), float64 ``(S,)``, from ``sigma_max`` down to
    ``sigma_min``: the spacing of equal steps h = λ₁ - λ₀ of the exponential integrators
    (DPM-Solver's "logSNR" skip type; k-diffusion's ``get_sigmas_exponential``). No final zero."""
    ramp = _ramp(sigma_min, sigma_max, steps)
    if steps == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    sig = torch.exp(math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max)))
    # the ends exactly as given, not through exp(log(·))
    sig[0], sig[-1] = sigma_max, sigma_min
    return sig


def sigmas_from_timesteps(schedule: NoiseSchedule, ts: Tensor) -> Tensor:
    """σ grid (float64, ``(S+1,)``) for descending integer timesteps, with the final σ = 0 appended."""
    ts = check_timesteps(schedule, ts)
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([schedule.sigma(ts), zero])


def check_timesteps(schedule: NoiseSchedule, ts: Tensor) -> Tensor:
    """Validate explicit integer timesteps: 1-D, strictly decreasing, each in 0 … T-1."""
    T = require_discrete(
        schedule, "integer timesteps need a discrete schedule; pass σ values as a float tensor"
    ).T
    if ts.ndim != 1 or ts.numel() == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D tensor, got shape {tuple(ts.shape)}")
    ts = ts.to("cpu", torch.int64)
    if (ts < 0).any() or (ts > T - 1).any():
        # diffusers' "trailing" timesteps end in -1 for some S (62 of 1 … 1000 at T = 1000)
        diffusers = (
            "; diffusers' trailing spacing ends some runs with -1, which is no training timestep: "
            "pass timesteps[timesteps >= 0] (diffode ends with its own step into σ = 0), or "
            "timesteps='trailing'"
            if int(ts[-1]) == -1 and ts.numel() > 1 and bool((ts[:-1] >= 0).all())
            else ""
        )
        raise ValueError(f"timesteps must lie in 0 … {T - 1}, got {describe(ts)}{diffusers}")
    if ts.numel() > 1 and not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(
            f"timesteps must be strictly decreasing with no duplicates, got {describe(ts)}; "
            "sort them with torch.sort(ts, descending=True) and drop repeats"
        )
    return ts


DEFAULT_STEPS = 50
"""Steps of a fixed-step solver when none are given (at most T for a discrete schedule)."""

Direction = Literal["sample", "encode"]


def sigma_grid(
    schedule: NoiseSchedule,
    steps: int | None = None,
    timesteps: GridSpec = "uniform",
    *,
    rho: float = 7.0,
    adaptive: bool = False,
    direction: Direction = "sample",
) -> Tensor:
    """The σ grid of a sampling run or of the encoding that inverts it, float64.

    The sampling grid decreases and ends with σ = 0: [σ_S > … > σ_1, 0] (σ_S may be ∞ for a
    zero-terminal-SNR schedule). The encoding grid is the same grid run upwards,
    [0, σ_1 < … < σ_S], and needs a finite σ_S.

    Args:
        schedule: the noise schedule.
        steps: number of network-evaluating steps S; with an explicit tensor ``None`` or its
            number of positive values (a trailing 0 is not a step's start). ``None`` with a
            spacing name: :data:`DEFAULT_STEPS` (at most T), or for an adaptive solver
            (``adaptive=True``) the grid [σ_max, σ_min, 0], whose intervals the solver
            subdivides itself (encoding with zero terminal SNR: from the largest finite σ).
        timesteps: a spacing name (see :func:`spaced_timesteps`, plus ``"karras"`` and
            ``"logsnr"``, see :func:`logsnr_sigmas`; on a continuous schedule ``"uniform"`` is
            S times uniform in t from σ_max's down to σ_min's, as score-SDE samples), a strictly
            decreasing integer tensor of training timesteps, or a strictly decreasing float
            tensor of σ values (a trailing 0 is appended when absent). Explicit tensors always
            describe the sampling grid, also for ``direction="encode"``.
        rho: the Karras ρ.
        adaptive: whether the grid is for an adaptive solver (only changes the default above).
        direction: ``"sample"`` (decreasing) or ``"encode"`` (increasing).
    """
    if direction not in ("sample", "encode"):
        raise ValueError(f"direction must be 'sample' or 'encode', got {direction!r}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(
            "schedule must be a diffode NoiseSchedule (e.g. Schedule.linear(), or the schedule of "
            f"diffode.diffusers_interop.from_diffusers(unet, scheduler)), got {describe(schedule)}"
        )
    if isinstance(timesteps, Tensor) and (timesteps.ndim != 1 or timesteps.numel() == 0):
        raise ValueError(f"timesteps must be a non-empty 1-D tensor, got shape {tuple(timesteps.shape)}")
    increasing = (
        isinstance(timesteps, Tensor) and timesteps.numel() > 1 and bool(timesteps[-1] > timesteps[0])
    )
    if direction == "encode" and increasing:
        raise ValueError(
            f"timesteps must describe the sampling grid, decreasing, got an increasing tensor "
            f"{describe(timesteps)}; encoding runs the grid upwards itself, so pass timesteps.flip(0)"
        )
    if steps is None and isinstance(timesteps, str) and timesteps in TIMESTEP_SPACINGS:
        if adaptive and direction == "encode":
            # latents live at a finite σ: with zero terminal SNR, the largest finite one
            grid = _distinct([schedule.sigma_max_finite, schedule.sigma_min, 0.0])
        elif adaptive:
            # with zero terminal SNR the x̂0 step out of σ = ∞ lands on the largest finite σ
            top = [schedule.sigma_max, schedule.sigma_max_finite][: 1 + math.isinf(schedule.sigma_max)]
            grid = _distinct([*top, schedule.sigma_min, 0.0])
        else:
            steps = min(DEFAULT_STEPS, require_discrete(schedule).T) if schedule.discrete else DEFAULT_STEPS
            grid = _sampling_grid(schedule, steps, timesteps, rho)
    else:
        grid = _sampling_grid(schedule, steps, timesteps, rho)
    if direction == "sample":
        return grid
    if math.isinf(float(grid[0])):
        raise ValueError(
            "the sampling grid starts at sigma = inf (zero terminal SNR), where latents are not "
            "reachable by integrating upwards; use a grid that starts at a finite σ: "
            "timesteps='uniform' (or 'leading') with fewer steps than the schedule's T, or an "
            "explicit one"
        )
    return grid.flip(0)


def _distinct(points: list[float]) -> Tensor:
    """The float64 grid of ``points`` without repeats of a neighbour (a schedule whose σ_min is
    its largest finite σ: zero terminal SNR at T = 2)."""
    kept = [p for i, p in enumerate(points) if i == 0 or p != points[i - 1]]
    return torch.tensor(kept, dtype=torch.float64)


def _sigma_values(schedule: NoiseSchedule, timesteps: Tensor) -> Tensor:
    """A float ``timesteps`` tensor read as σ values: checked as a grid and against the schedule's
    σ range, naming the other reading (integer training timesteps) when it looks meant."""
    hint = (
        "; did you mean integer training timesteps? pass timesteps.long()"
        if schedule.discrete and bool((timesteps == timesteps.round()).all())
        else ""
    )
    values = timesteps.detach().to("cpu", torch.float64)
    slack = (
        schedule.sigma_max * torch.finfo(timesteps.dtype).eps if math.isfinite(schedule.sigma_max) else 0.0
    )
    # σ_max rounded to the tensor's dtype (a float32 copy of a float64 grid) lies just off it: it
    # is read as σ_max
    if bool((values < 0).any()) or bool((values > schedule.sigma_max + slack).any()):
        raise ValueError(
            f"timesteps given as a float tensor are read as σ values, which must lie in "
            f"[0, sigma_max = {schedule.sigma_max:.9g}], got {describe(timesteps)}{hint}"
        )
    grid = check_sigma_grid(timesteps, "timesteps").clone()
    # only the first value can be σ_max: snapping a second one would repeat it
    if abs(float(grid[0]) - schedule.sigma_max) <= slack:
        grid[0] = schedule.sigma_max
    return grid


def _sampling_grid(schedule: NoiseSchedule, steps: int | None, timesteps: GridSpec, rho: float) -> Tensor:
    """The decreasing σ grid ending with 0 for ``steps`` steps of ``timesteps``."""
    if isinstance(timesteps, Tensor):
        if timesteps.dtype == torch.bool or timesteps.is_complex():
            raise TypeError(
                "timesteps must hold integer training timesteps or float σ values, got dtype "
                f"{timesteps.dtype}"
            )
        n = timesteps.numel() - int(timesteps.is_floating_point() and float(timesteps[-1]) == 0.0)
        if steps is not None and steps != n:
            raise ValueError(
                f"steps={steps} disagrees with the {n} steps of the explicit timesteps tensor; "
                "pass steps=None"
            )
        if not timesteps.is_floating_point():
            return sigmas_from_timesteps(schedule, timesteps)
        grid = _sigma_values(schedule, timesteps)
        if grid.numel() > 1 and grid[1] > grid[0]:
            raise ValueError(f"timesteps given as σ values must decrease for sampling, got {describe(grid)}")
        if float(grid[0]) == 0.0:
            raise ValueError(
                f"timesteps given as σ values need at least one σ > 0 to sample from, got "
                f"{describe(grid)}; pass the σ values to step through (a final 0 is appended)"
            )
        if float(grid[-1]) != 0.0:
            grid = torch.cat([grid, torch.zeros(1, dtype=torch.float64)])
        return grid
    if not isinstance(timesteps, str):
        raise TypeError(f"timesteps must be a spacing name or a tensor, got {type(timesteps).__name__}")
    if timesteps not in TIMESTEP_SPACINGS:
        raise ValueError(f"timesteps must be one of {TIMESTEP_SPACINGS} or a tensor, got {timesteps!r}")
    if steps is None:
        raise ValueError(f"steps is required with timesteps={timesteps!r}; pass steps=S")
    if timesteps in SIGMA_SPACINGS and not schedule.sigma_min < schedule.sigma_max_finite:
        raise ValueError(
            f"timesteps={timesteps!r} spaces σ between the schedule's sigma_min and its largest finite "
            f"σ, which coincide here ({schedule.sigma_min:.6g}); use timesteps='uniform' or an explicit grid"
        )
    if timesteps == "karras":
        sig = karras_sigmas(schedule.sigma_min, schedule.sigma_max_finite, steps, rho)
        return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
    if timesteps == "logsnr":
        sig = logsnr_sigmas(schedule.sigma_min, schedule.sigma_max_finite, steps)
        return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
    if timesteps == "uniform" and not schedule.discrete:
        # a continuous time range has no table to space: S times uniform in t from its top down
        # to its bottom, score-SDE's discretisation (torch.linspace(T, eps, N) in its samplers)
        steps = require_int("steps", steps, low=1)
        top, bottom = float(schedule.t(schedule.sigma_max)), float(schedule.t(schedule.sigma_min))
        sig = schedule.sigma(torch.linspace(top, bottom, steps, dtype=torch.float64))
        return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
    return sigmas_from_timesteps(schedule, spaced_timesteps(schedule, steps, timesteps))


# ---------------------------------------------------------------------------------------------
# Optimised grids
# ---------------------------------------------------------------------------------------------

GRID_FORMAT = "diffode-sigma-grid/1"


def optimize(
    f: PredictingField,
    pilot: Tensor,
    sigma_max: float,
    sigma_min: float,
    nfe: int,
    *,
    solver: str | Solver = "euler",
    candidates: int = 40,
    sweeps: int = 3,
    init: Sequence[Tensor] = (),
    reference_rtol: float = 1e-6,
) -> Tensor:
    """A σ grid for ``solver`` at ``nfe`` evaluations, fitted to pilot trajectories.

    Chen et al. (2024), "On the Trajectory Regularity of ODE-based Diffusion Sampling" (GITS,
    ICML, arXiv 2405.11326): the sampling trajectories of one model share their shape, so a grid
    that suits a few pilot trajectories suits the rest. Two stages:

    1. **Dynamic programming (GITS).** The pilot states are integrated accurately (Dopri5 at
       ``reference_rtol``) over ``candidates`` σ values uniform in log σ from ``sigma_max`` to
       ``sigma_min``. Every jump i → j between candidates is taken once with one step of
       ``solver`` from the reference state at σ_i; its cost is the RMS distance in x
       (x̄/√(1+σ²)) to the reference state at σ_j. The chain from σ_max to σ_min with the least
       total cost in exactly the right number of steps is found by dynamic programming.
    2. **Refinement on the real objective.** Summed local costs ignore how errors propagate
       and how a multistep solver carries its history, so the best of the chain, the log-SNR
       grid and the polynomial (Karras) grids with ρ = 2, 3, 5, 7 on the pilot's actual error is
       refined by coordinate descent in log σ: each interior σ is moved a half and a fifth of
       the way towards either neighbour, and kept where the pilot's RMS distance at σ = 0 to
       the reference solution falls, for up to ``sweeps`` sweeps. Each trial is one solve of the
       pilot at ``nfe`` evaluations.

    The DP fixes both ends as GITS does; the refinement may also lower the first σ, the grid
    then starting from the same x-space noise at that σ (as DDIM's uniform and quadratic grids
    do), which saves the evaluation at σ_max, where ε is nearly the noise itself. The last
    positive σ stays σ_min. A multistep solver's DP stage sees its start-up step from each
    reference state; the refinement sees the solver as it runs. Steps and grids the solver
    refuses (Heun's and RK4's unstable steps, :class:`~diffode.solvers.RungeKutta`) are never
    chosen; where every chain of the right length has one, ``ValueError`` says so.

    Args:
        f: the field (e.g. ``diffode.EpsField(model, schedule)``).
        pilot: x̄ at ``sigma_max``, ``(n, ...)``: a few noise samples times √(1+σ_max²).
        sigma_max, sigma_min: the first σ and the last positive σ of the grid.
        nfe: the evaluation budget: (S - 1)·k for S positive σ values and k evaluations per
            step, plus one for the step into 0.
        solver: a deterministic fixed-step solver or its name.
        candidates: σ values the DP chooses from (its cost grows with their square).
        sweeps: refinement sweeps (0: the best starting grid as it is).
        init: more starting grids for the refinement, each with the grid's number of positive σ
            values, at most ``sigma_max`` and ending with ``sigma_min`` (a final 0 is dropped):
            e.g. ``sigma_grid(schedule, S, "quadratic")``.
        reference_rtol: tolerance of the reference solve (rtol = atol).

    Returns:
        float64 ``(S + 1,)``: decreasing σ values from at most ``sigma_max`` ending at 0, for
        ``sample(..., timesteps=grid)`` or :func:`diffode.solve`; keep it with :func:`save_grid`.
    """
    # solve and the solvers import nothing from this module, but the package imports it first
    from diffode.solve import solve
    from diffode.solvers.adaptive import Dopri5
    from diffode.solvers.base import UnstableStepError
    from diffode.solvers.registry import get_solver

    stepper = get_solver(solver)
    if stepper.adaptive or stepper.stochastic:
        raise ValueError(f"optimize needs a deterministic fixed-step solver, got {stepper!r}")
    require_positive("sigma_min", sigma_min)
    require_positive("sigma_max", sigma_max)
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be below sigma_max, got {sigma_min} and {sigma_max}")
    schedule = getattr(f, "schedule", None)
    top = getattr(schedule, "sigma_max", math.inf)
    if sigma_max > top:
        # the network would be evaluated above its last training time (t(σ) is clamped there),
        # and sample() refuses the grid
        raise ValueError(f"sigma_max must be at most the schedule's sigma_max = {top:.9g}, got {sigma_max}")
    require_int("candidates", candidates, low=2)
    require_int("sweeps", sweeps, low=0)
    k = stepper.evals_per_step
    require_int("nfe", nfe, low=1)
    if (nfe - 1) % k:
        raise ValueError(
            f"{stepper.name or stepper!r} takes {k} evaluations per step, and a grid ending at 0 costs "
            f"1 + {k}·steps evaluations; nfe={nfe} is not of that form "
            f"(try {max(nfe - (nfe - 1) % k, 1 + k)})"
        )
    steps = (nfe - 1) // k
    if steps < 1 or steps > candidates - 1:
        raise ValueError(
            f"nfe={nfe} gives {steps} steps between sigma_max and sigma_min, which needs 1 to "
            f"candidates - 1 = {candidates - 1}; raise nfe or candidates"
        )
    grid = logsnr_sigmas(sigma_min, sigma_max, candidates)
    values = grid.tolist()
    ref = solve(f, pilot, grid, Dopri5(rtol=reference_rtol, atol=reference_rtol), save=True).xs
    assert ref is not None
    final = solve(f, ref[-1], grid.new_tensor([sigma_min, 0.0])).x

    def rms(a: Tensor, b: Tensor) -> float:
        return float((a - b).double().square().mean().sqrt())

    def accepted(points: Tensor) -> bool:
        """Whether the solver takes this grid: some refuse steps they are unstable on or that
        magnify the network's errors (:class:`~diffode.solvers.RungeKutta` with a stage at the
        step's end, UniPC bh1)."""
        try:
            stepper.init(f, points, pilot)
        except UnstableStepError:
            return False
        return True

    # 1. GITS: best[n][j], the least summed cost of n jumps from candidate 0 to candidate j
    cost = [[math.inf] * candidates for _ in range(candidates)]
    for i in range(candidates):
        for j in range(i + 1, candidates):
            if accepted(grid[[i, j]]):
                step = solve(f, ref[i], grid[[i, j]], stepper).x
                cost[i][j] = rms(step, ref[j]) / math.sqrt(1 + values[j] ** 2)
    best = [[math.inf] * candidates for _ in range(steps + 1)]
    back = [[-1] * candidates for _ in range(steps + 1)]
    best[0][0] = 0.0
    for n in range(1, steps + 1):
        for j in range(n, candidates):
            best[n][j], back[n][j] = min((best[n - 1][i] + cost[i][j], i) for i in range(n - 1, j))
    if math.isinf(best[steps][candidates - 1]):
        raise ValueError(
            f"{stepper!r} refuses a step of every {steps}-step chain from sigma_max to sigma_min over "
            f"{candidates} candidates (steps it is unstable on or that magnify the network's errors); "
            "raise nfe (more, shorter steps), or candidates where the candidate grid is too coarse"
        )
    chain = [candidates - 1]
    for n in range(steps, 0, -1):
        chain.append(back[n][chain[-1]])
    starts = [[values[i] for i in reversed(chain)], logsnr_sigmas(sigma_min, sigma_max, steps + 1).tolist()]
    starts += [karras_sigmas(sigma_min, sigma_max, steps + 1, rho).tolist() for rho in (2.0, 3.0, 5.0, 7.0)]
    if isinstance(init, Tensor):
        raise TypeError("init is a sequence of grids; pass one grid as init=[grid]")
    for given in init:
        points = check_sigma_grid(given, "init").tolist()
        points = points[:-1] if points[-1] == 0.0 else points
        # the ends rounded to the grid's dtype (a float32 copy) count as the ends
        slack = torch.finfo(given.dtype if isinstance(given, Tensor) else torch.float64).eps
        if points and abs(points[-1] - sigma_min) <= slack * sigma_min:
            points[-1] = sigma_min
        if points and sigma_max < points[0] <= sigma_max * (1 + slack):
            points[0] = sigma_max
        if len(points) != steps + 1 or points[0] > sigma_max or points[-1] != sigma_min:
            raise ValueError(
                f"each init grid needs {steps + 1} positive σ values from at most sigma_max down to "
                f"sigma_min = {sigma_min:.6g}, got {describe(given)}"
            )
        starts.append(points)

    # 2. refinement of the pilot's distance at σ = 0, in log σ; a first σ below σ_max starts from
    # the same x-space noise there
    def error(points: list[float]) -> float:
        start = pilot * math.sqrt((1 + points[0] ** 2) / (1 + sigma_max**2))
        full = torch.tensor([*points, 0.0], dtype=torch.float64)
        return rms(solve(f, start, full, stepper).x, final) if accepted(full) else math.inf

    scored = [(error(points), points) for points in starts]
    current, points = min(scored, key=lambda pair: pair[0])
    logs = [math.log(v) for v in points]
    for _ in range(sweeps):
        improved = False
        for p in range(len(logs) - 1):
            for neighbour in (p - 1, p + 1) if p else (1,):
                for fraction in (0.5, 0.2):
                    trial = [*logs]
                    trial[p] = logs[p] + fraction * (logs[neighbour] - logs[p])
                    value = error([math.exp(v) for v in trial])
                    if value < current:
                        current, logs, improved = value, trial, True
        if not improved:
            break
    if math.isinf(current):
        # the chain of step 1 passes step by step, but a multistep solver (iPNDM) may refuse a
        # step for what precedes it
        raise ValueError(
            f"{stepper!r} refuses every {steps}-step grid from sigma_max to sigma_min that was tried (the "
            "best chain of single steps, the log-SNR, Karras and init grids and their refinements); raise "
            "nfe (more, shorter steps), narrow sigma_max/sigma_min, or use another solver"
        )
    # the chosen start's own values where the refinement left them, not through exp(log(·))
    chosen = [v if logs[i] == math.log(v) else math.exp(logs[i]) for i, v in enumerate(points)]
    chosen[-1] = sigma_min
    return torch.tensor([*chosen, 0.0], dtype=torch.float64)


_GRID_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def save_grid(path: str | Path, grid: Tensor, *, overwrite: bool = False, **info: object) -> None:
    """Write a σ grid (and JSON-serialisable ``info``, e.g. the solver and the model) to a small
    JSON file, atomically; the σ values and their dtype round-trip exactly (Python's shortest
    repr of each value, a leading σ = ∞ of a zero-terminal-SNR grid as ``"inf"``). An existing
    file is replaced only with ``overwrite=True``."""
    # a tensor, whose dtype the file keeps
    values: list[float | str] = [
        "inf" if math.isinf(v) else v for v in check_sigma_grid(require_tensor("grid", grid), "grid").tolist()
    ]
    if Path(path).exists() and not overwrite:
        raise ValueError(f"path {str(path)!r} exists; pass overwrite=True to replace it")
    dtype = str(grid.dtype).removeprefix("torch.")
    payload = {"format": GRID_FORMAT, "sigmas": values, "dtype": dtype, "info": info}
    try:
        text = json.dumps(payload, indent=1, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"info must be JSON-serialisable, with finite numbers: {err}") from None
    with atomic_write(path) as fh:
        fh.write((text + "\n").encode())


def load_grid(path: str | Path) -> Tensor:
    """The σ grid written by :func:`save_grid`, in the dtype it was saved from (float64 for
    :func:`optimize`'s grids and files without one), checked as a grid; pass it as
    ``sample(..., timesteps=grid)``."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read a σ grid from {path}: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != GRID_FORMAT:
        raise ValueError(f"{path} is not a diffode σ grid file (format {GRID_FORMAT!r})")
    values = payload.get("sigmas")
    if isinstance(values, list) and values and values[0] == "inf":
        values = [math.inf, *values[1:]]
    if not (
        isinstance(values, list)
        and values
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    ):
        raise ValueError(
            f"{path} is not a valid σ grid file: 'sigmas' must be a non-empty list of numbers "
            '(the first may be "inf")'
        )
    name = payload.get("dtype", "float64")
    dtype = _GRID_DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise ValueError(
            f"{path} is not a valid σ grid file: 'dtype' must be one of {', '.join(_GRID_DTYPES)}, "
            f"got {payload.get('dtype')!r}"
        )
    # checked as it is returned: a value the dtype cannot hold becomes inf, or equal to its neighbour
    exact = torch.tensor(values, dtype=torch.float64)
    grid = exact.to(dtype)
    if bool((torch.isinf(grid) & torch.isfinite(exact)).any()):
        raise ValueError(f"{path} is not a valid σ grid file: its σ values exceed what {name} holds")
    check_sigma_grid(grid.double(), "grid")
    return grid
