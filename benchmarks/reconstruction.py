"""Reconstruction error of decode(encode(x)) against the number of steps, for each encoding mode.

The analogue of the DDIM paper's Table 2 (reference §12): the mean per-dimension squared error
of decode(encode(x)) for S = 10, 20, 50, 100, 200, 500, 1000 steps of DDIM's uniform grid on the
DDPM linear schedule (T = 1000), float32 and float64, for

- ``reverse``: reverse integration with Euler, i.e. DDIM inversion, decoded with DDIM;
- ``exact``: exact inversion of DDIM (fixed-point iteration to the default tolerance);
- ``bdia``: the algebraically reversible BDIA sampler, decoded with its companion state;

on data of the 8-component ring mixture through its exact ε model, and on N(0, I) data through
a small random ε-network (diffode.testing.RandomEpsNet, 16 dimensions, Lipschitz 0.5). Each cell
also gives the encoding's evaluations per sample. A second table compares BDIA's samples with
DDIM's at equal evaluations on the mixture: RMS distance to a tight float64 reference solution
of the same ODE, and how well the samples match the data (mean log-density under the data
distribution, relative to the data's own; fraction within 3 standard deviations of a mode).
Writes both tables into docs/encoding.md between the benchmark's markers and prints them.

``--digits`` runs the real-network table instead: the bundled digits UNet on the held-out test
split (the first ``--digits-batch`` images), per-dimension MSE and encoding evaluations per image
and step for reverse Euler (DDIM inversion), reverse Heun, exact Euler, exact Heun and BDIA at
S = 10, 20, 50, 100 in float32 and float64, beside the DDIM paper's CIFAR-10 Table 2; it writes
that table between the ``digits-reconstruction`` markers and the figure docs/digits_reconstruction.png
(originals, reverse-DDIM and exact BDIA reconstructions at S = 10).

Run from the repository root:

    .venv/bin/python benchmarks/reconstruction.py
    .venv/bin/python benchmarks/reconstruction.py --digits
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from docs_block import write_block
from torch import Tensor

from diffode import EpsField, Schedule, decode, encode, oracles, sample, sigma_grid, study
from diffode.solvers import BDIA
from diffode.testing import RandomEpsNet

COMMAND = ".venv/bin/python benchmarks/reconstruction.py"
STEPS = (10, 20, 50, 100, 200, 500, 1000)
# DDIM paper, Table 2 (CIFAR-10 test set, per-dimension squared error), as cited in docs/math.md §12
PAPER = (0.014, 0.0065, 0.0023, 0.0009, 0.0004, 0.0001, 0.0001)
MODES = {"reverse": ("euler", "reverse"), "exact": ("euler", "exact"), "bdia": ("bdia", "exact")}
DOC = Path(__file__).resolve().parents[1] / "docs" / "encoding.md"
FIGURE = DOC.parent / "digits_reconstruction.png"
DIGITS_STEPS = (10, 20, 50, 100)
DIGITS_MODES = {
    "reverse Euler (DDIM inversion)": ("euler", "reverse"),
    "reverse Heun": ("heun", "reverse"),
    "exact Euler": ("euler", "exact"),
    "exact Heun": ("heun", "exact"),
    "BDIA": ("bdia", "exact"),
}


def digits_cell(x0: Tensor, steps: int, solver: str, method: str) -> tuple[str, Tensor | None]:
    """One cell of the digits table: "MSE (evaluations per image and step)", or where exact
    inversion did not converge, the step and residual it stopped at; and the reconstruction."""
    from diffode.pretrained import digits
    from diffode.solvers.reversible import InversionError

    model, schedule = digits(dtype=x0.dtype)
    try:
        info = encode(model, schedule, x0, steps=steps, solver=solver, method=method, return_info=True)
    except InversionError as err:
        return f"no conv. (σ {err.sigma:.2g}→{err.sigma_next:.2g}, {err.residual:.0e})", None
    back = decode(model, schedule, info)
    mse = float((back.double() - x0.double()).square().mean())
    return f"{mse:.1e} ({info.evaluations_per_step:.2f})", back


def digits_table(batch: int) -> str:
    """Table 2 on the bundled digits network, held-out test split; writes the figure too."""
    from diffode.data import digits as digits_data

    x0 = digits_data("test")[0][:batch]
    lines = [
        "| data | dtype | mode | " + " | ".join(f"S = {s}" for s in DIGITS_STEPS) + " |",
        "|" + "---|" * (3 + len(DIGITS_STEPS)),
        "| CIFAR-10 (DDIM paper, Table 2; not digits) | float32 | reverse Euler | "
        + " | ".join(f"{v:g}" for v in PAPER[: len(DIGITS_STEPS)])
        + " |",
    ]
    shown: dict[str, Tensor] = {}
    for dtype in (torch.float32, torch.float64):
        for label, (solver, method) in DIGITS_MODES.items():
            cells = []
            for steps in DIGITS_STEPS:
                cell, back = digits_cell(x0.to(dtype), steps, solver, method)
                cells.append(cell)
                if back is not None and steps == 10 and dtype == torch.float32:
                    shown[label] = back
            name = str(dtype).removeprefix("torch.")
            lines.append(f"| digits test split | {name} | {label} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    write_figure(x0, shown)
    return "\n".join(lines)


def write_figure(x0: Tensor, shown: dict[str, Tensor], n: int = 12) -> None:
    """Originals, reverse-DDIM and exact (BDIA) reconstructions at S = 10, float32."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        ("original", x0),
        *((k, shown[k]) for k in ("reverse Euler (DDIM inversion)", "BDIA") if k in shown),
    ]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.8, len(rows) * 0.95))
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c, 0].detach().double().cpu().numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel("exact (BDIA)" if label == "BDIA" else label.split(" (")[0], fontsize=7)
    fig.suptitle("held-out digits, S = 10, float32", fontsize=9)
    fig.savefig(FIGURE, dpi=100, bbox_inches="tight")
    plt.close(fig)


def reconstruction_error(
    model: Callable[[Tensor, Tensor], Tensor], x0: Tensor, steps: int, mode: str
) -> tuple[str, int]:
    """(mean per-dimension squared error as text, encoding evaluations per sample)."""
    solver, method = MODES[mode]
    schedule = Schedule.linear()
    try:
        info = encode(model, schedule, x0, steps=steps, solver=solver, method=method, return_info=True)
    except ValueError:
        return "no conv.", 0
    back = decode(model, schedule, info.latents, steps=steps, solver=solver, companion=info.companion)
    mse = float((back.double() - x0.double()).square().mean())
    return f"{mse:.1e}", info.nfe


def reconstruction_table(batch: int) -> str:
    schedule = Schedule.linear()
    g = torch.Generator().manual_seed(0)
    mixture = oracles.GaussianMixture.ring()
    problems = {
        "ring mixture": (mixture.model(schedule), mixture.sample(batch, g)),
        "random network": (
            RandomEpsNet((16,), lipschitz=0.5, seed=0),
            torch.randn(batch, 16, generator=g, dtype=torch.float64),
        ),
    }
    header = "| data | dtype | mode | " + " | ".join(f"S = {s}" for s in STEPS) + " |"
    lines = [header, "|" + "---|" * (3 + len(STEPS))]
    lines.append(
        "| CIFAR-10 (DDIM paper, Table 2) | float32 | reverse | " + " | ".join(f"{v:g}" for v in PAPER) + " |"
    )
    for name, (model, x0) in problems.items():
        for dtype in (torch.float32, torch.float64):
            for mode in MODES:
                cells = []
                for steps in STEPS:
                    err, nfe = reconstruction_error(model, x0.to(dtype), steps, mode)
                    cells.append(f"{err} ({nfe})" if nfe else err)
                lines.append(
                    f"| {name} | {str(dtype).removeprefix('torch.')} | {mode} | " + " | ".join(cells) + " |"
                )
                print(lines[-1], flush=True)
    return "\n".join(lines)


def sample_quality_table(batch: int) -> str:
    """BDIA against DDIM at equal evaluations on the ring mixture (float64)."""
    schedule = Schedule.linear()
    mixture = oracles.GaussianMixture.ring()
    model = mixture.model(schedule)
    field = EpsField(model, schedule)
    noise = torch.randn(batch, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    data = mixture.sample(100_000, torch.Generator().manual_seed(2))
    data_logp = float(mixture.log_prob(data).mean())

    def quality(x: Tensor, ref: Tensor) -> str:
        rms = float((x - ref).square().mean().sqrt())
        dlogp = float(mixture.log_prob(x).mean()) - data_logp
        return f"{rms:.2e} | {dlogp:+.3f} | {near_a_mode(mixture, x):.1f}%"

    lines = [
        "| grid | S (NFE) | solver | RMS vs reference | Δ mean log p | within 3σ of a mode |",
        "|---|---|---|---|---|---|",
    ]
    for spacing in ("uniform", "karras"):
        for steps in (10, 20, 50, 100, 200):
            grid = sigma_grid(schedule, steps, spacing)
            start = noise * math.hypot(1, float(grid[0]))
            ref = study.reference_solution(field, start, grid)
            for label, solver in [
                ("DDIM", "euler"),
                ("BDIA", BDIA()),
                ("BDIA σ_data=0", BDIA(sigma_data=0.0)),
            ]:
                x = sample(model, schedule, noise, steps=steps, timesteps=spacing, solver=solver)
                lines.append(f"| {spacing} | {steps} | {label} | {quality(x, ref)} |")
                print(lines[-1], flush=True)
    lines.append(
        f"| data itself | | | | 0 (mean log p = {data_logp:.3f}) | {near_a_mode(mixture, data):.1f}% |"
    )
    return "\n".join(lines)


def coordinates_table(batch: int) -> str:
    """BDIA's σ_data: float32 round trip and latent variance on the ring mixture."""
    schedule = Schedule.linear()
    mixture = oracles.GaussianMixture.ring()
    model = mixture.model(schedule)
    x0 = mixture.sample(batch, torch.Generator().manual_seed(4))
    steps = (10, 100, 1000)
    lines = [
        "| σ_data | "
        + " | ".join(f"max error, S = {s}" for s in steps)
        + " | "
        + " | ".join(f"latent variance, S = {s}" for s in steps)
        + " |",
        "|---|" + "---|" * (2 * len(steps)),
    ]
    for sigma_data in (0.0, 0.5, 1.0, 1e6):
        errors, variances = [], []
        for n in steps:
            solver = BDIA(sigma_data=sigma_data)
            info = encode(
                model, schedule, x0.float(), steps=n, solver=solver, method="exact", return_info=True
            )
            back = decode(model, schedule, info.latents, steps=n, solver=solver, companion=info.companion)
            errors.append(f"{float((back.double() - x0).abs().max()):.1e}")
            variances.append(f"{float(info.latents.double().var()):.2f}")
        lines.append(f"| {sigma_data:g} | " + " | ".join(errors + variances) + " |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def near_a_mode(mixture: oracles.GaussianMixture, x: Tensor) -> float:
    """Percentage of the points within 3 component standard deviations of a component mean."""
    near = torch.cdist(x, mixture.means).min(dim=1).values <= 3 * mixture.stds[0]
    return 100 * float(near.double().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=256, help="samples per problem (default 256)")
    parser.add_argument("--no-write", action="store_true", help="print the tables without updating docs/")
    parser.add_argument("--digits", action="store_true", help="the bundled digits network's table only")
    parser.add_argument("--digits-batch", type=int, default=64, help="held-out images (default 64)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    began = time.perf_counter()
    if args.digits:
        table = digits_table(args.digits_batch)
        seconds = time.perf_counter() - began
        text = (
            f"Written by `{COMMAND} --digits` ({args.digits_batch} held-out images; {seconds:.0f} s on one "
            "CPU thread). Mean per-dimension squared error of decode(encode(x)) on the bundled digits "
            "network, images in [-1, 1]; in brackets, encoding evaluations per image and step. The first "
            "row is the DDIM paper's CIFAR-10 figure for its reverse-DDIM encoding (different data and "
            "network; as cited in the reference, §12).\n\n"
            f"{table}\n\n![held-out digits: originals, reverse-DDIM and exact (BDIA) reconstructions at "
            "S = 10](digits_reconstruction.png)"
        )
        if not args.no_write:
            write_block(DOC, "digits-reconstruction", text)
        print(f"\n{seconds:.0f} s; reproduce with: {COMMAND} --digits", file=sys.stderr)
        return
    recon = reconstruction_table(args.batch)
    quality = sample_quality_table(4 * args.batch)
    coordinates = coordinates_table(args.batch)
    seconds = time.perf_counter() - began
    text = (
        f"Written by `{COMMAND}` (batch {args.batch}; {seconds:.0f} s on one CPU thread).\n\n"
        "Mean per-dimension squared error of decode(encode(x)); in brackets, encoding evaluations "
        "per sample.\n\n"
        f"{recon}\n\n"
        f"Sampling the ring mixture from the same {4 * args.batch} noise draws (float64), at equal "
        "evaluations (DDIM and BDIA both evaluate once per step).\n\n"
        f"{quality}\n\n"
        "BDIA's coordinates: float32 round trip (max |decode(encode(x)) - x|, with the companion) "
        "and the variance of the latents (1 for the exact flow), ring mixture, "
        f"{args.batch} samples; σ_data = 1e6 stands for the x̄ coordinates (σ_data → ∞).\n\n"
        f"{coordinates}"
    )
    if not args.no_write:
        write_block(DOC, "reconstruction", text)
    print(f"\n{seconds:.0f} s; reproduce with: {COMMAND}", file=sys.stderr)


if __name__ == "__main__":
    main()
