"""Error against a reference versus NFE for every solver, on the Gaussian-mixture oracle.

Samples a batch from the 8-component ring mixture through its exact ε model (DDPM linear
schedule, T = 1000, float64) with every fixed-step solver of the registry at about 5, 10, 20, 50
and 100 network evaluations, on the Karras, log-SNR and DDIM uniform grids, and with the adaptive
solvers at a few tolerances. The error is the RMS deviation of the final samples from a float64
Dopri5 solve at rtol = atol = 1e-10 of the same span, which takes the same final first-order step
into σ = 0 (diffode.study.reference_solution). Writes the tables into docs/solvers.md between
the benchmark's markers and prints them.

Run from the repository root:

    .venv/bin/python benchmarks/solvers_error_vs_nfe.py
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from docs_block import write_block
from torch import Tensor

from diffode import EpsField, Schedule, oracles, sigma_grid, solve, study
from diffode.solvers import UnstableStepError, get_solver, solver_names
from diffode.solvers.adaptive import Bosh3, Dopri5
from diffode.solvers.backends import Scipy, Torchdiffeq

COMMAND = ".venv/bin/python benchmarks/solvers_error_vs_nfe.py"
TARGETS = (5, 10, 20, 50, 100)
GRIDS = {"karras": "Karras (ρ = 7)", "logsnr": "log-SNR uniform", "uniform": "DDIM uniform"}
TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5)
ADAPTIVE = {
    "bosh3": lambda tol: Bosh3(rtol=tol, atol=tol),
    "dopri5": lambda tol: Dopri5(rtol=tol, atol=tol),
    "dopri5 per-sample": lambda tol: Dopri5(rtol=tol, atol=tol, per_sample=True),
    "torchdiffeq:dopri5": lambda tol: Torchdiffeq("dopri5", rtol=tol, atol=tol),
    "scipy:RK45": lambda tol: Scipy("RK45", rtol=tol, atol=tol),
}
DOC = Path(__file__).resolve().parents[1] / "docs" / "solvers.md"


def fixed_step_solvers() -> list[str]:
    """Every deterministic fixed-step solver name of the registry; "ddim" (η = 0) is Euler."""
    names = [n for n in solver_names() if ":" not in n and n != "ddim"]
    return [n for n in names if not get_solver(n).adaptive and not get_solver(n).stochastic]


def steps_for(nfe: int, evals_per_step: int) -> int:
    """σ points S before the final 0 for about ``nfe`` evaluations: (S - 1) steps of
    ``evals_per_step`` evaluations, then the one-evaluation step into σ = 0."""
    return max(2, round((nfe - 1) / evals_per_step) + 1)


class References:
    """Reference final states per span (DDIM's uniform grid starts at a σ that depends on S)."""

    def __init__(self, field: EpsField, noise: Tensor) -> None:
        self.field, self.noise, self.cache = field, noise, {}

    def start(self, grid: Tensor) -> Tensor:
        return self.noise * math.sqrt(1 + float(grid[0]) ** 2)

    def __call__(self, grid: Tensor) -> Tensor:
        key = (float(grid[0]), float(grid[-2]))
        if key not in self.cache:
            self.cache[key] = study.reference_solution(self.field, self.start(grid), grid)
        return self.cache[key]


def fixed_step_table(schedule: Schedule, refs: References, spacing: str) -> list[dict[str, object]]:
    rows = []
    for name in fixed_step_solvers():
        solver = get_solver(name)
        row: dict[str, object] = {"solver": name, "order": solver.order}
        points = []
        for target in TARGETS:
            grid = sigma_grid(schedule, steps_for(target, solver.evals_per_step), spacing)
            try:
                solver.init(refs.field, grid, refs.noise)
            except UnstableStepError:  # a step the solver is unstable on (Heun, RK4, UniPC bh1)
                row[f"NFE≈{target}"] = "refused"
                continue
            result = study.measure(
                refs.field, refs.start(grid), grid, solver, reference=refs(grid), label=name
            )
            row[f"NFE≈{target}"] = f"{result.rms_error:.2e} ({result.nfe})"
            points.append((result.nfe, result.rms_error))
        tail = [p for p in points if p[0] >= 20 and p[1] > 0]
        row["slope, NFE ≥ 20"] = -study.empirical_order(*zip(*tail, strict=True)) if len(tail) >= 2 else None
        rows.append(row)
    return rows


def adaptive_table(schedule: Schedule, refs: References) -> list[dict[str, object]]:
    grid = torch.tensor([schedule.sigma_max, schedule.sigma_min, 0.0], dtype=torch.float64)
    x, ref = refs.start(grid), refs(grid)
    rows = []
    for name, make in ADAPTIVE.items():
        row: dict[str, object] = {"solver": name}
        for tol in TOLERANCES:
            out = solve(refs.field, x, grid, make(tol))
            err = out.x - ref
            # the error in the controller's units, RMS of err / (atol + rtol |x|): over the batch, and
            # for the worst sample (the state a per-sample controller sees)
            scaled = (err / (tol + tol * ref.abs())).square()
            batch, worst = float(scaled.mean().sqrt()), float(scaled.mean(1).sqrt().max())
            rms = float(err.square().mean().sqrt())
            row[f"tol {tol:g}"] = f"{rms:.2e} ({out.nfe}; {batch:.2g} / {worst:.2g})"
        rows.append(row)
    return rows


def agreement_table(schedule: Schedule, refs: References) -> list[dict[str, object]]:
    """Native, torchdiffeq and scipy solvers at rtol = atol = 1e-10 against DOP853 at 1e-13."""
    span = torch.tensor([schedule.sigma_max, schedule.sigma_min], dtype=torch.float64)
    x = refs.start(span)
    truth = solve(refs.field, x, span, Scipy("DOP853", rtol=1e-13, atol=1e-13, max_nfe=100_000)).x
    solvers = {
        "dopri5": Dopri5(rtol=1e-10, atol=1e-10),
        "dopri5 per-sample": Dopri5(rtol=1e-10, atol=1e-10, per_sample=True),
        "torchdiffeq:dopri5": Torchdiffeq("dopri5", rtol=1e-10, atol=1e-10),
        "scipy:RK45": Scipy("RK45", rtol=1e-10, atol=1e-10),
        "scipy:DOP853": Scipy("DOP853", rtol=1e-10, atol=1e-10),
    }
    outs = {name: solve(refs.field, x, span, solver) for name, solver in solvers.items()}
    return [
        {
            "solver": name,
            "NFE": out.nfe,
            "max abs vs DOP853 at 1e-13": float((out.x - truth).abs().max()),
            "max abs vs dopri5": float((out.x - outs["dopri5"].x).abs().max()),
        }
        for name, out in outs.items()
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=256, help="number of samples (default 256)")
    parser.add_argument("--no-write", action="store_true", help="print the tables without updating docs/")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    began = time.perf_counter()
    schedule = Schedule.linear()
    field = EpsField(oracles.GaussianMixture.ring().model(schedule), schedule)
    noise = torch.randn(args.batch, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    refs = References(field, noise)
    parts = [
        f"Ring mixture oracle (8 components, radius 2, std 0.15), {args.batch} samples, float64, DDPM "
        "linear schedule (T = 1000), noise seed 0. Cells: RMS error of the final samples against the "
        "reference (actual NFE in parentheses). Reference: float64 Dopri5 at rtol = atol = 1e-10 over "
        "the same span, followed by the same first-order step into σ = 0.",
    ]
    for spacing, title in GRIDS.items():
        parts.append(
            f"#### Fixed-step solvers, {title} grid\n\n"
            + study.to_markdown(fixed_step_table(schedule, refs, spacing))
        )
    parts.append(
        "#### Adaptive solvers, grid [σ_max, σ_min, 0], rtol = atol = tol\n\n"
        "Cells: RMS error (NFE; the error in units of the tolerance, the RMS of err / (atol + rtol·|x|) "
        "over the batch / for the worst sample; the controller keeps each step's estimate of it "
        "below 1).\n\n" + study.to_markdown(adaptive_table(schedule, refs))
    )
    parts.append(
        "#### Agreement at rtol = atol = 1e-10, from σ_max to σ_min (no step into 0)\n\n"
        + study.to_markdown(agreement_table(schedule, refs))
    )
    parts.append(f"Reproduce with `{COMMAND}` ({time.perf_counter() - began:.0f} s on one CPU thread).")
    text = "\n\n".join(parts)
    print(text)
    if not args.no_write:
        write_block(DOC, "solvers_error_vs_nfe", text)
        print(f"\nwrote {DOC.relative_to(DOC.parents[1])}", file=sys.stderr)


if __name__ == "__main__":
    main()
