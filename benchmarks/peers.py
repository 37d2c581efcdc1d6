"""diffode's solvers and grids against diffusers' schedulers and k-diffusion's samplers.

On the same noise, at NFE 5, 10 and 20, on the bundled digits network and on the 8-component
ring mixture (exact ε):

- distance: RMS distance in x to the converged ODE solution started from the same x-space noise
  at σ_max (t = T - 1), integrated to σ_min (t = 0) and followed by the step into 0 that every
  sampler takes (x̂₀). A grid that starts lower (DDIM's "leading"/"uniform") starts from the
  same noise at its own first σ and pays for the difference; every configuration uses at most
  the stated NFE.
- stability: at 10 NFE, every solver on every named grid against Euler on the same grid, both
  measured against the converged solution from that grid's own first point (digits).
- diagnosis: where the 10-NFE cells beyond 3× Euler lose accuracy (distance to the converged
  trajectory at every grid point) and the digits denoiser's Jacobian spectrum along trajectories.
- digits Fréchet distance (1000 samples, float32) at 5, 10, 20 NFE for the best configurations.
- loop overhead: 100 Euler steps through ``diffode.solve`` and diffusers' DDIM loop against the
  bare network calls, on a tiny MLP and the digits UNet.

Writes docs/benchmarks.md (between its markers), the plots docs/benchmarks_*.png, and prints
everything. Run from the repository root (needs the ``bench`` extra: diffusers; k-diffusion with
``pip install --no-deps k-diffusion``):

    .venv/bin/python benchmarks/peers.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from docs_block import save_figure, write_block, write_bytes
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the peer loops live with the tests that check them

import diffusers  # noqa: E402

from diffode import EpsField, Schedule, oracles, sample, sigma_grid, solve, study  # noqa: E402
from diffode.grids import optimize  # noqa: E402
from diffode.models import MLP  # noqa: E402
from diffode.pretrained import digits, digits_fd  # noqa: E402
from diffode.solvers import IPNDM, UnstableStepError, get_solver, without_stability_check  # noqa: E402
from diffode.solvers.adaptive import Dopri5  # noqa: E402
from tests.peer_loops import diffusers_sample, k_diffusion_sample, k_diffusion_sampling  # noqa: E402

COMMAND = ".venv/bin/python benchmarks/peers.py"
DOC = ROOT / "docs" / "benchmarks.md"
NFES = (5, 10, 20)
GRIDS = ("uniform", "quadratic", "trailing", "linspace", "karras", "logsnr")
"""Every named grid ("leading" is "uniform")."""
OPTIMIZED = "optimized"
"""The grid of :func:`diffode.grids.optimize` fitted for each solver of :data:`OPTIMIZED_FOR`."""
OPTIMIZED_FOR = ("euler", "ipndm", "unipc-bh2-2", "deis-3")
OPTIMIZE = {"candidates": 24, "sweeps": 3}
FAMILIES = (
    "euler",
    "heun",
    "dpmpp-2s",
    "ab3",
    "dpmpp-2m",
    "dpmpp-3m",
    "dpmpp-3m-exact",
    "unipc-bh1-2",
    "unipc-bh2-2",
    "unipc-bh1-3",
    "unipc-bh2-3",
    "ipndm",
    "deis-3",
    "deis-tab-3",
)
"""One or two solvers of each family for the error-versus-NFE tables."""
REFERENCE_TOL = 1e-6
"""rtol = atol of the Dopri5 solve that gives the converged solution from σ_max (float64)."""
STABILITY_TOL = 1e-5
"""rtol = atol of the converged solutions from each grid's own first point (stability table)."""


def fixed_step_solvers() -> list[str]:
    """Every deterministic fixed-step solver name ("ddim" with η = 0 is "euler")."""
    from diffode.solvers import solver_names

    names = [n for n in solver_names() if ":" not in n and n != "ddim"]
    return [n for n in names if not get_solver(n).adaptive and not get_solver(n).stochastic]


def positive_points(nfe: int, evals_per_step: int) -> int:
    """σ values before the final 0 so that (S - 1)·k + 1 ≤ ``nfe`` evaluations."""
    return (nfe - 1) // evals_per_step + 1


@dataclass
class Problem:
    """A network on its schedule with a fixed batch of x-space noise, float64 throughout."""

    name: str
    model: Callable[[Tensor, Tensor], Tensor]
    schedule: Schedule
    noise: Tensor
    pilot: Tensor
    cache: dict[float, Tensor] = field(default_factory=dict)
    fitted: dict[tuple[str, int], Tensor] = field(default_factory=dict)

    @property
    def field(self) -> EpsField:
        return EpsField(self.model, self.schedule)

    def start(self, sigma: float, noise: Tensor | None = None) -> Tensor:
        return (self.noise if noise is None else noise) * math.sqrt(1 + sigma * sigma)

    def converged(self, sigma: float | None = None) -> Tensor:
        """The converged solution from the noise at ``sigma`` (default σ_max) through σ_min to 0."""
        top = self.schedule.sigma_max if sigma is None else sigma
        if top not in self.cache:
            span = torch.tensor([top, self.schedule.sigma_min, 0.0], dtype=torch.float64)
            tol = REFERENCE_TOL if sigma is None else STABILITY_TOL
            self.cache[top] = solve(self.field, self.start(top), span, Dopri5(rtol=tol, atol=tol)).x
        return self.cache[top]

    def distance(self, x: Tensor, sigma: float | None = None) -> float:
        return float((x.double() - self.converged(sigma)).square().mean().sqrt())

    def grid(self, spacing: str, nfe: int, solver: str) -> Tensor:
        if spacing == OPTIMIZED:
            if (solver, nfe) not in self.fitted:
                s = self.schedule
                pilot = self.start(s.sigma_max, self.pilot)
                # the named grids with the right number of points and σ_min at the end join the
                # starting grids of the refinement
                size = positive_points(nfe, get_solver(solver).evals_per_step)
                named = [sigma_grid(s, size, spacing) for spacing in GRIDS]
                init = [g for g in named if g.numel() == size + 1 and float(g[-2]) == s.sigma_min]
                self.fitted[solver, nfe] = optimize(
                    self.field, pilot, s.sigma_max, s.sigma_min, nfe, solver=solver, init=init, **OPTIMIZE
                )
            return self.fitted[solver, nfe]
        return sigma_grid(self.schedule, positive_points(nfe, get_solver(solver).evals_per_step), spacing)

    def run(self, solver: str, spacing: str, nfe: int) -> tuple[Tensor, int, float]:
        """(final x, NFE, first σ) of ``solver`` on ``spacing`` within ``nfe`` evaluations."""
        grid = self.grid(spacing, nfe, solver)
        top = float(grid[0])
        out = solve(self.field, self.start(top), grid, solver)
        return out.x, out.nfe, top


FD_SEED = 10
"""Noise seed of the Fréchet-distance tables."""


def digits_noise(n: int, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` x-space noise images of the digits model's shape from generator seed ``seed``."""
    return torch.randn(n, 1, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def digits_problem(batch: int) -> Problem:
    model, schedule = digits(dtype=torch.float64)
    noise, pilot = digits_noise(batch, 0, torch.float64), digits_noise(16, 1, torch.float64)
    return Problem("digits", model, schedule, noise, pilot)


def mixture_problem(batch: int) -> Problem:
    schedule = Schedule.linear()
    model = oracles.GaussianMixture.ring().model(schedule)
    noise = torch.randn(batch, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pilot = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return Problem("mixture", model, schedule, noise, pilot)


SELECTION_SEED = 2
"""Noise seed of the samples on which the best configurations are chosen."""


def selection_problem(problem: Problem) -> Problem:
    """``problem`` on other noise of the same size, sharing its pilot and fitted grids: the
    samples on which each side's best configuration is chosen."""
    generator = torch.Generator().manual_seed(SELECTION_SEED)
    noise = torch.randn(problem.noise.shape, dtype=torch.float64, generator=generator)
    return dataclasses.replace(problem, noise=noise, cache={}, fitted=problem.fitted)


# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A peer configuration: ``run(problem, nfe) -> (x, NFE)``."""

    name: str
    run: Callable[[Problem, int], tuple[Tensor, int]]


def betas(schedule: Schedule) -> object:
    """The schedule's β table (numpy) for a diffusers scheduler's ``trained_betas``."""
    alphas = schedule.alphas_cumprod
    return (1 - alphas / torch.cat([torch.ones(1, dtype=torch.float64), alphas[:-1]])).numpy()


def diffusers_peer(label: str, cls: str, two_stage: bool = False, **config: object) -> Peer:
    def run(problem: Problem, nfe: int) -> tuple[Tensor, int]:
        scheduler = getattr(diffusers, cls)(
            num_train_timesteps=problem.schedule.T, trained_betas=betas(problem.schedule), **config
        )
        # Heun's last step is Euler: 2·steps - 1 evaluations
        steps = (nfe + 1) // 2 if two_stage else nfe
        scheduler.set_timesteps(steps)
        calls = [0]

        def model(x: Tensor, t: Tensor) -> Tensor:
            calls[0] += 1
            return problem.model(x, t)

        return diffusers_sample(scheduler, model, problem.noise), calls[0]

    return Peer(f"diffusers {label}", run)


def k_diffusion_peer(sampler: str, two_stage: bool = False) -> Peer:
    def run(problem: Problem, nfe: int) -> tuple[Tensor, int]:
        s = problem.schedule
        # two-stage samplers take 2n - 1 evaluations on n positive σ (the last step is Euler)
        n = (nfe + 1) // 2 if two_stage else nfe
        grid = sigma_grid(s, n, "karras")
        calls = [0]

        def model(x: Tensor, t: Tensor) -> Tensor:
            calls[0] += 1
            return problem.model(x, t)

        return k_diffusion_sample(sampler, model, s, problem.noise, grid), calls[0]

    return Peer(f"k-diffusion {sampler} (Karras)", run)


def peers() -> list[Peer]:
    out = [
        diffusers_peer("DDIM", "DDIMScheduler", clip_sample=False),
        diffusers_peer("DPM++ 2M", "DPMSolverMultistepScheduler", solver_order=2),
        diffusers_peer(
            "DPM++ 2M Karras", "DPMSolverMultistepScheduler", solver_order=2, use_karras_sigmas=True
        ),
        diffusers_peer("DPM++ 3M", "DPMSolverMultistepScheduler", solver_order=3),
        diffusers_peer(
            "DPM++ 3M Karras", "DPMSolverMultistepScheduler", solver_order=3, use_karras_sigmas=True
        ),
        diffusers_peer("UniPC", "UniPCMultistepScheduler"),
        diffusers_peer("Euler", "EulerDiscreteScheduler"),
        diffusers_peer("Heun", "HeunDiscreteScheduler", two_stage=True),
        diffusers_peer("LMS", "LMSDiscreteScheduler"),
    ]
    if k_diffusion_sampling() is not None:
        out += [
            k_diffusion_peer("euler"),
            k_diffusion_peer("heun", two_stage=True),
            k_diffusion_peer("dpm_2", two_stage=True),
            k_diffusion_peer("lms"),
            k_diffusion_peer("dpmpp_2m"),
        ]
    return out


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


@dataclass
class Cell:
    who: str
    grid: str
    target: int
    nfe: int
    distance: float
    x: Tensor | None = None


def diffode_cells(problem: Problem, solvers: list[str], grids: list[str]) -> list[Cell]:
    cells = []
    for solver in solvers:
        for spacing in grids:
            if spacing == OPTIMIZED and solver not in OPTIMIZED_FOR:
                continue
            for target in NFES:
                try:
                    x, nfe, _ = problem.run(solver, spacing, target)
                except UnstableStepError:  # a grid the solver refuses
                    cells.append(Cell(solver, spacing, target, 0, math.nan))
                    continue
                cells.append(Cell(solver, spacing, target, nfe, problem.distance(x)))
    return cells


def peer_cells(problem: Problem, contestants: list[Peer]) -> list[Cell]:
    cells = []
    for peer in contestants:
        for target in NFES:
            x, nfe = peer.run(problem, target)
            cells.append(Cell(peer.name, "", target, nfe, problem.distance(x)))
    return cells


def best(cells: list[Cell], target: int) -> Cell:
    finite = [c for c in cells if c.target == target and math.isfinite(c.distance)]
    return min(finite, key=lambda c: c.distance)


def chosen(cells: list[Cell], selection: list[Cell], target: int) -> Cell:
    """The cell of ``cells`` for the configuration that is best in ``selection`` (the same
    configurations run on other noise): choosing among many configurations on the very samples
    that score them would favour the side with more of them."""
    pick = best(selection, target)
    return next(c for c in cells if (c.who, c.grid, c.target) == (pick.who, pick.grid, target))


def distance_table(cells: list[Cell], by_grid: bool) -> str:
    rows: dict[tuple[str, str], dict[str, object]] = {}
    for c in cells:
        key = (c.who, c.grid)
        row = rows.setdefault(
            key, {"solver" if by_grid else "peer": c.who, **({"grid": c.grid} if by_grid else {})}
        )
        row[f"NFE {c.target}"] = "refused" if c.nfe == 0 else f"{c.distance:.2e} ({c.nfe})"
    return study.to_markdown(list(rows.values()))


def targets_table(
    problem: str, ours: list[Cell], theirs: list[Cell], selection: tuple[list[Cell], list[Cell]]
) -> tuple[str, list[dict[str, object]]]:
    """Per NFE, each side's configuration chosen on the selection noise, scored on the noise of
    ``ours`` and ``theirs``."""
    rows = []
    for target in NFES:
        a, b = chosen(ours, selection[0], target), chosen(theirs, selection[1], target)
        rows.append(
            {
                "problem": problem,
                "NFE": target,
                "diffode best": f"{a.who} / {a.grid}: {a.distance:.2e} ({a.nfe})",
                "peer best": f"{b.who}: {b.distance:.2e} ({b.nfe})",
                "ratio": round(a.distance / b.distance, 3),
                "target ≤ 0.5 (NFE 10, 20)": "—"
                if target == 5
                else ("met" if a.distance <= 0.5 * b.distance else "not met"),
            }
        )
    return study.to_markdown(rows), rows


def stability_table(problem: Problem, solvers: list[str], fd_samples: int) -> tuple[str, list[str]]:
    """At 10 NFE: each solver's distance on each named grid, as a multiple of Euler's, both from
    the grid's own first point, and the digits FD of ``fd_samples`` samples (float32, noise
    seed 10, as the FD tables); the cells of order-2+ solvers beyond 3× are listed."""
    model32, schedule32 = digits()
    noise = digits_noise(fd_samples, FD_SEED)
    quality = Problem("digits", model32, schedule32, noise, noise[:1])
    rows, failures = [], []
    euler = {}
    for spacing in GRIDS:
        x, _, top = problem.run("euler", spacing, 10)
        euler[spacing] = problem.distance(x, top)
    for solver in solvers:
        row: dict[str, object] = {"solver": solver, "order": get_solver(solver).order}
        for spacing in GRIDS:
            try:
                x, _, top = problem.run(solver, spacing, 10)
            except UnstableStepError:
                row[spacing] = "refused"
                continue
            d = problem.distance(x, top)
            ratio = d / euler[spacing]
            fd = digits_fd(quality.run(solver, spacing, 10)[0].float().clamp(-1, 1))
            row[spacing] = f"{d:.3f} ({ratio:.2f}×), FD {fd:.1f}"
            if get_solver(solver).order >= 2 and not ratio <= 3:
                failures.append(f"{solver} on {spacing}: {ratio:.2f}× Euler")
        rows.append(row)
    return study.to_markdown(rows), failures


REFUSAL_NFES = (5, 10, 16, 20, 30, 40)
"""Budgets of the refusal table: where Heun, RK4 and iPNDM refuse a grid, what the steps would give."""


def refusal_table(problem: Problem) -> str:
    """Heun and RK4 (the Runge–Kutta methods with a stage at the end of the step) and iPNDM on
    every named grid: at each budget of :data:`REFUSAL_NFES`, their distance as a multiple of
    Euler's, taken with ``check_stability=False``, marked where the default check refuses the grid."""
    rows = []
    for name in ("heun", "rk4", "ipndm"):
        checked, unchecked = get_solver(name), without_stability_check(name)
        for nfe in REFUSAL_NFES:
            row: dict[str, object] = {"solver": name, "NFE": nfe}
            for spacing in GRIDS:
                euler, _, top = problem.run("euler", spacing, nfe)
                grid = problem.grid(spacing, nfe, name)
                x = solve(problem.field, problem.start(float(grid[0])), grid, unchecked).x
                ratio = problem.distance(x, float(grid[0])) / problem.distance(euler, top)
                try:
                    checked.init(problem.field, grid, x)
                    row[spacing] = f"{ratio:.2f}×"
                except UnstableStepError:
                    row[spacing] = f"refused ({ratio:.2f}×)"
            rows.append(row)
    return study.to_markdown(rows)


# ---------------------------------------------------------------------------------------------
# Fréchet distance and overhead
# ---------------------------------------------------------------------------------------------


def fd_table(
    samples: int,
    configs: list[tuple[str, Callable[[Problem, int], tuple[Tensor, int]]]],
    fitted: dict[tuple[str, int], Tensor],
) -> str:
    """Digits FD of each configuration at each NFE; optimised grids are those of the distance
    part (``fitted``), fitted on the float64 pilot."""
    model, schedule = digits()
    noise = digits_noise(samples, FD_SEED)
    problem = Problem("digits", model, schedule, noise, noise[:1], fitted=dict(fitted))
    rows = []
    for name, run in configs:
        row: dict[str, object] = {"configuration": name}
        for target in NFES:
            with torch.no_grad():
                x, nfe = run(problem, target)
            row[f"NFE {target}"] = f"{digits_fd(x.float().clamp(-1, 1)):.1f} ({nfe})"
        rows.append(row)
    return study.to_markdown(rows)


def fd_sweep(samples: int, fitted: dict[tuple[str, int], Tensor], nfe: int = 5) -> str:
    """Digits FD at ``nfe`` for every family of :data:`FAMILIES` on every grid, sorted."""
    model, schedule = digits()
    noise = digits_noise(samples, FD_SEED)
    problem = Problem("digits", model, schedule, noise, noise[:1], fitted=dict(fitted))
    rows = []
    for solver in FAMILIES:
        for spacing in [*GRIDS, OPTIMIZED]:
            if spacing == OPTIMIZED and (solver, nfe) not in fitted:
                continue
            try:
                x, used, _ = problem.run(solver, spacing, nfe)
            except UnstableStepError:  # a grid the solver refuses
                continue
            rows.append(
                {"solver": solver, "grid": spacing, "NFE": used, "FD": digits_fd(x.float().clamp(-1, 1))}
            )
    rows.sort(key=lambda row: row["FD"] if math.isfinite(row["FD"]) else math.inf)
    for row in rows:
        row["FD"] = f"{row['FD']:.1f}"
    return study.to_markdown(rows[:15]) + f"\n\n({len(rows) - 15} more, all above {rows[14]['FD']}.)"


FD_SEARCH_SEED = 11
"""Noise seed of the timestep search (the FD tables use seed 10)."""
FD_CHECK_SEEDS = (10, 12, 13, 14)
FD_SEARCH = {
    "solvers": ("deis-3", "dpmpp-2m", "unipc-bh2-2"),
    "starts": (600, 650, 700, 750, 800, 900, 999),
    "ends": (0, 25, 50, 75),
    "spacings": ("uniform", "quadratic"),
}
"""The explicit timestep lists searched at 5 NFE: 5 integer timesteps from a first t down to a
last one, uniform or quadratic in t, then the step into 0 (x̂₀ at the last)."""


def searched_timesteps(first: int, last: int, spacing: str, n: int = 5) -> list[int]:
    u = torch.linspace(1.0, 0.0, n, dtype=torch.float64)
    return [round(last + (first - last) * float(v if spacing == "uniform" else v * v)) for v in u]


def fd_search(samples: int) -> str:
    """Digits FD at 5 NFE over :data:`FD_SEARCH`'s explicit timestep lists on the search seed;
    the best configuration checked on other noise, beside the best named grid and diffusers'
    DPM-Solver++(2M) on the same timesteps."""
    model, schedule = digits()

    def fd(x: Tensor) -> float:
        return digits_fd(x.float().clamp(-1, 1))

    def ours(solver: str, timesteps: object) -> Callable[[Tensor], float]:
        return lambda z: fd(sample(model, schedule, z, steps=5, timesteps=timesteps, solver=solver))

    search = digits_noise(samples, FD_SEARCH_SEED)
    scored = []
    for solver in FD_SEARCH["solvers"]:
        for first in FD_SEARCH["starts"]:
            for last in FD_SEARCH["ends"]:
                for spacing in FD_SEARCH["spacings"]:
                    ts = searched_timesteps(first, last, spacing)
                    scored.append((ours(solver, torch.tensor(ts))(search), solver, ts, spacing))
    scored.sort(key=lambda row: row[0])
    top = [
        {"solver": s, "timesteps": str(ts), "spacing in t": sp, "FD": f"{v:.1f}"}
        for v, s, ts, sp in scored[:5]
    ]
    _, solver, ts, _ = scored[0]

    def theirs(z: Tensor) -> float:
        scheduler = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=schedule.T, trained_betas=betas(schedule), solver_order=2
        )
        return fd(diffusers_sample(scheduler, model, z, timesteps=ts))

    checks = {
        f"diffode {solver}, timesteps {ts}": ours(solver, torch.tensor(ts)),
        f"diffusers DPM++ 2M, timesteps {ts}": theirs,
        "diffode deis-3 / uniform (best named grid)": ours("deis-3", "uniform"),
    }
    rows = []
    for name, run in checks.items():
        values = {seed: run(digits_noise(samples, seed)) for seed in FD_CHECK_SEEDS}
        rows.append(
            {"configuration": name, **{f"seed {k}": f"{v:.1f}" for k, v in values.items()}}
            | {"mean": f"{sum(values.values()) / len(values):.1f}"}
        )
    return (
        f"Searched on noise seed {FD_SEARCH_SEED}: {len(scored)} explicit 5-NFE timestep lists "
        f"(solvers {', '.join(FD_SEARCH['solvers'])}; first t in {list(FD_SEARCH['starts'])}, last t in "
        f"{list(FD_SEARCH['ends'])}, uniform or quadratic in t). The five lowest:\n\n"
        f"{study.to_markdown(top)}\n\nThe best, on other noise ({samples} samples each; seed 10 is the "
        f"tables' above), beside the best named grid and diffusers on the same timesteps:\n\n"
        f"{study.to_markdown(rows)}"
    )


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def overhead_table(repeat: int) -> tuple[str, list[dict[str, object]]]:
    """100 Euler steps: diffode.solve and diffusers' DDIM loop against the bare network calls,
    float32, batch 64, no autograd; best of ``repeat`` runs, interleaved."""
    torch.manual_seed(0)
    schedule = Schedule.linear()
    nets = {"tiny MLP (2-D, width 128, depth 3)": (MLP(2).eval(), (64, 2), schedule)}
    unet, digits_schedule = digits()
    nets["digits UNet (1×8×8)"] = (unet, (64, 1, 8, 8), digits_schedule)
    rows = []
    steps = 100
    for name, (net, shape, sched) in nets.items():
        x = torch.randn(*shape)
        grid = sigma_grid(sched, steps, "leading")
        field_ = EpsField(net, sched)
        times = [torch.full((shape[0],), float(t)) for t in sched.t(grid[:-1]).tolist()]
        ddim = diffusers.DDIMScheduler(
            num_train_timesteps=sched.T,
            trained_betas=betas(sched),
            clip_sample=False,
        )
        ddim.set_timesteps(steps)

        def bare(net=net, x=x, times=times) -> None:
            for t in times:
                net(x, t)

        def ours(field_=field_, x=x, grid=grid) -> None:
            solve(field_, x * math.sqrt(1 + float(grid[0]) ** 2), grid, "euler")

        def theirs(ddim=ddim, net=net, x=x) -> None:
            diffusers_sample(ddim, net, x)

        results = {"bare": [], "diffode": [], "diffusers": []}
        with torch.no_grad():
            for fn in (bare, ours, theirs):
                fn()  # warm-up
            for _ in range(repeat):
                for key, fn in (("bare", bare), ("diffode", ours), ("diffusers", theirs)):
                    results[key].append(best_of(fn, 1))
        b, o, d = (min(results[k]) for k in ("bare", "diffode", "diffusers"))
        rows.append(
            {
                "network": name,
                "bare calls (ms)": round(b * 1e3, 1),
                "diffode Euler (ms)": round(o * 1e3, 1),
                "diffusers DDIM (ms)": round(d * 1e3, 1),
                "diffode / bare": round(o / b, 3),
                "diffusers / bare": round(d / b, 3),
            }
        )
    return study.to_markdown(rows), rows


# ---------------------------------------------------------------------------------------------
# Plots and the page
# ---------------------------------------------------------------------------------------------


def plot(problem: str, ours: list[Cell], theirs: list[Cell], write: bool) -> str:
    """Log-log distance against NFE: each diffode family on its best grid, each peer; the file's
    name (written under docs/ when ``write``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for who in dict.fromkeys(c.who for c in ours):
        mine = [c for c in ours if c.who == who and math.isfinite(c.distance)]
        grid = min(
            {c.grid for c in mine}, key=lambda g: sum(math.log(c.distance) for c in mine if c.grid == g)
        )
        points = sorted((c.nfe, c.distance) for c in mine if c.grid == grid)
        ax.loglog(*zip(*points, strict=True), "o-", label=f"{who} / {grid}")
    for who in dict.fromkeys(c.who for c in theirs):
        points = sorted((c.nfe, c.distance) for c in theirs if c.who == who)
        ax.loglog(*zip(*points, strict=True), "x--", alpha=0.7, label=who)
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel("RMS distance to the converged ODE solution")
    ax.set_title(f"{problem}: diffode (solid, best grid per solver) vs peers (dashed)")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    name = f"benchmarks_{problem}.png"
    fig.tight_layout()
    if write:
        save_figure(fig, ROOT / "docs" / name, dpi=110)
    plt.close(fig)
    return name


def fd_configs(best_digits: list[Cell]) -> list[tuple[str, Callable[[Problem, int], tuple[Tensor, int]]]]:
    """diffode's configurations closest to the converged solution at each NFE, a few fixed ones,
    and every peer."""

    def ours(solver: str, spacing: str) -> Callable[[Problem, int], tuple[Tensor, int]]:
        def run(problem: Problem, nfe: int) -> tuple[Tensor, int]:
            x, used, _ = problem.run(solver, spacing, nfe)
            return x, used

        return run

    chosen = [("euler", "uniform"), ("ipndm", "logsnr"), ("ipndm", OPTIMIZED), ("unipc-bh2-2", OPTIMIZED)]
    chosen += [(c.who, c.grid) for c in best_digits]
    configs = [(f"diffode {s} / {g}", ours(s, g)) for s, g in dict.fromkeys(chosen)]
    return configs + [(p.name, p.run) for p in peers()]


PARTS = ("distance", "stability", "diagnosis", "fd", "overhead")
RESULTS = ROOT / "benchmarks" / "peers.json"
"""The best digits configurations found by the distance part, read by the FD part."""


def distance_part(args: argparse.Namespace) -> str:
    summary, parts, best_digits, fitted = [], [], [], {}
    for problem in (mixture_problem(args.mixture_batch), digits_problem(args.digits_batch)):
        ours = diffode_cells(problem, list(FAMILIES), [*GRIDS, OPTIMIZED])
        theirs = peer_cells(problem, peers())
        selection = selection_problem(problem)
        picked = diffode_cells(selection, list(FAMILIES), [*GRIDS, OPTIMIZED]), peer_cells(selection, peers())
        summary.append(targets_table(problem.name, ours, theirs, picked)[0])
        if problem.name == "digits":
            best_digits, fitted = [chosen(ours, picked[0], n) for n in NFES], problem.fitted
        picture = plot(problem.name, ours, theirs, write=not args.no_write)
        parts.append(
            f"#### {problem.name}: distance to the converged solution\n\n"
            f"{len(problem.noise)} samples, float64. Cells: RMS distance in x (NFE used).\n\n"
            f"![error against NFE, {problem.name}]({picture})\n\n"
            f"Peers:\n\n{distance_table(theirs, by_grid=False)}\n\n"
            f"diffode ({OPTIMIZED!r}: `diffode.grids.optimize(..., solver=that solver, candidates=24, "
            f"sweeps=3, init=the named grids that fit)` on {len(problem.pilot)} pilot samples of "
            "other noise):\n\n" + distance_table(ours, by_grid=True)
        )
        print(parts[-1], flush=True)
    results = {
        "best": [[c.who, c.grid, c.target] for c in best_digits],
        "grids": [[solver, nfe, grid.tolist()] for (solver, nfe), grid in fitted.items()],
    }
    # the FD part reads these: a --no-write trial must not replace them
    if not args.no_write:
        write_bytes(RESULTS, (json.dumps(results, indent=1) + "\n").encode())
    return (
        "#### Targets: best configuration against best peer\n\n"
        f"Each side's best configuration at each NFE is chosen on {len(problem.noise)} samples of other "
        f"noise (seed {SELECTION_SEED}) and scored on the samples of the tables below, so that the side "
        "with more configurations to choose from is not favoured by the choice.\n\n"
        + "\n\n".join([*summary, *parts])
    )


def stability_part(args: argparse.Namespace) -> str:
    problem = digits_problem(args.digits_batch)
    table, failures = stability_table(problem, fixed_step_solvers(), args.fd_samples)
    verdict = (
        "Every solver of order ≥ 2 stays within 3× of Euler on every grid."
        if not failures
        else "Beyond 3× of Euler (order ≥ 2): " + "; ".join(failures) + "."
    )
    return (
        f"Digits, {args.digits_batch} samples, float64, at most 10 NFE. Cells: RMS distance to the "
        "converged solution from the grid's own first point (Dopri5 at rtol = atol = "
        f"{STABILITY_TOL:g}), its multiple of Euler's on the same grid, and the digits FD of "
        f"{args.fd_samples} samples (float32, noise seed 10, clamped to [-1, 1]; DDIM with 1000 steps: "
        f"about 21).\n\n{table}\n\n{verdict}"
        "\n\nWhat the refusals cost: Heun, RK4 and iPNDM at other budgets, distance as a multiple of "
        "Euler's at the same budget, measured with `check_stability=False`; "
        f'"refused" where the default refuses the grid.\n\n{refusal_table(problem)}'
    )


TRAJECTORIES = (
    ("heun", "logsnr"),
    ("rk4", "trailing"),
    ("ipndm", "linspace"),
    ("ipndm", "logsnr"),
    ("ipndm", "karras"),
)
"""The 10-NFE cells of the stability table that were beyond 3× Euler before their solver's check
refused them (Heun's and RK4's denoiser-weight limit, iPNDM's four-step ratio limit; taken
unchecked here), and two iPNDM cells within it for comparison."""
SPECTRUM_SIGMAS = (157.4, 50.0, 14.0, 5.0, 1.25, 0.4, 0.112, 0.03, 0.01)


def spectrum_table(problem: Problem, samples: int = 16) -> str:
    """Eigenvalues d of the digits denoiser's Jacobian ∂x̂₀/∂x̄ (64 × 64, per sample) along the
    converged trajectories from σ_max: the linear stability analysis assumes d ∈ [0, 1]."""
    f = problem.field
    x = problem.start(SPECTRUM_SIGMAS[0])[:samples]
    rows = []
    for i, sigma in enumerate(SPECTRUM_SIGMAS):
        if i:
            span = torch.tensor([SPECTRUM_SIGMAS[i - 1], sigma], dtype=torch.float64)
            x = solve(f, x, span, Dopri5(rtol=STABILITY_TOL, atol=STABILITY_TOL)).x
        values = []
        for row in x:

            def denoise(v: Tensor, sigma: float = sigma, shape: torch.Size = row.shape) -> Tensor:
                y = v.reshape(1, *shape)
                return (y - sigma * f(sigma, y)).reshape(-1)

            jacobian = torch.autograd.functional.jacobian(denoise, row.reshape(-1), vectorize=True)
            values.append(torch.linalg.eigvals(jacobian))
        d = torch.cat(values)
        rows.append(
            {
                "σ": f"{sigma:g}",
                "min Re d": f"{float(d.real.min()):.3f}",
                "max Re d": f"{float(d.real.max()):.3f}",
                "max abs Im d": f"{float(d.imag.abs().max()):.3f}",
                "share with Re d < 0": f"{float((d.real < 0).double().mean()):.2f}",
            }
        )
    return study.to_markdown(rows)


def trajectory_table(problem: Problem) -> str:
    """For each cell of :data:`TRAJECTORIES` and Euler on the same grid: the RMS distance in x to
    the converged trajectory at every grid point (solve stopped there: iPNDM takes no lower-order final steps,
    so its history up to that point is the same)."""
    f = problem.field
    rows = []
    for solver, spacing in TRAJECTORIES:
        grid = problem.grid(spacing, 10, solver)
        start = problem.start(float(grid[0]))
        exact = [start]
        for i in range(grid.numel() - 2):
            exact.append(solve(f, exact[-1], grid[i : i + 2], Dopri5(rtol=1e-7, atol=1e-7)).x)
        # at σ = 0 the stability table's reference: through σ_min, then the step into 0
        exact.append(problem.converged(float(grid[0])))
        for name in (solver, "euler"):
            row: dict[str, object] = {"cell": f"{solver} on {spacing}", "solver": name}
            # the cells the checks refuse, taken as they were
            stepper = get_solver(name) if name == "euler" else without_stability_check(name)
            for k in range(1, grid.numel()):
                top = float(grid[k])
                x = solve(f, start, grid if top == 0.0 else grid[: k + 1], stepper).x
                row[f"σ {top:.3g}"] = (
                    f"{float((x - exact[k]).square().mean().sqrt()) / math.sqrt(1 + top * top):.3f}"
                )
            rows.append(row)
    return "\n\n".join(
        study.to_markdown([r for r in rows if r["cell"] == f"{s} on {g}"]) for s, g in TRAJECTORIES
    )


def last_step_table(problem: Problem) -> str:
    """iPNDM on the 10-NFE grids its check refuses, as a multiple of Euler's distance: as it is
    (unchecked), with its last positive step taken by Euler instead, and at orders 3 and 2."""
    rows = []
    for spacing in ("uniform", "linspace"):
        grid = problem.grid(spacing, 10, "ipndm")
        top = float(grid[0])
        start, unchecked = problem.start(top), without_stability_check("ipndm")
        before = solve(problem.field, start, grid[:-2], unchecked).x
        runs = {
            "ipndm": solve(problem.field, start, grid, unchecked).x,
            "ipndm, last positive step Euler": solve(problem.field, before, grid[-3:], "euler").x,
            "IPNDM(order=3)": solve(problem.field, start, grid, IPNDM(3)).x,
            "IPNDM(order=2)": solve(problem.field, start, grid, IPNDM(2)).x,
        }
        euler = problem.distance(problem.run("euler", spacing, 10)[0], top)
        row: dict[str, object] = {
            "grid": f"{spacing} (last positive step σ {float(grid[-3]):.3g} -> {float(grid[-2]):.3g})"
        }
        rows.append(row | {k: f"{problem.distance(x, top) / euler:.2f}×" for k, x in runs.items()})
    return study.to_markdown(rows)


def ratio_sweep_table(problem: Problem, steps: range = range(10, 19)) -> str:
    """iPNDM (unchecked) on DDIM's uniform and linspace grids at ``steps`` steps: the ratio of
    the last positive step, whether the check refuses the grid, and the distance as a multiple of
    Euler's on the same grid."""
    rows = []
    for spacing in ("uniform", "linspace"):
        for n in steps:
            grid = sigma_grid(problem.schedule, n, spacing)
            top = float(grid[0])
            start = problem.start(top)
            x = solve(problem.field, start, grid, without_stability_check("ipndm")).x
            euler = solve(problem.field, start, grid, "euler").x
            try:
                IPNDM().init(problem.field, grid, start)
                taken = "taken"
            except UnstableStepError:
                taken = "refused"
            rows.append(
                {
                    "grid": spacing,
                    "steps": n,
                    "last positive step σ₀/σ₁": f"{float(grid[-3] / grid[-2]):.1f}",
                    "check": taken,
                    "ipndm / euler": f"{problem.distance(x, top) / problem.distance(euler, top):.2f}×",
                }
            )
    return study.to_markdown(rows)


def diagnosis_part(args: argparse.Namespace) -> str:
    problem = digits_problem(args.digits_batch)
    return (
        "Where the cells beyond 3× Euler lose their accuracy (each now refused by its solver's "
        "check, taken unchecked here: Heun's and RK4's denoiser-weight limit, iPNDM's four-step "
        "ratio limit), and iPNDM on two grids where it stays within 3×. Distance in x (RMS over "
        f"{args.digits_batch} samples, float64) to the converged trajectory (Dopri5, rtol = atol = "
        "1e-7) at each point of the cell's grid, for the solver and for Euler on the same grid; at "
        "σ = 0 to the stability table's converged solution:\n\n"
        f"{trajectory_table(problem)}\n\niPNDM on the two 10-NFE grids its check refuses, as a "
        "multiple of Euler's distance on the same grid: the whole loss is in the last positive step, "
        "which its four-step formula takes over a ratio above 30 after steps of about 2:\n\n"
        f"{last_step_table(problem)}\n\nThe same at 10-18 steps, where the last positive step "
        "shrinks towards iPNDM's limit of 25:\n\n"
        f"{ratio_sweep_table(problem)}\n\nEigenvalues d of the denoiser's Jacobian ∂x̂₀/∂x̄ along "
        "converged trajectories from σ_max (16 samples × 64; for Gaussian data d = s²/(s² + σ²) "
        f"∈ [0, 1]):\n\n{spectrum_table(problem)}"
    )


def fd_part(args: argparse.Namespace) -> str:
    results = json.loads(RESULTS.read_text())
    chosen = [Cell(who, grid, target, 0, 0.0) for who, grid, target in results["best"]]
    fitted = {(solver, n): torch.tensor(grid, dtype=torch.float64) for solver, n, grid in results["grids"]}
    fd = fd_table(args.fd_samples, fd_configs(chosen), fitted)
    sweep = fd_sweep(args.fd_samples, fitted)
    searched = fd_search(args.fd_samples)
    return (
        f"{args.fd_samples} samples (noise seed 10), float32, clamped to [-1, 1]. Cells: digits FD "
        "(NFE). DDIM with 1000 steps: about 21 (docs/digits.md); the metric's own noise at 1000 "
        f"samples is about ±2.\n\n{fd}\n\nAt 5 NFE, every solver family on every grid (FD; the lowest first):"
        f"\n\n{sweep}\n\nAt 5 NFE, explicit timestep lists (`sample(..., timesteps=torch.tensor([...]))`):"
        f"\n\n{searched}"
    )


def overhead_part(args: argparse.Namespace) -> str:
    return (
        "100 Euler (DDIM) steps, batch 64, float32, no autograd, best of "
        f"{args.repeat} interleaved runs; diffode through `diffode.solve` (validation included), "
        f"diffusers through its scheduler loop.\n\n{overhead_table(args.repeat)[0]}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all", help="what to run (all)")
    parser.add_argument("--digits-batch", type=int, default=32, help="digits samples for distances (32)")
    parser.add_argument("--mixture-batch", type=int, default=1024, help="mixture samples (1024)")
    parser.add_argument("--fd-samples", type=int, default=1000, help="samples per Fréchet distance (1000)")
    parser.add_argument("--repeat", type=int, default=7, help="timing repetitions (7)")
    parser.add_argument("--no-write", action="store_true", help="print without updating docs/")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run = {
        "distance": distance_part,
        "stability": stability_part,
        "diagnosis": diagnosis_part,
        "fd": fd_part,
        "overhead": overhead_part,
    }
    for part in PARTS if args.part == "all" else (args.part,):
        began = time.perf_counter()
        with torch.no_grad():
            text = run[part](args)
        took = time.perf_counter() - began
        text += f"\n\nReproduce with `{COMMAND} --part {part}` ({took:.0f} s, 1 CPU thread)."
        print(text, flush=True)
        if not args.no_write:
            write_block(DOC, f"peers-{part}", text)
            print(f"\nwrote {DOC} ({part})", file=sys.stderr)


if __name__ == "__main__":
    main()
