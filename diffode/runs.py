"""Runs: what the ``diffode`` command does, as a library (the CLI only parses arguments).

- :func:`load_model`: a bundled digits model, a diffode checkpoint or a diffusers folder;
- :func:`parse_seeds`, :func:`seed_noise`, :func:`sample_seeds`: seeded sampling in batches,
  under the rule that *a sample depends only on its seed* (and its label), whatever the batch
  (up to the network's round-off);
- :func:`parse_labels`, :func:`check_guidance`: class labels assigned to seeds (or images, or
  frames) in order and cycled, and the guidance weight, checked against the model;
- :func:`decode_in_batches`: deterministic decoding of many latents, a batch at a time;
- :func:`likelihood_images`: bits per dimension of images through the ODE, a batch at a time;
- :func:`check_output`, :func:`write_samples`, :func:`write_arrays`: outputs checked before the
  work and written atomically (:func:`diffode.atomic.atomic_write`);
- :func:`mixture_report`, :func:`plot_mixture`: the statistics and picture of ``diffode demo``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from diffode.atomic import atomic_write, temporary_path
from diffode.field import Model
from diffode.images import scatter_image, to_uint8, write_grid, write_png
from diffode.oracles import GaussianMixture
from diffode.sampling import sample
from diffode.schedule import Schedule
from diffode.solve import StepInfo
from diffode.solvers.base import Solver
from diffode.validation import SEED_LIMIT, require_device

MAX_SEEDS = 1_000_000
"""The most seeds one run samples (``parse_seeds`` refuses more before expanding them)."""

MAX_OUTPUT_BYTES = 4 * 2**30
"""The most float32 bytes one run's samples may hold in memory (4 GiB)."""


# ----------------------------------------------------------------------------- devices and models


def resolve_device(name: str) -> torch.device:
    """The torch device called ``name`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...); ``ValueError``
    when it is not a device, not available here, or holds no data (``meta``)."""
    return require_device("--device", name)


@dataclass
class LoadedModel:
    """A network ready for sampling: ``model(x, t)``, its schedule, what it predicts
    (``"epsilon"``, ...), the shape of one sample (``(C, H, W)`` or ``(d,)``), a name to print,
    and its number of classes (0: unconditional; else labels 0 … num_classes - 1 are passed as
    ``model(x, t, class_labels=labels)``)."""

    model: Model
    schedule: Schedule
    prediction: str
    sample_shape: tuple[int, ...]
    name: str
    num_classes: int = 0


BUNDLED = {"digits": "digits", "digits-cond": "digits_cond"}
"""``--model`` names of the bundled ε-networks and their folders in :mod:`diffode.pretrained`."""


def _is_diffode_checkpoint(folder: Path) -> bool:
    """Whether ``folder/config.json`` is a JSON object with ``"format": "diffode-checkpoint"``."""
    from diffode.checkpoint import CONFIG, FORMAT

    config_file = folder / CONFIG
    if not config_file.is_file():
        return False
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from None
    return isinstance(config, dict) and config.get("format") == FORMAT


def load_model(path: str | os.PathLike[str] | None, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """The bundled digits model (``path=None`` or ``"digits"``), the bundled class-conditional
    one (``"digits-cond"``; these names win over folders of the same name), a diffode
    checkpoint folder, or a diffusers folder written by ``save_pretrained`` (needs
    ``pip install "diffode[diffusers]"``), on ``device`` in ``dtype``, frozen. Raises
    ``ValueError`` for anything else."""
    if path is None or str(path) in BUNDLED:
        from diffode.pretrained import load_unet

        name = "digits" if path is None else str(path)
        unet, schedule = load_unet(BUNDLED[name], device, dtype)
        what = "bundled class-conditional digits model" if unet.num_classes else "bundled digits model"
        return LoadedModel(unet, schedule, "epsilon", unet.sample_shape, what, unet.num_classes)
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"--model {path}: no such folder; pass a diffode checkpoint or diffusers folder")
    if _is_diffode_checkpoint(folder):
        from diffode.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(folder, device=device, dtype=dtype)
        shape = getattr(checkpoint.model, "sample_shape", None)
        if checkpoint.schedule is None or shape is None:
            raise ValueError(f"--model {path} is not an ε-network checkpoint (it has no schedule)")
        return LoadedModel(
            checkpoint.model,
            checkpoint.schedule,
            checkpoint.prediction,
            tuple(shape),
            str(folder),
            int(getattr(checkpoint.model, "num_classes", 0)),
        )
    from diffode.diffusers_interop import load_diffusers, quiet_diffusers

    wrapped = load_diffusers(folder)
    if wrapped.sample_shape is None:
        raise ValueError(f"--model {path}: the network's config gives no in_channels/sample_size")
    with quiet_diffusers():
        wrapped.model.unet.to(device=device, dtype=dtype).eval().requires_grad_(False)
    # a class-conditional diffusers UNet2DModel declares its classes as num_class_embeds
    classes = getattr(getattr(wrapped.model.unet, "config", None), "num_class_embeds", None) or 0
    return LoadedModel(
        wrapped.model, wrapped.schedule, wrapped.prediction, wrapped.sample_shape, str(folder), int(classes)
    )


# ----------------------------------------------------------------------------- seeded sampling


def parse_seeds(text: str, limit: int = MAX_SEEDS) -> list[int]:
    """``"0-63"`` → 0 … 63; ``"3,7,10-12"`` → [3, 7, 10, 11, 12]. Seeds are non-negative ints;
    more than ``limit`` of them is refused before the list is built."""
    return _parse_ranges(text, "--seeds", "seeds", "samples", limit)


def _parse_ranges(text: str, option: str, what: str, verb: str, limit: int) -> list[int]:
    """Non-negative integers and ranges (``"0-9"``, ``"3,7,10-12"``) as a list; ``ValueError``
    naming ``option`` for bad syntax or more than ``limit`` values (``what`` they are, and what one
    run does with them: ``verb``)."""
    bounds: list[tuple[int, int]] = []
    try:
        for part in text.split(","):
            first, sep, last = part.strip().partition("-")
            low, high = int(first), int(last) if sep else int(first)
            if low < 0 or high < low or high >= SEED_LIMIT:
                raise ValueError
            bounds.append((low, high))
    except ValueError:
        raise ValueError(
            f"{option} must be non-negative integers below 2**32 and ranges like 0-63 or 3,7,10-12, "
            f"got {text!r}"
        ) from None
    count = sum(high - low + 1 for low, high in bounds)
    if count > limit:
        raise ValueError(f"{option} names {count} {what}; one run {verb} at most {limit}, split it into runs")
    return [value for low, high in bounds for value in range(low, high + 1)]


def parse_labels(text: str | None, loaded: LoadedModel) -> list[int] | None:
    """``--label``: one class (``"7"``) or a list/range (``"0-9"``, ``"1,3,5"``) of classes of the
    model, to be assigned in order and cycled (:func:`cycle_labels`); ``None`` when not given.
    ``ValueError`` for a label out of 0 … num_classes - 1 or any label for an unconditional model."""
    if text is None:
        return None
    if not loaded.num_classes:
        raise ValueError(
            f"--label {text}: {loaded.name} is unconditional; drop --label or pass a class-conditional "
            "model such as --model digits-cond"
        )
    labels = _parse_ranges(text, "--label", "labels", "takes", MAX_SEEDS)
    bad = [label for label in labels if label >= loaded.num_classes]
    if bad:
        raise ValueError(
            f"--label {text}: class {bad[0]} is out of range; {loaded.name} has classes "
            f"0-{loaded.num_classes - 1}"
        )
    return labels


def check_guidance(guidance: float | None, labels: Sequence[int] | None) -> float | None:
    """``--guidance``: a finite weight w >= 0, which needs ``--label`` (the classes to guide
    towards); ``ValueError`` otherwise."""
    if guidance is None:
        return None
    if not math.isfinite(guidance) or guidance < 0:
        raise ValueError(
            f"--guidance must be a finite weight w >= 0 (0: unconditional, 1: conditional), got {guidance}"
        )
    if labels is None:
        raise ValueError(f"--guidance {guidance} needs --label, the classes to guide towards")
    return guidance


def cycle_labels(labels: Sequence[int] | None, n: int) -> Tensor | None:
    """The labels of ``n`` samples (int64 ``(n,)``): ``labels`` in order, cycled; ``None`` stays."""
    if labels is None:
        return None
    return torch.tensor([labels[i % len(labels)] for i in range(n)], dtype=torch.int64)


def check_memory(n: int, shape: Sequence[int], what: str = "samples") -> None:
    """``ValueError`` when ``n`` float32 arrays of ``shape`` exceed :data:`MAX_OUTPUT_BYTES`."""
    size = n * math.prod(shape) * 4
    if size > MAX_OUTPUT_BYTES:
        raise ValueError(
            f"{n} {what} of shape {tuple(shape)} need {size / 2**30:.1f} GiB; one run holds at most "
            f"{MAX_OUTPUT_BYTES / 2**30:.0f} GiB, split it into runs"
        )


def seed_noise(seed: int, shape: Sequence[int]) -> tuple[Tensor, torch.Generator]:
    """The noise of ``seed``: ``torch.randn(shape)`` from ``torch.Generator().manual_seed(seed)``
    (float32, CPU, hence the same on every device), and that generator for further draws."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator), generator


def batch_limit(solver: Solver, batch: int) -> int:
    """The batch ``solver`` may run at without a sample depending on the others in its batch.

    A fixed-step solver treats every sample alike, so a sample depends only on its own noise
    (to the network's round-off). An adaptive solver picks its steps from an error estimate: over
    the whole batch (``per_sample=False``, torchdiffeq, scipy), which makes every sample depend on
    its batch-mates, or per sample (``per_sample=True``), where a sample's steps still move with
    the round-off of batched network calls, by up to the tolerance. Only one sample per solve
    keeps the promise exactly, so adaptive solvers get batches of one.
    """
    return 1 if solver.adaptive else batch


def sample_seeds(
    loaded: LoadedModel,
    seeds: Sequence[int],
    solver: Solver,
    *,
    steps: int | None,
    timesteps: str | Tensor,
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = False,
    labels: Tensor | None = None,
    guidance: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample one image per seed; returns (float32 CPU samples ``(n, *shape)``, int64 ``(n,)`` the
    NFE of each sample's solve: its batch's, or its own for adaptive solvers).

    ``labels`` (int64 ``(n,)``, one per seed) condition a class-conditional model, with
    classifier-free ``guidance`` w when given; each batch gets its seeds' labels, so a sample
    depends only on its seed and its label.

    The noise of seed i is ``torch.randn(shape, generator=torch.Generator().manual_seed(i))``
    (drawn on the CPU, so it is the same on every device); a stochastic solver gets one generator
    per sample, seeded from that same stream; adaptive solvers solve each sample alone
    (:func:`batch_limit`). A sample therefore depends only on its seed, up to the network's
    round-off, which follows ``batch`` (float32 digits model: up to 1.7e-5 between batches of 64
    and 8).
    """
    outputs: list[Tensor] = []
    nfe = 0
    per_sample: list[int] = []

    def count(info: StepInfo) -> None:
        nonlocal nfe
        nfe = info.nfe

    size = batch_limit(solver, batch)
    chunks = [list(seeds[i : i + size]) for i in range(0, len(seeds), size)]
    several = len(chunks) > 1
    first = 0  # the chunk's position in seeds, where its labels are
    for chunk in tqdm(chunks, desc="sample", disable=not (progress and several)):
        cond = None if labels is None else labels[first : first + len(chunk)].to(device)
        first += len(chunk)
        noise, generators = [], []
        for seed in chunk:
            z, g = seed_noise(seed, loaded.sample_shape)
            noise.append(z)
            if solver.stochastic:
                solver_seed = int(torch.randint(0, 2**62, (1,), generator=g))
                generators.append(torch.Generator(device=device).manual_seed(solver_seed))
        x = sample(
            loaded.model,
            loaded.schedule,
            torch.stack(noise).to(device, dtype),
            steps=steps,
            timesteps=timesteps,
            solver=solver,
            generator=generators or None,
            callback=count,
            progress=progress and not several,
            prediction=loaded.prediction,
            cond=cond,
            guidance=guidance,
        )
        outputs.append(x.detach().float().cpu())
        per_sample += [nfe] * len(chunk)
    return torch.cat(outputs), torch.tensor(per_sample, dtype=torch.int64)


_T = TypeVar("_T")


def in_batches(
    fn: Callable[[Tensor, Tensor | None], _T], rows: Tensor, batch: int, labels: Tensor | None = None
) -> list[_T]:
    """``fn(rows, labels)`` applied to ``rows`` ``(n, ...)`` and their ``labels`` (``(n,)`` or
    ``None``) ``batch`` rows at a time, in order."""
    return [
        fn(rows[i : i + batch], None if labels is None else labels[i : i + batch])
        for i in range(0, len(rows), batch)
    ]


def decode_in_batches(
    decode: Callable[[Tensor, Tensor | None], Tensor],
    latents: Tensor,
    batch: int,
    labels: Tensor | None = None,
) -> Tensor:
    """``decode(latents, labels)`` applied to ``latents`` ``(n, ...)`` and their ``labels``
    (``(n,)`` or ``None``) ``batch`` rows at a time, concatenated on the CPU as float32, so that
    memory grows with ``batch``, not ``n``."""

    def decoded(part: Tensor, part_labels: Tensor | None) -> Tensor:
        return decode(part, part_labels).detach().float().cpu()

    return torch.cat(in_batches(decoded, latents, batch, labels))


def likelihood_images(
    loaded: LoadedModel,
    images: Tensor,
    *,
    levels: int | None,
    batch: int,
    divergence: str = "exact",
    tol: float | None = None,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """Bits per dimension of ``images`` ``(n, *loaded.sample_shape)`` under ``loaded``'s ODE
    (:func:`diffode.likelihood`, per-sample dopri5 at rtol = atol = ``tol``, default
    :data:`diffode.likelihood.DEFAULT_TOL`), ``batch`` images per solve; returns (float64 ``(n,)``
    bpd, the evaluations of all solves). Image i's dequantisation noise and probes come from
    ``torch.Generator().manual_seed(i)``, so its number does not depend on ``batch`` (beyond
    the round-off of batched network calls)."""
    from diffode.likelihood import likelihood

    bpd, nfe = [], 0
    starts = range(0, len(images), batch)
    for first in tqdm(starts, desc="likelihood", disable=not progress):
        part = images[first : first + batch]
        result = likelihood(
            loaded.model,
            loaded.schedule,
            part,
            rtol=tol,
            atol=tol,
            divergence=divergence,
            levels=levels,
            prediction=loaded.prediction,
            generator=[torch.Generator(part.device).manual_seed(first + i) for i in range(len(part))],
        )
        bpd.append(result.bpd.cpu())
        nfe += result.nfe
    return torch.cat(bpd), nfe


# ----------------------------------------------------------------------------- outputs


def check_output(path: str, suffixes: Sequence[str], *, option: str, overwrite: bool) -> Path:
    """Check that ``path`` can take an output, before any work: its extension is one of
    ``suffixes``, its folder exists and is writable, it is not a folder, and it does not exist
    (unless ``overwrite``). Raises ``ValueError`` naming ``option`` and the fix."""
    out = Path(path)
    if out.suffix.lower() not in suffixes or not out.stem:
        raise ValueError(f"{option} must be a file name ending in {' or '.join(suffixes)}, got {path!r}")
    if out.is_dir():
        raise ValueError(f"{option} {path} is a folder; name a file in it")
    folder = out.parent
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: the folder {str(folder)!r} does not exist; create it first")
    if out.exists() and not overwrite:
        raise ValueError(f"{option} {path} exists; pass --overwrite to replace it")
    # a real probe, since os.access answers yes to root even where nothing can be created, named
    # as the temporary file the write will use (a name too long for the file system fails here)
    probe = temporary_path(out)
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as err:
        raise ValueError(f"{option} {path}: cannot write in {str(folder)!r} ({err.strerror})") from None
    return out


def write_arrays(out: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """Write ``arrays`` to the ``.npz`` file ``out`` atomically (the old file survives a failure)."""
    with atomic_write(out) as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]


def write_samples(out: str | os.PathLike[str], x: Tensor, *, columns: int = 0, scale: int = 4) -> None:
    """Images ``(n, C, H, W)`` in [-1, 1] → a PNG grid or an ``.npz`` of uint8 NHWC under
    ``arr_0``; 2-D points ``(n, 2)`` → a PNG scatter or an ``.npz`` of float32 points. Written
    atomically."""
    png = Path(out).suffix.lower() == ".png"
    if x.ndim == 4:
        images = to_uint8(x)
        if png:
            write_grid(out, images, columns or math.ceil(math.sqrt(len(images))), scale=scale)
        else:
            write_arrays(out, arr_0=images)
    else:
        points = x.detach().cpu().numpy()
        if png:
            write_png(out, scatter_image(points))
        else:
            write_arrays(out, arr_0=points.astype(np.float32))


# ----------------------------------------------------------------------------- the demo


@dataclass
class MixtureReport:
    """How close samples are to a Gaussian mixture: mean and covariance errors against a large
    draw of the data, the largest error of the mode weights, the rms distance to the nearest
    mode, and that distance for the data itself."""

    mean_error: float
    cov_error: float
    mode_weight_error: float
    rms_to_mode: float
    data_rms_to_mode: float

    def __str__(self) -> str:
        return (
            f"|mean - data mean| = {self.mean_error:.4f}   |cov - data cov|_F = {self.cov_error:.4f}   "
            f"max |mode weight - 1/8| = {self.mode_weight_error:.4f}   "
            f"rms distance to nearest mode = {self.rms_to_mode:.4f} (data: {self.data_rms_to_mode:.4f})"
        )


def mixture_report(x: Tensor, oracle: GaussianMixture, data: Tensor) -> MixtureReport:
    """Compare samples ``x`` ``(n, 2)`` with ``data`` ``(m, 2)`` drawn from ``oracle`` (float64)."""
    x64 = x.double()
    distances = torch.cdist(x64, oracle.means)
    occupancy = torch.bincount(distances.argmin(1), minlength=oracle.means.shape[0]).double() / len(x64)
    return MixtureReport(
        mean_error=float((x64.mean(0) - data.mean(0)).norm()),
        cov_error=float((torch.cov(x64.T) - torch.cov(data.T)).norm()),
        mode_weight_error=float((occupancy - oracle.weights).abs().max()),
        rms_to_mode=float(distances.min(1).values.pow(2).mean().sqrt()),
        data_rms_to_mode=float(oracle.stds[0] * 2**0.5),
    )


def plot_mixture(out: str | os.PathLike[str], data: Tensor, x: Tensor, title: str) -> None:
    """Scatter ``data`` and samples ``x`` (both ``(n, 2)``) side by side into the PNG ``out``
    (atomically; needs matplotlib, ``pip install "diffode[plot]"``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    axes[0].scatter(data[:, 0], data[:, 1], s=2, alpha=0.5)
    axes[0].set_title("data (exact mixture)")
    axes[1].scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color="C1")
    axes[1].set_title(title)
    for ax in axes:
        ax.set_aspect("equal")
    fig.tight_layout()
    try:
        with atomic_write(out) as fh:
            fig.savefig(fh, dpi=120, format="png")
    finally:
        plt.close(fig)
