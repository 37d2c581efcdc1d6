"""Sampling at scale: a list of seeds sampled into shard files, across processes and machines.

A run samples its seeds into one folder::

    DIR/manifest.json               what the run samples: diffode version, model and schedule
                                    hashes, solver, grid, dtype, conditioning and guidance, the
                                    seeds and the shard size; written once, by rank 0, first
    DIR/seeds-000000-000255.npz     a shard: ``arr_0`` (uint8 NHWC images, or float32 points)
    DIR/seeds-000256-000511.npz     and ``seeds`` (int64), each written atomically
    ...

The seeds are cut, in order, into shards of ``shard_size``; shard i belongs to rank
``i mod world_size``. The interleaving is fixed (it does not depend on timing) and a sample depends
only on its seed (:func:`diffode.runs.sample_seeds`), so one process, N ranks, N nodes, or a run
killed at any moment and restarted all leave the same files, as long as the batch size and the
kind of device stay the same: they are not recorded, and a run resumed with others moves its new
shards' samples by the network's round-off (which can flip a uint8 pixel; docs/scaling.md). A shard exists
completely or not at all (:func:`diffode.atomic.atomic_write`), which is what makes resuming safe:
a restart into the folder checks that the manifest is the same, skips the shards present and
samples the others.

- :func:`sample_shards`: the whole thing for a :class:`~diffode.runs.LoadedModel`, from one
  process or from every rank of an initialised ``torch.distributed`` process group;
- :func:`write_shards`: the engine under it, for any function from a shard's seeds to samples;
- :func:`pack`: every shard checked, then one ``.npz`` (``arr_0`` in seed order, as FID tools
  read it) written as a stream, one shard in memory at a time, plus optional PNGs;
- :func:`process_group`, :func:`stop_on_signals`: the process group ``torchrun`` describes, and
  SIGTERM/SIGINT turned into a clean stop, for the command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import numbers
import os
import signal
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from diffode.atomic import atomic_write
from diffode.checkpoint import check_fields
from diffode.grids import sigma_grid
from diffode.images import read_npz_array, to_uint8, write_png
from diffode.runs import LoadedModel, parse_seeds, resolve_device, sample_seeds, write_arrays
from diffode.solvers.base import Solver
from diffode.validation import SEED_LIMIT, describe, require_int, require_nonnegative

DEFAULT_SHARD_SIZE = 256
"""Seeds per shard: a few seconds to minutes of work, so that a kill loses little."""

MANIFEST = "manifest.json"
FORMAT = "diffode-shards"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- shards and seeds


@dataclass(frozen=True)
class Shard:
    """Seeds ``seeds`` at positions ``start`` … ``start + len(seeds) - 1`` of the run's seed list
    (the positions say which labels they take); its file is named by its first and last seed."""

    start: int
    seeds: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"seeds-{self.seeds[0]:06d}-{self.seeds[-1]:06d}.npz"


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """``seeds`` as Python ints, each an integer in [0, 2**32) (``--seeds`` on the command line
    allows no others, and ``pack`` reads no others back); ``TypeError`` or ``ValueError`` naming
    the first that is not."""
    out: list[int] = []
    for k, seed in enumerate(seeds):
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seeds must be integers, got {describe(seed)} at position {k}")
        if not 0 <= int(seed) < SEED_LIMIT:
            raise ValueError(
                f"seeds must be in [0, 2**32) (a generator keeps 32 bits), got {seed} at position {k}"
            )
        out.append(int(seed))
    return out


def plan_shards(seeds: Sequence[int], shard_size: int) -> list[Shard]:
    """``seeds`` (increasing, so that every seed is sampled once and names are unique) cut into
    shards of ``shard_size`` (the last one shorter); ``ValueError`` otherwise."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    if not seeds:
        raise ValueError("--seeds names no seeds")
    for a, b in itertools.pairwise(seeds):
        if b <= a:
            raise ValueError(
                f"--seeds must increase without repeats for a shard folder (every seed once), "
                f"but {b} follows {a}"
            )
    return [
        Shard(start, tuple(seeds[start : start + shard_size])) for start in range(0, len(seeds), shard_size)
    ]


def format_seeds(seeds: Sequence[int]) -> str:
    """Increasing seeds as ranges, the way ``--seeds`` reads them: ``[0, 1, 2, 5]`` → ``"0-2,5"``."""
    parts: list[str] = []
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(parts)


def array_spec(sample_shape: Sequence[int]) -> dict[str, Any]:
    """How samples of ``sample_shape`` are stored: images ``(C, H, W)`` as uint8 ``(H, W, C)``
    (as FID tools read them), anything else as float32 of its own shape."""
    if len(sample_shape) == 3:
        c, h, w = sample_shape
        return {"dtype": "uint8", "shape": [int(h), int(w), int(c)]}
    return {"dtype": "float32", "shape": [int(v) for v in sample_shape]}


def _as_array(x: Tensor) -> np.ndarray:
    """Samples ``(n, *shape)`` in the stored form of :func:`array_spec`."""
    return to_uint8(x) if x.ndim == 4 else x.detach().float().cpu().numpy()


# ----------------------------------------------------------------------------- the manifest


def _digest(h: Any, tensor: Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes to the hash ``h``."""
    data = tensor.detach().cpu().contiguous()
    h.update(f"{data.dtype}{tuple(data.shape)}".encode())
    # through uint8, since numpy has no bfloat16
    h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())


def model_sha256(model: object) -> str:
    """SHA-256 of a network: its architecture (the module's ``repr``, which lists its layers and
    their settings) and every weight and buffer (name, dtype, shape, bytes). ``model`` is an
    ``nn.Module`` or holds one as an attribute (diffusers adapters hold ``.unet``); ``ValueError``
    when there is none to hash."""
    modules = [model] if isinstance(model, nn.Module) else []
    modules += [v for v in getattr(model, "__dict__", {}).values() if isinstance(v, nn.Module)]
    if not modules:
        raise ValueError(
            f"cannot hash a {type(model).__name__} (no torch module in it); pass model_sha256= yourself"
        )
    h = hashlib.sha256()
    for module in modules:
        h.update(repr(module).encode())
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            _digest(h, tensor)
    return h.hexdigest()


def _tensor_sha256(tensor: Tensor) -> str:
    h = hashlib.sha256()
    _digest(h, tensor)
    return h.hexdigest()


def run_manifest(
    loaded: LoadedModel,
    solver: Solver,
    seeds: Sequence[int],
    *,
    steps: int | None,
    timesteps: str | Tensor,
    dtype: torch.dtype,
    shard_size: int,
    labels: Tensor | None = None,
    guidance: float | None = None,
    options: Mapping[str, Any] | None = None,
    model_hash: str | None = None,
) -> dict[str, Any]:
    """Everything that decides a run's samples, as JSON. ``options`` (the command line's sampling
    options, whatever they are) are recorded as given. The batch size and the device are not, so
    that a run may resume with a smaller batch or elsewhere; they move samples by the network's
    round-off (the digits model in float32: up to 1.7e-5 between batches of 64 and 8, which can
    flip a stored uint8 pixel), so two runs with equal manifests write equal shards when they also
    share those."""
    from diffode import __version__

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "diffode_version": __version__,
        "model_sha256": model_hash or model_sha256(loaded.model),
        "schedule_sha256": _tensor_sha256(loaded.schedule.alphas_cumprod),
        "prediction": loaded.prediction,
        "sample_shape": list(loaded.sample_shape),
        # the command line's own words first: a difference there is named as the user typed it
        "options": dict(options or {}),
        "solver": repr(solver),
        "steps": steps,
        # an explicit grid by its exact values (dtype, shape and bytes), not its printed digits
        "timesteps": timesteps if isinstance(timesteps, str) else f"sha256:{_tensor_sha256(timesteps)}",
        "dtype": str(dtype).removeprefix("torch."),
        "labels_sha256": None if labels is None else _tensor_sha256(labels.to(torch.int64)),
        "guidance": guidance,
        "seeds": format_seeds(seeds),
        "count": len(seeds),
        "shard_size": shard_size,
        "array": array_spec(loaded.sample_shape),
    }
    # through JSON and back, so that it compares equal to what a later run reads from the file
    return dict(json.loads(json.dumps(manifest, default=str)))


def _flat(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Nested mappings flattened into dotted keys (``{"options": {"steps": 2}}`` →
    ``{"options.steps": 2}``), in order."""
    flat: dict[str, Any] = {}
    for key, value in manifest.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in _flat(value).items()})
        else:
            flat[key] = value
    return flat


def first_difference(
    old: Mapping[str, Any], new: Mapping[str, Any], where: tuple[str, str] = ("there", "here")
) -> str | None:
    """The first entry (in ``new``'s order) where two manifests differ, said in words (``where``
    names the two sides); ``None`` when they are equal."""
    a, b = _flat(old), _flat(new)
    for key in [*b, *(k for k in a if k not in b)]:
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            name = key.removeprefix("options.")
            return (
                f"{name} is {a.get(key, '<absent>')!r} {where[0]} and {b.get(key, '<absent>')!r} {where[1]}"
            )
    return None


def read_manifest(outdir: Path) -> dict[str, Any]:
    """The manifest of the shard folder ``outdir``; ``ValueError`` naming the file otherwise."""
    path = outdir / MANIFEST
    if not path.is_file():
        raise ValueError(f"{outdir} has no {MANIFEST}; it is not a folder written by diffode sample --outdir")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a diffode shard manifest (format {FORMAT!r})")
    check_fields(manifest, {"seeds": str, "count": int, "shard_size": int, "array": dict}, path)
    check_fields(manifest["array"], {"dtype": str, "shape": list}, path)
    return manifest


def _check_folder(path: str | os.PathLike[str], option: str, fix: str) -> None:
    """``ValueError`` naming ``option`` and ``fix`` when ``path`` or a folder above it is a file."""
    folder = Path(path)
    # the nearest of path and the folders above it that exists ("." at the latest)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        what = f"{option} {path}" if existing == folder else f"{option} {path}: {existing}"
        raise ValueError(f"{what} is a file, not a folder; {fix}")


def check_outdir(outdir: str | os.PathLike[str]) -> None:
    """Check, before any work, that the shard folder ``outdir`` can be created or used: neither it
    nor a folder above it may be a file. ``ValueError`` naming ``--outdir`` and the fix otherwise."""
    _check_folder(
        outdir,
        "--outdir",
        "name a new folder for the shards, or the folder of an earlier sample --outdir run to resume it",
    )


def _temporary(outdir: Path) -> list[Path]:
    """The temporary files that :mod:`diffode.atomic` names for shards and the manifest."""
    return [*outdir.glob(".seeds-*.npz.*.tmp"), *outdir.glob(f".{MANIFEST}.*.tmp")]


def prepare_folder(outdir: Path, manifest: Mapping[str, Any], *, clean: bool = True) -> None:
    """Make ``outdir`` ready for a run: create it and write the manifest, or check that the
    manifest there is equal (``ValueError`` naming the first difference otherwise). A manifest
    beside no shard at all is replaced: it is a run that failed before its first shard (bad
    settings, an unstable solver), with nothing to resume or protect. A folder with files but no
    manifest is not a run's and is refused (the temporary files of a killed run do not count).
    With ``clean``, removes those temporary files (they are never shards), and only those: one
    process per folder may, as another's may be in flight."""
    check_outdir(outdir)
    path = outdir / MANIFEST
    temporary = set(_temporary(outdir)) if outdir.is_dir() else set()
    if outdir.is_dir() and not path.exists() and any(p not in temporary for p in outdir.iterdir()):
        raise ValueError(
            f"--outdir {outdir} holds files but no {MANIFEST}, so it is not a sample --outdir run; "
            "name a new or empty folder"
        )
    outdir.mkdir(parents=True, exist_ok=True)
    difference = first_difference(read_manifest(outdir), manifest) if path.exists() else None
    if difference is not None and any(outdir.glob("seeds-*.npz")):
        raise ValueError(
            f"{outdir} holds another run ({difference}, in {path}); rerun with that run's options "
            "to resume it, or sample into another folder"
        )
    if difference is not None or not path.exists():
        with atomic_write(path) as fh:
            fh.write(json.dumps(manifest, indent=2).encode() + b"\n")
    for stale in temporary if clean else ():
        with contextlib.suppress(OSError):
            stale.unlink()


# ----------------------------------------------------------------------------- ranks


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks: from the initialised ``torch.distributed``
    process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(values: Sequence[int], op: Any) -> list[int]:
    """``values`` combined over the ranks with ``op`` (``dist.ReduceOp.SUM``, ``MAX``); as they
    are without a process group."""
    if rank_and_world()[1] == 1:
        return list(values)
    # NCCL reduces only tensors on the rank's GPU; gloo takes them on the CPU
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    tensor = torch.tensor(list(values), dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=op)
    return [int(v) for v in tensor.tolist()]


def _from_rank(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every rank (a Python object; itself without a process group)."""
    if rank_and_world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@contextlib.contextmanager
def process_group(device: str) -> Iterator[torch.device]:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1,
    ``RANK``, ``MASTER_ADDR``, ...) unless one is initialised already: NCCL for CUDA, gloo
    otherwise; leave it at the end. Yields this rank's device: ``cuda`` means ``cuda:LOCAL_RANK``
    (one GPU per rank), any other name is taken as it is."""
    local_rank = os.environ.get("LOCAL_RANK")
    name = f"cuda:{local_rank}" if device == "cuda" and local_rank is not None else device
    resolved = resolve_device(name)
    joined = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        joined = True
    try:
        yield resolved
    finally:
        if joined:
            dist.destroy_process_group()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """Within the block, SIGTERM and SIGINT raise ``KeyboardInterrupt`` where the work is, so the
    shard in flight is dropped (its temporary file removed) and finished shards stay. Yields a
    list that receives the signal's number. Main thread only."""
    received: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- sampling


@dataclass
class ShardRun:
    """What a run did: shards in the run, shards found finished, shards and samples written now
    (by all ranks), seconds of the shard loop, this process's rank and the number of ranks."""

    outdir: Path
    shards: int
    skipped: int
    written: int
    samples: int
    seconds: float
    rank: int
    world_size: int

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def write_shards(
    make: Callable[[Shard], Tensor],
    seeds: Sequence[int],
    outdir: str | os.PathLike[str],
    manifest: Mapping[str, Any],
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
) -> ShardRun:
    """Sample ``seeds`` into shard files in ``outdir`` with ``make`` (a shard → its samples,
    ``(len(shard.seeds), *shape)``), on every rank of the process group if one is initialised
    (all ranks call this with the same arguments), resuming whatever is there.

    Every rank first checks that its own ``manifest`` equals rank 0's (a node started with other
    options is refused on every rank, before anything is written); rank 0 then writes (or
    checks) ``manifest`` before any rank writes a shard; each rank then samples
    the missing shards among its own (``shards[rank::world_size]``), in lock step with the others
    so that rank 0 can show shards done / total and an ETA.
    """
    folder = Path(outdir)
    rank, world = rank_and_world()
    shards = plan_shards(check_seeds(seeds), require_int("shard_size", shard_size, low=1))
    # a rank (a node) started with other settings would write its shards of another run into
    # this one's folder: every rank compares its own manifest with rank 0's, before rank 0
    # writes anything (a refused launch leaves no manifest to refuse the next one)
    reference = _from_rank(dict(manifest))
    difference = first_difference(reference, manifest, ("on rank 0", f"on rank {rank}"))
    (odd,) = _all_reduce([rank + 1 if difference is not None else 0], dist.ReduceOp.MAX)
    if odd:
        raise ValueError(
            f"the ranks were started with different settings ({_from_rank(difference, odd - 1)}); "
            "start every rank with the same options"
        )
    error, skipped = None, 0
    if rank == 0:
        try:
            prepare_folder(folder, manifest)
            skipped = sum((folder / shard.name).exists() for shard in shards)
        except (ValueError, OSError) as err:
            error = str(err)
    # every rank raises rank 0's refusal, rather than waiting for shards that never come
    error, skipped = _from_rank((error, skipped))
    if error is not None:
        raise ValueError(error)
    # only now, after rank 0's look at the folder, may any shard appear in it. The other ranks
    # check their own view of it: on a shared file system the folder rank 0 just prepared, on a
    # node without one a local folder of the same name, which may hold another run's shards
    local = None
    if rank != 0:
        try:
            prepare_folder(folder, manifest, clean=False)
        except (ValueError, OSError) as err:
            local = str(err)
    (refused,) = _all_reduce([rank + 1 if local is not None else 0], dist.ReduceOp.MAX)
    if refused:
        raise ValueError(f"on rank {refused - 1}: {_from_rank(local, refused - 1)}")
    mine = [shard for shard in shards[rank::world] if not (folder / shard.name).exists()]
    (rounds,) = _all_reduce([len(mine)], dist.ReduceOp.MAX)
    written = samples = 0
    start = time.perf_counter()
    with tqdm(
        total=len(shards), initial=skipped, unit="shard", desc="shards", disable=rank != 0 or not progress
    ) as bar:
        for i in range(rounds):
            done = [0, 0]
            if i < len(mine):
                shard = mine[i]
                x = make(shard)
                if len(x) != len(shard.seeds):
                    raise ValueError(
                        f"sampling {shard.name} gave {len(x)} samples for {len(shard.seeds)} seeds"
                    )
                write_arrays(folder / shard.name, arr_0=_as_array(x), seeds=np.asarray(shard.seeds, np.int64))
                done = [1, len(shard.seeds)]
            shards_now, samples_now = _all_reduce(done, dist.ReduceOp.SUM)
            written, samples = written + shards_now, samples + samples_now
            bar.update(shards_now)
    return ShardRun(folder, len(shards), skipped, written, samples, time.perf_counter() - start, rank, world)


def sample_shards(
    loaded: LoadedModel,
    seeds: Sequence[int],
    solver: Solver,
    outdir: str | os.PathLike[str],
    *,
    steps: int | None,
    timesteps: str | Tensor = "uniform",
    batch: int = 256,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    shard_size: int = DEFAULT_SHARD_SIZE,
    labels: Tensor | None = None,
    guidance: float | None = None,
    options: Mapping[str, Any] | None = None,
    model_hash: str | None = None,
    progress: bool = True,
) -> ShardRun:
    """Sample one image per seed of ``seeds`` into shard files in ``outdir`` (resuming what is
    there), from one process or from every rank of your ``torch.distributed`` program.

    Call it on every rank with the same arguments, after ``init_process_group`` (rank and world
    size come from the group), with ``device`` this rank's device; without a group it does all the
    work itself. The samples are those of :func:`diffode.runs.sample_seeds` with the same
    arguments: ``labels`` (int64, one per seed, in the order of ``seeds``) and ``guidance``
    condition a class-conditional model. ``options`` are recorded in the manifest as they are
    (the command line passes its sampling options); ``model_hash`` replaces the hash of the
    network's weights for models that are not torch modules. Pack the folder with :func:`pack`.

    >>> dist.init_process_group("nccl")  # doctest: +SKIP
    >>> device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # doctest: +SKIP
    >>> loaded = runs.load_model(None, device, torch.float32)  # doctest: +SKIP
    >>> sample_shards(loaded, range(50_000), Euler(), "fid-run", steps=50, device=device)  # doctest: +SKIP
    """
    device = torch.device("cpu") if device is None else device
    seeds = check_seeds(seeds)
    batch = require_int("batch", batch, low=1)
    shard_size = require_int("shard_size", shard_size, low=1)
    if labels is not None:
        if (
            not isinstance(labels, Tensor)
            or labels.ndim != 1
            or labels.is_floating_point()
            or labels.is_complex()
        ):
            raise TypeError(
                f"labels must be a 1-D integer tensor (one class per seed), got {describe(labels)}; "
                "convert a list with torch.tensor(labels)"
            )
        if len(labels) != len(seeds):
            raise ValueError(f"labels must give one label per seed ({len(seeds)}), got {len(labels)}")
    # NaN compared unequal to itself in the ranks' manifest check: "guidance is nan on rank 0 and nan"
    guidance = None if guidance is None else require_nonnegative("guidance", guidance)
    # a grid that cannot be built (steps=0, an unknown spacing) fails here, before the folder
    sigma_grid(loaded.schedule, steps, timesteps, adaptive=solver.adaptive)
    manifest = run_manifest(
        loaded,
        solver,
        seeds,
        steps=steps,
        timesteps=timesteps,
        dtype=dtype,
        shard_size=shard_size,
        labels=labels,
        guidance=guidance,
        options=options,
        model_hash=model_hash,
    )

    def make(shard: Shard) -> Tensor:
        # a shard's labels are those of its positions in the whole seed list
        shard_labels = None if labels is None else labels[shard.start : shard.start + len(shard.seeds)]
        x, _ = sample_seeds(
            loaded,
            shard.seeds,
            solver,
            steps=steps,
            timesteps=timesteps,
            batch=batch,
            device=device,
            dtype=dtype,
            labels=shard_labels,
            guidance=guidance,
        )
        return x

    return write_shards(make, list(seeds), outdir, manifest, shard_size=shard_size, progress=progress)


# ----------------------------------------------------------------------------- packing


@dataclass
class Packed:
    """What :func:`pack` wrote: the number of samples, their stored shape and dtype, and the
    number of PNG files."""

    count: int
    shape: tuple[int, ...]
    dtype: str
    pngs: int


def _planned(folder: Path) -> tuple[dict[str, Any], list[Shard]]:
    """The manifest of ``folder`` and the shards it plans."""
    manifest = read_manifest(folder)
    # the manifest was written for these seeds, so no limit applies when reading it back
    seeds = parse_seeds(manifest["seeds"], limit=int(manifest["count"]))
    if len(seeds) != manifest["count"]:
        # pack sizes its output from the count: a wrong one wrote an .npz that np.load refuses
        raise ValueError(
            f"{folder / MANIFEST} is inconsistent: its seeds {manifest['seeds']!r} are {len(seeds)}, its "
            f"count says {manifest['count']}; restore the file or sample into a new folder"
        )
    return manifest, plan_shards(seeds, int(manifest["shard_size"]))


def missing_shards(outdir: str | os.PathLike[str]) -> list[Shard]:
    """The shards of the folder's manifest that are not there."""
    folder = Path(outdir)
    return _absent(folder, _planned(folder)[1])


def _absent(folder: Path, shards: Sequence[Shard]) -> list[Shard]:
    return [shard for shard in shards if not (folder / shard.name).is_file()]


def _load_shard(path: Path, shard: Shard, spec: Mapping[str, Any]) -> np.ndarray:
    """The samples of the shard file ``path``, checked against what the manifest promises
    (seeds, dtype, shape); ``ValueError`` naming the file otherwise."""
    fix = "delete it and rerun the sampling command to redo it"
    try:
        samples, seeds = read_npz_array(path), read_npz_array(path, "seeds")
    except ValueError as err:
        # shards are written atomically: a damaged one was damaged afterwards (a copy, the disk)
        raise ValueError(f"{err}; {fix}") from None
    want = (len(shard.seeds), *spec["shape"])
    if seeds.tolist() != list(shard.seeds):
        problem = "holds other seeds than its name says"
    elif samples.dtype != np.dtype(spec["dtype"]) or samples.shape != want:
        problem = f"holds {samples.dtype} {samples.shape}, the manifest says {spec['dtype']} {want}"
    else:
        return samples
    raise ValueError(f"{path} {problem}; {fix}")


def pack(
    outdir: str | os.PathLike[str], out: str | os.PathLike[str], *, png: str | os.PathLike[str] | None = None
) -> Packed:
    """Check every shard of the folder's manifest and write them as one ``.npz`` to ``out``:
    ``arr_0`` in seed order (uint8 NHWC for images, as FID tools read it), atomically and as a
    stream (one shard in memory at a time); with ``png``, also one PNG per seed (``png/SEED.png``).

    ``ValueError`` listing the missing seed ranges when shards are missing, or naming a shard that
    does not hold what the manifest says; nothing is written then.
    """
    folder = Path(outdir)
    manifest, shards = _planned(folder)
    if png is not None:
        _check_folder(png, "--png", "name a folder for the PNGs")
    if Path(out).resolve() in {(folder / name).resolve() for name in (MANIFEST, *(s.name for s in shards))}:
        raise ValueError(f"--out {out} is one of {folder}'s own files; write the packed file elsewhere")
    missing = _absent(folder, shards)
    if missing:
        ranges = [format_seeds(shard.seeds) for shard in missing]
        shown = ", ".join(ranges[:10]) + (f", … ({len(ranges) - 10} more)" if len(ranges) > 10 else "")
        raise ValueError(
            f"{folder} misses {len(missing)} shard(s), seeds {shown}; rerun the sampling command to finish"
        )
    spec = manifest["array"]
    if png is not None and spec["dtype"] != "uint8":
        raise ValueError(f"--png needs images; {folder} holds {spec['dtype']} points")
    # check every shard first, so that a bad one stops the packing before anything is written
    for shard in shards:
        _load_shard(folder / shard.name, shard, spec)
    dtype, shape = np.dtype(spec["dtype"]), (int(manifest["count"]), *spec["shape"])
    pngs, png_dir = 0, None if png is None else Path(png)
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
    # the .npy-in-zip layout of np.savez, written member by member, never the whole array at once
    with (
        atomic_write(out) as fh,
        zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as archive,
        archive.open("arr_0.npy", "w", force_zip64=True) as member,
    ):
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(member, header)
        for shard in shards:
            samples = _load_shard(folder / shard.name, shard, spec)
            member.write(np.ascontiguousarray(samples).tobytes())
            if png_dir is not None:
                for seed, image in zip(shard.seeds, samples, strict=True):
                    write_png(png_dir / f"{seed:06d}.png", image)
                pngs += len(samples)
    return Packed(shape[0], tuple(shape[1:]), spec["dtype"], pngs)
