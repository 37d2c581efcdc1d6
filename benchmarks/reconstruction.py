"""Reconstruction error of decode(encode(x)) against the number of steps, for each encoding mode.

The analogue of the DDIM paper's Table 2 (reference §12): the mean per-dimension squared error
of decode(encode(x)) for S = 10, 20, 50, 100, 200, 500, 1000 steps of DDIM's uniform grid on the
DDPM linear schedule (T = 1000), float32 and float64, for

- ``reverse``: reverse integration with Euler, i.e. DDIM inversion, decoded with DDIM;
- ``exact``: exact inversion of DDIM (fixed-point iteration to the default tolerance);
- ``bdia``: the algebraically reversible BDIA sampler (the published one, differences in x-space),
  decoded with its companion state;

on data of the 8-component ring mixture through its exact ε model, and on N(0, I) data through
a small random ε-network (diffode.testing.RandomEpsNet, 16 dimensions, Lipschitz 0.5). Each cell
also gives the encoding's evaluations per sample and step. A second table compares BDIA's samples with
DDIM's at equal evaluations on the mixture: RMS distance to a tight float64 reference solution
of the same ODE, and how well the samples match the data (mean log-density under the data
distribution, relative to the data's own; fraction within 3 standard deviations of a mode).
Writes both tables into docs/encoding.md between the benchmark's markers and prints them.

``--digits`` runs the real-network tables instead: the bundled digits UNet on the held-out test
split (the first ``--digits-batch`` images) and on as many of its own samples, per-dimension MSE,
max abs error and encoding evaluations per image and step for reverse Euler (DDIM inversion),
reverse Heun, exact Euler and exact Heun (on their default logsnr grid and on DDIM's uniform
grid) and BDIA at S = 10, 20, 50, 100 in float32 and float64, beside the DDIM paper's CIFAR-10
Table 2, and the other single-step solvers' exact round trips at S = 10, 50, 100; it writes them
between the ``digits-reconstruction`` markers and the figure docs/digits_reconstruction.png
(originals, reverse-DDIM and exact-Euler reconstructions at S = 10).

Run from the repository root:

    .venv/bin/python benchmarks/reconstruction.py
    .venv/bin/python benchmarks/reconstruction.py --digits
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from docs_block import save_figure, write_block
from torch import Tensor

from diffode import EpsField, Schedule, decode, encode, oracles, sample, sigma_grid, solve, study
from diffode.solvers import BDIA, Heun, InverseOf, Solver, get_solver
from diffode.testing import RandomEpsNet

COMMAND = ".venv/bin/python benchmarks/reconstruction.py"
STEPS = (10, 20, 50, 100, 200, 500, 1000)
# DDIM paper, Table 2 (CIFAR-10 test set, per-dimension squared error), as cited in docs/math.md §12
PAPER = (0.014, 0.0065, 0.0023, 0.0009, 0.0004, 0.0001, 0.0001)
MODES = {"reverse": ("euler", "reverse"), "exact": ("euler", "exact"), "bdia": ("bdia", "exact")}
DOC = Path(__file__).resolve().parents[1] / "docs" / "encoding.md"
FIGURE = DOC.parent / "digits_reconstruction.png"
DIGITS_STEPS = (10, 20, 50, 100)
# Heun refuses DDIM's uniform grid below 34 steps (its last step σ(T/S) -> σ(0) is beyond
# Heun's linear stability, or magnifies the network's errors beyond RungeKutta's limit); the
# table measures it there all the same
UNCHECKED_HEUN = Heun(check_stability=False)
# label: (solver, method, timesteps); None is encode's default grid for that method and solver
DIGITS_MODES: dict[str, tuple[str | Solver, str, str | None]] = {
    "reverse Euler (DDIM inversion)": ("euler", "reverse", None),
    "reverse Heun": (UNCHECKED_HEUN, "reverse", None),
    "exact Euler": ("euler", "exact", None),
    "exact Euler, uniform grid": ("euler", "exact", "uniform"),
    "exact Heun": ("heun", "exact", None),
    "exact Heun, uniform grid": (UNCHECKED_HEUN, "exact", "uniform"),
    "BDIA": ("bdia", "exact", None),
}
# the other single-step solvers that method="exact" accepts (ddim and dpmpp-1 are Euler's step)
DIGITS_OTHERS = ("midpoint", "dpmpp-2s", "heun3", "ralston3", "rk4")
OTHER_STEPS = (10, 50, 100)


def digits_cell(
    x0: Tensor, steps: int, solver: str | Solver, method: str, timesteps: str | None
) -> tuple[str, Tensor | None]:
    """One cell of the digits tables: "MSE / max abs error (evaluations per image and step)", or
    where exact inversion did not converge, the step and residual it stopped at; and the
    reconstruction."""
    from diffode.pretrained import digits
    from diffode.solvers.reversible import InversionError

    model, schedule = digits(dtype=x0.dtype)
    try:
        info = encode(
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
        return f"no conv. (σ {err.sigma:.2g}→{err.sigma_next:.2g}, {err.residual:.0e})", None
    back = decode(model, schedule, info)
    diff = back.double() - x0.double()
    mse, worst = float(diff.square().mean()), float(diff.abs().max())
    return f"{mse:.1e} / {worst:.1e} ({info.evaluations_per_step:.2f})", back


def digits_data(batch: int) -> dict[str, Tensor]:
    """The held-out test split's first ``batch`` images and as many of the model's own samples
    (Euler, 50 uniform steps, seed 0, clipped to [-1, 1] as an image file would be)."""
    from diffode.data import digits as load_digits
    from diffode.pretrained import digits

    model, schedule = digits()
    noise = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return {
        "digits test split": load_digits("test")[0][:batch],
        "own samples": sample(model, schedule, noise).clamp(-1, 1),
    }


def digits_table(batch: int, figure: bool) -> tuple[str, str]:
    """Table 2 on the bundled digits network (held-out test split and the model's own samples),
    and the other single-step solvers' round trips; writes the figure too."""
    lines = [
        "| data | dtype | mode | " + " | ".join(f"S = {s}" for s in DIGITS_STEPS) + " |",
        "|" + "---|" * (3 + len(DIGITS_STEPS)),
        "| CIFAR-10 (DDIM paper, Table 2; not digits) | float32 | reverse Euler | "
        + " | ".join(f"{v:g}" for v in PAPER[: len(DIGITS_STEPS)])
        + " |",
    ]
    others = [
        "| data | dtype | solver | " + " | ".join(f"S = {s}" for s in OTHER_STEPS) + " |",
        "|" + "---|" * (3 + len(OTHER_STEPS)),
    ]
    shown: dict[str, Tensor] = {}
    data = digits_data(batch)
    for source, x0 in data.items():
        for dtype in (torch.float32, torch.float64):
            name = str(dtype).removeprefix("torch.")
            for label, (solver, method, timesteps) in DIGITS_MODES.items():
                cells = []
                for steps in DIGITS_STEPS:
                    cell, back = digits_cell(x0.to(dtype), steps, solver, method, timesteps)
                    cells.append(cell)
                    if (
                        back is not None
                        and steps == 10
                        and dtype == torch.float32
                        and source == "digits test split"
                    ):
                        shown[label] = back
                lines.append(f"| {source} | {name} | {label} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
            for solver in DIGITS_OTHERS:
                cells = [digits_cell(x0.to(dtype), steps, solver, "exact", None)[0] for steps in OTHER_STEPS]
                others.append(f"| {source} | {name} | {solver} | " + " | ".join(cells) + " |")
                print(others[-1], flush=True)
    if figure:
        write_figure(data["digits test split"], shown)
    return "\n".join(lines), "\n".join(others)


JACOBIAN_SIGMAS = (0.0129, 0.02, 0.034, 0.05, 0.079, 0.12, 0.18, 0.34, 0.6, 1.0, 2.0)


def jacobian_table(batch: int) -> str:
    """The spectrum of the digits denoiser's Jacobian ∂x̂₀/∂x̄ at held-out digits noised to σ
    (float64, one dense 64 × 64 Jacobian per image): its most negative eigenvalue (real part)
    over the images and the median over images of each image's most negative one."""
    from diffode.data import digits as load_digits
    from diffode.pretrained import digits

    model, schedule = digits(dtype=torch.float64)
    field = EpsField(model, schedule)
    x0 = load_digits("test")[0][:batch].double()
    noise = torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows = []
    for sigma in JACOBIAN_SIGMAS:
        lows = []
        for image in x0 + sigma * noise:

            def denoise(v: Tensor, sigma: float = sigma) -> Tensor:
                return field.denoised(sigma, v.reshape(1, *x0.shape[1:])).reshape(-1)

            jac = torch.autograd.functional.jacobian(denoise, image.reshape(-1))
            lows.append(float(torch.linalg.eigvals(jac).real.min()))
        low = torch.tensor(lows)
        rows.append(
            {
                "σ": f"{sigma:g}",
                "most negative eigenvalue": f"{low.min():.3f}",
                "median per image": f"{low.median():.3f}",
            }
        )
        print(rows[-1], flush=True)
    return study.to_markdown(rows)


STOPPING_RULES = (
    ("2 units", 2.0, False),
    ("the floor", 0.25, False),
    ("2 units + leap", 2.0, True),
    ("8 units + leap (default)", 8.0, True),
)
"""The stopping rules the diagnostics compare: (name, tolerance in units of round-off, whether a
sample that reaches it takes the unevaluated Anderson step, ``fixed_point.LEAP``). The floor is
the rule before the leap: a tolerance below what the state resolves, so the iteration runs until
its residual stops improving."""


@contextlib.contextmanager
def stopping_at(ulps: float, leap: bool) -> Iterator[None]:
    """Exact inversion's default tolerance set to ``ulps`` units of round-off, and its leap on or
    off, for the block (the acceptance rules unchanged)."""
    from diffode import fixed_point

    default = fixed_point.ROUND_OFF_ULPS, fixed_point.LEAP
    fixed_point.ROUND_OFF_ULPS, fixed_point.LEAP = ulps, leap
    try:
        yield
    finally:
        fixed_point.ROUND_OFF_ULPS, fixed_point.LEAP = default


def divergence_table(batch: int, steps: int = 100) -> str:
    """Exact Euler in float32 on the model's own samples under each of :data:`STOPPING_RULES`:
    for the sample with the worst round trip stopping at 2 units, the distance between the
    decoded and the encoded trajectory at every tenth grid point, and the largest per-step
    residual and their sum."""
    from diffode.pretrained import digits

    model, schedule = digits()
    x0 = digits_data(batch)["own samples"]
    grid = sigma_grid(schedule, steps, "logsnr", direction="encode")
    field = EpsField(model, schedule)
    columns, notes, worst = {}, [], -1
    for name, ulps, leap in STOPPING_RULES:
        inverted: list = []
        up: list[Tensor] = []
        inverse = InverseOf(get_solver("euler"), observer=inverted.append)
        with stopping_at(ulps, leap):
            latents = solve(field, x0, grid, inverse, callback=lambda i, store=up: store.append(i.x)).x
        down: list[Tensor] = []
        back = solve(
            field,
            latents,
            grid.flip(0),
            get_solver("euler"),
            callback=lambda i, store=down: store.append(i.x),
        ).x
        if worst < 0:
            worst = int((back - x0).flatten(1).abs().amax(1).argmax())
        gaps = []
        for j in range(0, steps, 10):
            level = steps - 1 - j  # down[j] is at grid[level], which up[level - 1] reached
            encoded = up[level - 1] if level >= 1 else x0
            gaps.append(f"{float((down[j][worst] - encoded[worst]).abs().max()):.2e}")
        gaps.append(f"{float((back - x0)[worst].abs().max()):.2e}")
        columns[f"gap, {name}"] = gaps
        largest = max(float(step.residual[worst]) for step in inverted)
        total = sum(float(step.residual[worst]) for step in inverted)
        notes.append(f"{largest:.1e} and {total:.1e} with {name}")
    sigmas = [f"{float(grid[steps - 1 - j]):.3g}" for j in range(0, steps, 10)] + ["0"]
    rows = [
        {"σ": sigma, **{name: gaps[i] for name, gaps in columns.items()}} for i, sigma in enumerate(sigmas)
    ]
    return (
        f"Own sample {worst} of {batch} (the worst round trip stopping at 2 units), exact Euler, {steps} "
        f"logsnr steps, float32. Its largest per-step residual and their sum (Encoding.residual, the "
        f"residuals of the last evaluated iterates), in x-space: {'; '.join(notes)}. Gap: max abs "
        "distance in x̄ between the decoded and the encoded trajectory.\n\n" + study.to_markdown(rows)
    )


def tolerance_table(batch: int) -> str:
    """Exact Euler in float32 under each of :data:`STOPPING_RULES` (the acceptance rules
    unchanged): max abs round-trip error and evaluations per image and step, on the model's own
    samples and the held-out digits at 50 and 100 steps."""
    from diffode.pretrained import digits

    model, schedule = digits()
    data = digits_data(batch)
    cases = [(source, steps) for steps in (50, 100) for source in ("own samples", "digits test split")]
    rows = []
    for name, ulps, leap in STOPPING_RULES:
        row: dict[str, object] = {"stopping rule": name}
        for source, steps in cases:
            x0 = data[source]
            with stopping_at(ulps, leap):
                info = encode(model, schedule, x0, steps=steps, method="exact", return_info=True)
            error = float((decode(model, schedule, info) - x0).abs().max())
            row[f"{source}, S = {steps}"] = f"{error:.1e} ({info.evaluations_per_step:.2f})"
        rows.append(row)
    return study.to_markdown(rows)


FLOOR_SOLVERS = ("euler", "heun", "midpoint", "rk4", "bdia")


def floor_rows(batch: int, cell: Callable[[Tensor, str, int], str], solvers: tuple[str, ...]) -> str:
    """A table of ``cell(x0, solver, steps)`` for the held-out digits and the own samples, each of
    ``solvers``, at 10, 50 and 100 steps."""
    rows = []
    for source, x0 in digits_data(batch).items():
        for solver in solvers:
            row: dict[str, object] = {"images": source, "solver": solver}
            row.update({f"S = {steps}": cell(x0, solver, steps) for steps in (10, 50, 100)})
            rows.append(row)
    return study.to_markdown(rows)


def decode_floor_table(batch: int) -> str:
    """The round-off of float32 decoding: each solver's float64 exact encoding (round trip
    ≤ 1.2e-13) decoded in float32, max abs error against the images; in brackets the same
    latents rounded to float32 and decoded in float64 (what the float32 latent alone costs)."""
    from diffode.pretrained import digits

    model, schedule = digits()
    model64, _ = digits(dtype=torch.float64)

    def cell(x0: Tensor, solver: str, steps: int) -> str:
        info = encode(
            model64, schedule, x0.double(), steps=steps, solver=solver, method="exact", return_info=True
        )
        companion = None if info.companion is None else info.companion.float()
        in32 = dataclasses.replace(info, latents=info.latents.float(), companion=companion)
        rounded = dataclasses.replace(
            in32,
            latents=in32.latents.double(),
            companion=None if companion is None else companion.double(),
        )
        arithmetic = float((decode(model, schedule, in32) - x0).abs().max())
        lattice = float((decode(model64, schedule, rounded) - x0.double()).abs().max())
        return f"{arithmetic:.1e} ({lattice:.1e})"

    return floor_rows(batch, cell, FLOOR_SOLVERS)


def sensitivity_table(batch: int) -> str:
    """How far float32 decoding moves when its start moves by one unit of round-off: each exact
    solver's float32 encoding (Euler, BDIA and :data:`DIGITS_OTHERS`) decoded as it is and with
    every latent multiplied by 1 ± eps (random signs, seed 0: a relative change of one unit, 1-2
    ulps), max abs change of the decoded images; in brackets the round trip itself. A step
    inverted to a residual of one unit adds a perturbation of this size."""
    from diffode.pretrained import digits

    model, schedule = digits()
    eps = torch.finfo(torch.float32).eps

    def cell(x0: Tensor, solver: str, steps: int) -> str:
        info = encode(model, schedule, x0, steps=steps, solver=solver, method="exact", return_info=True)
        signs = torch.randint(0, 2, info.latents.shape, generator=torch.Generator().manual_seed(0))
        nudged = dataclasses.replace(info, latents=info.latents * (1 + eps * (2 * signs - 1)))
        back = decode(model, schedule, info)
        change = float((decode(model, schedule, nudged) - back).abs().max())
        return f"{change:.1e} ({float((back - x0).abs().max()):.1e})"

    return floor_rows(batch, cell, ("euler", "heun", *DIGITS_OTHERS, "bdia"))


def write_figure(x0: Tensor, shown: dict[str, Tensor], n: int = 12) -> None:
    """Originals, reverse-DDIM and exact-Euler reconstructions at S = 10, float32."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        ("original", x0),
        *((k, shown[k]) for k in ("reverse Euler (DDIM inversion)", "exact Euler") if k in shown),
    ]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.8, len(rows) * 0.95))
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c, 0].detach().double().cpu().numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label.split(" (")[0], fontsize=7)
    fig.suptitle("held-out digits, S = 10, float32", fontsize=9)
    save_figure(fig, FIGURE, dpi=100, bbox_inches="tight")
    plt.close(fig)


def reconstruction_error(
    model: Callable[[Tensor, Tensor], Tensor], x0: Tensor, steps: int, mode: str
) -> tuple[str, float]:
    """(mean per-dimension squared error as text, encoding evaluations per sample and step)."""
    from diffode.solvers.reversible import InversionError

    solver, method = MODES[mode]
    schedule = Schedule.linear()
    try:
        info = encode(model, schedule, x0, steps=steps, solver=solver, method=method, return_info=True)
    except InversionError:
        return "no conv.", 0.0
    # the Encoding retraces its own grid (exact inversion encodes on logsnr by default)
    back = decode(model, schedule, info)
    mse = float((back.double() - x0.double()).square().mean())
    return f"{mse:.1e}", info.evaluations_per_step


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
                    err, cost = reconstruction_error(model, x0.to(dtype), steps, mode)
                    cells.append(f"{err} ({cost:.2f})" if cost else err)
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
                ("BDIA-EDM (σ_data=0.5)", BDIA(sigma_data=0.5)),
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
    parser.add_argument(
        "--diagnostics",
        action="store_true",
        help="the digits denoiser's Jacobian spectrum and an own sample's decoded trajectory only",
    )
    parser.add_argument(
        "--digits-batch", type=int, default=32, help="held-out images, and own samples (default 32)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    began = time.perf_counter()
    if args.diagnostics:
        text = (
            f"Written by `{COMMAND} --diagnostics` ({args.digits_batch} images; "
            "{seconds:.0f} s on one CPU thread).\n\n"
            "Spectrum of the digits denoiser's Jacobian ∂x̂₀/∂x̄ at held-out digits noised to σ "
            f"(float64):\n\n{jacobian_table(args.digits_batch)}\n\n{divergence_table(args.digits_batch)}"
            "\n\nThe stopping rule of exact Euler in float32: max abs round-trip error (evaluations "
            f"per image and step).\n\n{tolerance_table(args.digits_batch)}\n\nThe round-off of float32 "
            "decoding: the float64 exact latents (and BDIA's companion) decoded in float32, max abs "
            "error against the images; in brackets the same latents rounded to float32 and decoded in "
            "float64, what storing the latents in float32 costs. A float32 encoding solves the float32 "
            "decoding's own equations and may land below the first figure, but nothing guarantees that "
            "it will.\n\n"
            f"{decode_floor_table(args.digits_batch)}\n\nHow much float32 decoding magnifies one unit of "
            "round-off: each float32 exact encoding's latents moved by a relative eps each (random signs), "
            "max abs change of the decoded images; in brackets the round trip.\n\n"
            f"{sensitivity_table(args.digits_batch)}"
        )
        text = text.replace("{seconds:.0f}", f"{time.perf_counter() - began:.0f}")
        if not args.no_write:
            write_block(DOC, "digits-diagnostics", text)
        print(text)
        return
    if args.digits:
        table, others = digits_table(args.digits_batch, figure=not args.no_write)
        seconds = time.perf_counter() - began
        text = (
            f"Written by `{COMMAND} --digits` ({args.digits_batch} held-out images and "
            f"{args.digits_batch} of the model's own samples; {seconds:.0f} s on one CPU thread). "
            "Cells: mean per-dimension "
            "squared error / max abs error of decode(encode(x)) on the bundled digits network, images in "
            "[-1, 1]; in brackets, encoding evaluations per image and step. Each mode on encode's "
            "default grid (DDIM's uniform grid; logsnr for the implicit inverses, "
            "`diffode.encoding.EXACT_TIMESTEPS`) unless the row names one; Heun on DDIM's uniform grid "
            "(reverse Heun, exact Heun on the uniform grid) with `Heun(check_stability=False)`, since "
            "Heun refuses that grid's last step below 34 steps. The first row is the DDIM "
            "paper's CIFAR-10 figure for its "
            "reverse-DDIM encoding (different data and network; as cited in the reference, §12).\n\n"
            f'{table}\n\nThe other single-step solvers that `method="exact"` inverts, on the default grid '
            f"(same cells):\n\n{others}\n\n![held-out digits: originals, reverse-DDIM and exact-Euler "
            "reconstructions at S = 10](digits_reconstruction.png)"
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
        "Mean per-dimension squared error of decode(encode(x)), decoded from the Encoding; in brackets, "
        "encoding evaluations per sample and step.\n\n"
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
