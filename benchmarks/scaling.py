"""Images per second of ``diffode sample --outdir`` with 1 process and with 2 ranks under torchrun.

Samples the bundled digits model (DDIM, i.e. Euler, on the uniform grid) into a fresh shard folder
with one process (``python -m diffode sample``) and with ``torchrun --standalone
--nproc_per_node=2 -m diffode sample``, every rank on one CPU thread (``OMP_NUM_THREADS=1``,
``--threads 1``) so that ranks do not fight over cores. The two are run alternately, ``--repeats``
times each (this machine is shared, so side-by-side runs are what compares fairly), and the table
gives the median and range of

- the sampling rate each run reports: samples over the seconds of its shard loop (model loading
  and the start of the processes excluded);
- the end-to-end rate: samples over the wall time of the whole command, start-up included.

Writes the table into docs/scaling.md between the benchmark's markers and prints it.

Run from the repository root:

    .venv/bin/python benchmarks/scaling.py
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from docs_block import write_block

COMMAND = ".venv/bin/python benchmarks/scaling.py"
DOC = Path(__file__).resolve().parents[1] / "docs" / "scaling.md"
RATE = re.compile(r"\(([0-9.]+) images/s\)")


def run_once(ranks: int, outdir: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(reported sampling rate, end-to-end rate) of one run into the empty folder ``outdir``."""
    launcher = [sys.executable, "-m", "diffode"]
    if ranks > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher += [f"--nproc_per_node={ranks}", "-m", "diffode"]
    command = [
        *launcher,
        "sample",
        "--seeds",
        f"0-{args.seeds - 1}",
        "--steps",
        str(args.steps),
        "--shard-size",
        str(args.shard_size),
        "--batch",
        str(args.batch),
        "--threads",
        "1",
        "--no-progress",
        "--outdir",
        str(outdir),
    ]
    start = time.perf_counter()
    result = subprocess.run(
        command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    match = RATE.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1)), args.seeds / wall


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1024, help="seeds per run (default: 1024)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (default: 20)")
    parser.add_argument("--shard-size", type=int, default=128, help="seeds per shard (default: 128)")
    parser.add_argument("--batch", type=int, default=128, help="samples per solve (default: 128)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (default: 3)")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/scaling.md alone")
    args = parser.parse_args()

    rates: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for ranks in rates:
                rates[ranks].append(run_once(ranks, Path(tmp) / f"r{ranks}-{repeat}", args))
                print(f"repeat {repeat}, {ranks} rank(s): {rates[ranks][-1][0]:.0f} images/s", flush=True)
    load_after = os.getloadavg()[0]

    one = statistics.median(r for r, _ in rates[1])
    rows = [
        "| processes | sampling rate, images/s | end to end, images/s | speed-up (sampling) |",
        "| --- | --- | --- | --- |",
    ]
    for ranks, runs in rates.items():
        sampling, total = [r for r, _ in runs], [t for _, t in runs]
        label = "1 (`diffode sample`)" if ranks == 1 else f"{ranks} (`torchrun --nproc_per_node={ranks}`)"
        rows.append(
            f"| {label} | {summary(sampling)} | {summary(total)} | {statistics.median(sampling) / one:.2f}× |"
        )
    text = "\n".join(
        [
            f"Bundled digits model, Euler (DDIM) with {args.steps} uniform steps, {args.seeds} seeds in "
            f"shards of {args.shard_size}, batch {args.batch}, float32, one CPU thread per rank; median "
            f"(min–max) of {args.repeats} alternating runs each, on {os.cpu_count()} CPU cores shared "
            f"with other work (1-minute load average {load_before:.1f} before, {load_after:.1f} after); "
            f"torch {torch.__version__}. Produced by `{COMMAND}`.",
            "",
            *rows,
        ]
    )
    print(text)
    if not args.no_doc:
        write_block(DOC, "scaling", text)
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
