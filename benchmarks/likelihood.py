"""Bits per dimension of the bundled digits model on the held-out test split, against a baseline.

The model: ``diffode.pretrained.digits()`` (a UNet ε-network, DDPM linear schedule, T = 1000).
The data: the 297 test digits of :func:`diffode.data.digits` (never seen in training), 17 grey
levels in [-1, 1]. Each image is dequantised uniformly within its bin (Δ = 1/8) with the noise of
``torch.Generator().manual_seed(i)`` for image i, and its log-density is integrated through the
probability-flow ODE (:func:`diffode.likelihood`, per-sample dopri5 at rtol = atol = 1e-5, the
exact divergence: 64 vector-Jacobian products per evaluation). The reported bpd is the
variational upper bound on the discrete data's -log₂ P(x)/D; a Hutchinson run (one Rademacher
probe per image, about 30 times cheaper: 59 s for the 297 images against 409 s for 64 with the
exact divergence) over the whole split is reported alongside, and the two are compared on the
same images.

The baseline: independent per-pixel categorical distributions over the 17 levels, fitted on the
1500 training digits with add-one (Laplace) smoothing — without smoothing a level never seen at a
pixel in training gets probability 0 and some test digits an infinite bpd. Its bpd is exact.

Both numbers are means over the test images with their standard errors (std/√n); the images
are the same, so the difference is a paired one and its standard error is reported too.
Writes the table into docs/likelihood.md between the benchmark's markers and prints it.

Run from the repository root (the exact divergence on all 297 images takes about half an hour on
one CPU thread; ``--exact-n 64`` about 7 minutes):

    .venv/bin/python benchmarks/likelihood.py [--exact-n 64]
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

from diffode import data, pretrained
from diffode.likelihood import DEFAULT_TOL, mean_and_stderr
from diffode.runs import LoadedModel, likelihood_images

LEVELS = 17
DOC = Path(__file__).resolve().parent.parent / "docs" / "likelihood.md"


def level_index(images: Tensor) -> Tensor:
    """The level 0 … 16 of every pixel of digits in [-1, 1] (int64, same shape)."""
    return ((images.double() + 1) * (LEVELS - 1) / 2).round().long()


def categorical_bpd(train: Tensor, test: Tensor, smoothing: float = 1.0) -> Tensor:
    """Per-image bits per dimension of ``test`` under independent per-pixel categoricals fitted
    on ``train`` (both ``(n, 1, 8, 8)`` in [-1, 1]) with add-``smoothing`` counts; float64 ``(n,)``."""
    fit, held = level_index(train).flatten(1), level_index(test).flatten(1)
    counts = torch.zeros(fit.shape[1], LEVELS, dtype=torch.float64)
    counts.scatter_add_(1, fit.T, torch.ones_like(fit.T, dtype=torch.float64))
    probs = (counts + smoothing) / (counts.sum(1, keepdim=True) + smoothing * LEVELS)
    log2p = probs.log2().gather(1, held.T).T  # (n, D)
    return -log2p.mean(1)


def _row(label: str, bpd: Tensor, baseline: Tensor, per_solve: str, wall: str) -> str:
    """A table row: mean bpd ± standard error, and the paired difference to the baseline."""
    mean, se = mean_and_stderr(bpd)
    d_mean, d_se = mean_and_stderr(bpd - baseline)
    cells = [label, str(len(bpd)), f"{mean:.3f} ± {se:.3f}", f"{d_mean:+.3f} ± {d_se:.3f}", per_solve, wall]
    return "| " + " | ".join(cells) + " |"


def _ode(loaded: LoadedModel, images: Tensor, divergence: str, batch: int) -> tuple[Tensor, str, str]:
    """(bpd, evaluations per solve, wall time) of the ODE bound on ``images``."""
    start = time.perf_counter()
    bpd, nfe = likelihood_images(
        loaded, images, levels=LEVELS, batch=batch, divergence=divergence, progress=True
    )
    solves = math.ceil(len(images) / batch)
    return bpd, f"{nfe / solves:.0f} (batches of {batch})", f"{time.perf_counter() - start:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exact-n", type=int, default=297, help="test images for the exact divergence")
    parser.add_argument("--batch", type=int, default=64, help="images per solve (default: 64)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/likelihood.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    model, schedule = pretrained.digits()
    loaded = LoadedModel(model, schedule, "epsilon", (1, 8, 8), "bundled digits model")
    train, test = data.digits("train")[0], data.digits("test")[0]
    baseline = categorical_bpd(train, test)
    first = test[: args.exact_n]
    rows = []
    hutchinson, per_solve, wall = _ode(loaded, test, "hutchinson", args.batch)
    rows.append(
        _row("diffusion ODE, Hutchinson (1 Rademacher probe), bound", hutchinson, baseline, per_solve, wall)
    )
    print(rows[-1], flush=True)
    exact, per_solve, wall = _ode(loaded, first, "exact", args.batch)
    n = len(first)
    rows.append(_row("diffusion ODE, exact divergence, bound", exact, baseline[:n], per_solve, wall))
    print(rows[-1], flush=True)
    rows.append(_row("per-pixel categorical (train split, add-one), exact", baseline, baseline, "–", "–"))
    if n < len(test):
        rows.append(
            _row("per-pixel categorical, same images as the exact row", baseline[:n], baseline[:n], "–", "–")
        )
    uniform = torch.full_like(baseline, math.log2(LEVELS))
    rows.append(_row("uniform over the 17 levels, exact", uniform, baseline, "–", "–"))
    gap_mean, gap_se = mean_and_stderr(hutchinson[:n] - exact)
    table = "\n".join(
        [
            f"Held-out test split ({len(test)} digits), 17 levels, D = 64; dopri5 per sample at "
            f"rtol = atol = {DEFAULT_TOL:g}; torch {torch.__version__}, 1 CPU thread. Mean ± standard "
            "error over the images; the difference to the baseline is paired (same images).",
            "",
            "| model | images | bits/dim | minus baseline | evaluations per solve | wall |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"Hutchinson minus exact on the same {n} images, paired: {gap_mean:+.4f} ± {gap_se:.4f} bits/dim "
            "(same dequantisation; the estimator is unbiased, so this should be within about 2 standard "
            "errors of 0).",
        ]
    )
    print(table)
    if not args.no_write:
        write_block(DOC, "likelihood", table)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
