"""The ``diffode`` command line (also ``python -m diffode``): argument parsing and thin handlers
over :mod:`diffode.runs` and :mod:`diffode.images`.

Bad arguments, unreadable inputs and unwritable outputs print one line to stderr and exit with
status 2, without a traceback; outputs are checked before any work starts.
"""

from __future__ import annotations

import argparse
import math
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffode import distributed, runs
from diffode.data import DATASETS
from diffode.fixed_point import DEFAULT_MAX_ITER
from diffode.grids import TIMESTEP_SPACINGS, sigma_grid
from diffode.images import load_images, read_npz_array
from diffode.runs import LoadedModel, check_output, load_model, parse_seeds, resolve_device, write_samples
from diffode.sampling import resolve_sampler, sample
from diffode.solve import StepInfo
from diffode.solvers.base import Solver
from diffode.solvers.ddim import DDIM
from diffode.solvers.registry import without_stability_check
from diffode.validation import SEED_LIMIT

MAX_FRAMES = 10_000
"""The most frames ``interpolate`` decodes in one run."""
MAX_DEMO_POINTS = 1_000_000
MAX_SCALE = 64

_PICTURE_OR_ARRAY = (".png", ".npz")


class UsageError(Exception):
    """A problem with the command's arguments: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low`` (and at most ``high``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value

    return parse


_SEED = _int_in(0, SEED_LIMIT - 1)
_RUN_SEED = _int_in(0, SEED_LIMIT - 2)  # a training run also uses seed + 1 (its test split)


def _levels(text: str) -> int:
    """An argparse type: a number of quantisation levels, 0 (continuous data) or at least 2."""
    value = _int_in(0)(text)
    if value == 1:
        raise argparse.ArgumentTypeError("must be 0 (continuous data) or at least 2 levels, got 1")
    return value


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _add_grid_options(
    p: argparse.ArgumentParser, steps: int, *, eta: bool = True, timesteps: str | None = "uniform"
) -> None:
    p.add_argument("--solver", default="euler", help="solver name (default: euler = DDIM)")
    p.add_argument("--steps", type=int, default=steps, help=f"sampling steps (default: {steps})")
    p.add_argument(
        "--timesteps",
        default=timesteps,
        choices=TIMESTEP_SPACINGS,
        help="timestep spacing (default: "
        + (timesteps or "uniform; logsnr with --method exact and a solver other than bdia")
        + ")",
    )
    if eta:
        p.add_argument("--eta", type=float, default=0.0, help="DDIM eta, with --solver ddim (default: 0)")
    p.add_argument(
        "--no-stability-check",
        action="store_true",
        help="take the steps that a Runge–Kutta solver (heun, rk4, ...) or ipndm refuses (unstable, or "
        "magnifying the network's errors), to study them",
    )


_MODEL_HELP = (
    "digits, digits-cond (bundled; a folder of either name is ./digits), a diffode checkpoint or "
    "diffusers folder (default: digits)"
)
_NEW_RUN = "start a new run in a folder that holds one (its files are replaced as the new run saves)"


def _add_overwrite(p: argparse.ArgumentParser, text: str = "replace existing output files") -> None:
    p.add_argument("--overwrite", action="store_true", help=text)


def _output(args: argparse.Namespace, option: str, suffixes: Sequence[str] = _PICTURE_OR_ARRAY) -> None:
    """Check the output path of ``option`` (``--out``, ``--recon``) before any work."""
    path = getattr(args, option.lstrip("-").replace("-", "_"))
    check_output(path, suffixes, option=option, overwrite=args.overwrite)


def _check_picture(path: str | None, shape: Sequence[int], option: str) -> None:
    """Before any work: a ``.png`` output holds images (C, H, W) with C = 1 or 3, or 2-D points."""
    if not path or Path(path).suffix.lower() != ".png":
        return
    if len(shape) == 3 and shape[0] not in (1, 3):
        raise UsageError(
            f"{option} {path}: a PNG holds grey or RGB images, and the model makes {shape[0]}-channel "
            "samples; name an .npz file"
        )
    if len(shape) != 3 and tuple(shape) != (2,):
        raise UsageError(
            f"{option} {path}: a PNG holds images or a scatter of 2-D points, and the model makes samples "
            f"of shape {tuple(shape)}; name an .npz file"
        )


def _demo(args: argparse.Namespace) -> int:
    """Sample the 8-component ring mixture through its exact ε model and compare with the data."""
    from diffode.oracles import GaussianMixture
    from diffode.schedule import Schedule

    if args.out:
        _output(args, "--out", (".png",))
    schedule = Schedule.linear()
    oracle = GaussianMixture.ring()
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.n, 2, generator=generator)
    nfe = 0

    def count(info: StepInfo) -> None:
        nonlocal nfe
        nfe = info.nfe

    start = time.perf_counter()
    x = sample(
        oracle.model(schedule),
        schedule,
        noise,
        steps=args.steps,
        timesteps=args.timesteps,
        solver=_solver_from_args(args),
        generator=generator,
        callback=count,
    )
    wall = time.perf_counter() - start
    data = oracle.sample(200_000, torch.Generator().manual_seed(args.seed + 1))
    print(f"solver={args.solver} steps={args.steps} timesteps={args.timesteps} samples={args.n}")
    print(f"NFE={nfe} wall={wall:.3f}s")
    print(runs.mixture_report(x, oracle, data))
    if args.out:
        runs.plot_mixture(args.out, data[: args.n], x.double(), f"{args.solver}, {nfe} NFE")
        print(f"wrote {args.out}")
    return 0


_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _int_list(name: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{name} must be comma-separated integers such as 16,32,32, got {text!r}") from None
    return values


def _solver_from_args(args: argparse.Namespace) -> Solver:
    """The solver of ``--solver``, ``--eta``, ``--sigma-hat`` and ``--no-stability-check``."""
    if getattr(args, "sigma_hat", False):
        if args.solver != "ddim":
            raise UsageError(f"--sigma-hat is a variant of --solver ddim, got --solver {args.solver}")
        if getattr(args, "eta", 0.0) not in (0.0, 1.0):
            raise UsageError(
                f"--sigma-hat takes η = 1's mean with noise σ̂ and has no η of its own, got --eta {args.eta}; "
                "leave --eta out"
            )
        solver: Solver = DDIM(sigma_hat=True)
    else:
        solver = resolve_sampler(args.solver, getattr(args, "eta", 0.0))
    if not args.no_stability_check:
        return solver
    try:
        return without_stability_check(solver)
    except ValueError:
        raise UsageError(
            "--no-stability-check applies to the Runge–Kutta solvers and ipndm, which refuse unstable "
            f"steps (heun, midpoint, rk4, ...), got --solver {args.solver}"
        ) from None


def _sample(args: argparse.Namespace) -> int:
    """Sample the bundled digits model (or a checkpoint) and write a PNG grid or an .npz."""
    if args.outdir is not None:
        if not args.outdir:
            raise UsageError("--outdir must name a folder for the shards, got ''")
        return _sample_to_folder(args)
    _output(args, "--out")
    seeds = parse_seeds(args.seeds)
    solver = _solver_from_args(args)
    device, dtype = resolve_device(args.device), _DTYPES[args.dtype]
    loaded = load_model(args.model, device, dtype)
    _check_picture(args.out, loaded.sample_shape, "--out")
    labels, guidance = _labels_and_guidance(args, loaded)
    runs.check_memory(len(seeds), loaded.sample_shape)
    start = time.perf_counter()
    x, nfe = runs.sample_seeds(
        loaded,
        seeds,
        solver,
        steps=args.steps,
        timesteps=args.timesteps,
        batch=args.batch,
        device=device,
        dtype=dtype,
        progress=not args.no_progress,
        labels=runs.cycle_labels(labels, len(seeds)),
        guidance=guidance,
    )
    wall = time.perf_counter() - start
    print(
        f"model={loaded.name} solver={solver!r} steps={_describe_steps(args, loaded, solver)} "
        f"timesteps={args.timesteps} samples={len(seeds)} device={device} dtype={args.dtype}"
        f"{_describe_labels(labels, guidance)}"
    )
    print(f"NFE={_describe_nfe(nfe)} wall={wall:.3f}s")
    write_samples(args.out, x, columns=args.columns, scale=args.scale)
    print(f"wrote {args.out}")
    return 0


_NOT_SAMPLING = frozenset(
    {"command", "run", "command_line", "threads", "model", "seeds", "batch", "device"}
    | {"out", "outdir", "shard_size", "columns", "scale", "overwrite", "no_progress"}
)
"""Parsed ``sample`` options that do not decide the samples: the model (its weights are hashed
instead), the seeds (recorded as a range), where outputs go, how they look, and how the work is
laid out (batch and device change samples by round-off at most)."""


def _sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``args`` that decide the samples (solver, grid, η, dtype, labels, guidance,
    and any sampling option the parser gains), for the shard folder's manifest."""
    return {key: value for key, value in sorted(vars(args).items()) if key not in _NOT_SAMPLING}


def _describe_steps(args: argparse.Namespace, loaded: LoadedModel, solver: Solver) -> str:
    """``--steps`` as given, and the steps the grid holds where they differ (a quadratic spacing
    drops repeated timesteps: 1000 quadratic steps are 688)."""
    if args.steps is None or solver.adaptive:
        return str(args.steps)
    taken = len(sigma_grid(loaded.schedule, args.steps, args.timesteps)) - 1
    return str(args.steps) if taken == args.steps else f"{args.steps} ({taken} distinct)"


def _describe_nfe(nfe: Tensor) -> str:
    """The samples' NFE: one number when every solve took the same, else the mean per sample and
    the range (adaptive solvers solve each sample alone)."""
    low, high = int(nfe.min()), int(nfe.max())
    return str(low) if low == high else f"{float(nfe.double().mean()):.1f} per sample ({low}-{high})"


def _sample_to_folder(args: argparse.Namespace) -> int:
    """``sample --outdir``: the seeds into shard files, from one process or every rank torchrun
    starts; resumes a folder with an equal manifest, refuses one with another."""
    distributed.check_outdir(args.outdir)
    seeds = parse_seeds(args.seeds)
    solver = _solver_from_args(args)
    dtype = _DTYPES[args.dtype]
    with distributed.stop_on_signals() as stopped, distributed.process_group(args.device) as device:
        try:
            loaded = load_model(args.model, device, dtype)
            labels, guidance = _labels_and_guidance(args, loaded)
            # a shard holds at most shard_size samples, and no more than the run's seeds
            runs.check_memory(min(args.shard_size, len(seeds)), loaded.sample_shape)
            run = distributed.sample_shards(
                loaded,
                seeds,
                solver,
                args.outdir,
                steps=args.steps,
                timesteps=args.timesteps,
                batch=args.batch,
                device=device,
                dtype=dtype,
                shard_size=args.shard_size,
                labels=runs.cycle_labels(labels, len(seeds)),
                guidance=guidance,
                options=_sampling_options(args),
                progress=not args.no_progress,
            )
        except BaseException:
            # after a stop signal, whatever broke (a peer rank gone too) is that stop
            if not stopped:
                raise
            name = signal.Signals(stopped[0]).name
            print(
                f"diffode: stopped by {name}; finished shards stay in {args.outdir}, the one in flight "
                "was dropped: rerun the same command to resume",
                file=sys.stderr,
            )
            return 128 + stopped[0]
    if run.rank == 0:
        print(
            f"model={loaded.name} solver={solver!r} steps={args.steps} timesteps={args.timesteps} "
            f"seeds={len(seeds)} ranks={run.world_size} device={device} dtype={args.dtype}"
            f"{_describe_labels(labels, guidance)}"
        )
        print(
            f"wrote {run.written} shard(s), {run.samples} samples, in {run.seconds:.3f}s "
            f"({run.samples_per_second:.1f} images/s); {run.skipped} shard(s) were already there; "
            f"{run.skipped + run.written} of {run.shards} shards in {args.outdir}"
        )
        print(f"pack them with: diffode pack {shlex.quote(args.outdir)} --out samples.npz")
    return 0


def _pack(args: argparse.Namespace) -> int:
    """Check a shard folder and pack it into one .npz in seed order (and PNGs)."""
    _output(args, "--out", (".npz",))
    if args.png and Path(args.png).is_dir() and any(Path(args.png).iterdir()) and not args.overwrite:
        raise UsageError(f"--png {args.png} is not empty; pass --overwrite to write into it")
    packed = distributed.pack(args.outdir, args.out, png=args.png or None)
    shape = "×".join(map(str, packed.shape))
    print(f"packed {packed.count} samples ({packed.dtype} {shape}) from {args.outdir} into {args.out}")
    if args.png:
        print(f"wrote {packed.pngs} PNG files to {args.png}")
    return 0


def _train(args: argparse.Namespace) -> int:
    """Train an ε-network with the DDPM objective and write a checkpoint folder."""
    from diffode.train import TrainConfig, train

    if args.label_dropout is not None and not args.conditional:
        raise UsageError("--label-dropout applies to conditional training only; add --conditional or drop it")
    model: dict[str, object] = {}
    if args.channels:
        model["channels"] = _int_list("--channels", args.channels)
    if args.hidden is not None:
        model["hidden"] = args.hidden
    config = TrainConfig(
        dataset=args.dataset,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        ema_decay=args.ema_decay,
        seed=args.seed,
        model=model,
        checkpoint_every=args.checkpoint_every,
        conditional=args.conditional,
        **({} if args.label_dropout is None else {"label_dropout": args.label_dropout}),
    )
    result = train(
        config,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        command=args.command_line,
        device=resolve_device(args.device),
        progress=not args.no_progress,
    )
    # the loss is logged as means over windows of 100 steps from the start; the last may be shorter
    window = (config.steps - 1) % 100 + 1
    print(
        f"trained {config.architecture} on {config.dataset}: {config.steps} steps in {result.seconds:.1f}s; "
        f"train loss (last {window} steps) {result.losses[-1]:.4f}, "
        f"test loss {result.test_loss:.4f}"
    )
    print(f"wrote {args.out}")
    return 0


def _train_classifier(args: argparse.Namespace) -> int:
    """Train the digits classifier behind the Fréchet distance and write it with its statistics."""
    from diffode.metrics import frechet_distance
    from diffode.train import train_classifier

    result = train_classifier(
        args.out,
        steps=args.steps,
        seed=args.seed,
        overwrite=args.overwrite,
        command=args.command_line,
        progress=not args.no_progress,
    )
    floor = frechet_distance(result.test_stats, result.train_stats)
    print(
        f"test accuracy {result.test_accuracy:.4f}; real-data floor (test vs train) FD={floor:.3f}; "
        f"{result.seconds:.1f}s"
    )
    print(f"wrote {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Digits Fréchet distance of an .npz of uint8 NHWC samples (arr_0)."""
    from diffode.images import from_uint8
    from diffode.pretrained import digits_fd, real_floor

    path = Path(args.samples)
    if path.suffix.lower() != ".npz" or not path.is_file():
        raise UsageError(
            f"samples must be an existing .npz file (uint8 NHWC under arr_0), got {args.samples!r}"
        )
    array = read_npz_array(path)
    if array.ndim != 4 or tuple(array.shape[1:]) != (8, 8, 1) or array.shape[0] < 2:
        raise UsageError(f"{path}: need at least 2 grey 8×8 images (n, 8, 8, 1), got shape {array.shape}")
    try:
        images = from_uint8(array)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{path}: {err}") from None
    fd = digits_fd(images, args.reference)
    print(f"digits FD={fd:.3f} (n={images.shape[0]}, reference={args.reference} split)")
    print(f"real-data floor at n = 297: test split vs train split (1500) FD={real_floor():.3f}")
    n = images.shape[0]
    if n != 297:
        # the estimate's bias falls as 1/n: 10 real test digits score about 2000
        print(f"note: FD depends on n (biased upwards as n shrinks); compare sets of equal size (n={n})")
    return 0


def _add_label_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--label",
        default=None,
        help=f"class-conditional models: the class of every {what} (7), or classes assigned to the "
        f"{what}s in order and cycled (0-9, 1,3,5)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance weight w >= 0 with --label (1: conditional model; default: none)",
    )


def _labels_and_guidance(
    args: argparse.Namespace, loaded: LoadedModel
) -> tuple[list[int] | None, float | None]:
    """``--label`` and ``--guidance`` checked against the model (one-line errors, exit 2)."""
    labels = runs.parse_labels(args.label, loaded)
    guidance = runs.check_guidance(args.guidance, labels)
    if guidance is not None and getattr(loaded.model, "null_condition", None) is None:
        # the Python API takes the unconditional input as uncond=; the CLI has no such option
        raise UsageError(
            f"--guidance needs the model's unconditional input (a null_condition() method), and "
            f"{loaded.name} has none; sample with --label alone, or guide with diffode.sample(..., uncond=)"
        )
    return labels, guidance


def _describe_labels(labels: list[int] | None, guidance: float | None) -> str:
    """`` label=… guidance=…`` for the report line, or nothing for unconditional runs."""
    if labels is None:
        return ""
    shown = ",".join(map(str, labels[:10])) + (",…" if len(labels) > 10 else "")
    return f" label={shown}" + ("" if guidance is None else f" guidance={guidance:g}")


def _conditioning(labels: Tensor | None, guidance: float | None, device: torch.device) -> dict[str, Any]:
    """The ``cond=``/``guidance=`` keyword arguments of ``encode``/``decode`` for ``labels``
    (int64 ``(n,)``); none without labels, so unconditional runs call them exactly as before."""
    if labels is None:
        return {}
    return {"cond": labels.to(device), "guidance": guidance}


def _model_and_grid(
    args: argparse.Namespace,
) -> tuple[LoadedModel, dict[str, Any], torch.device, torch.dtype]:
    """The model of ``--model/--device/--dtype``, the keyword arguments that fix the grid and
    solver of ``encode``/``decode`` (deterministic solvers only), the device and the dtype."""
    solver = _solver_from_args(args)
    if solver.stochastic:
        raise UsageError(
            f"--solver {args.solver} is stochastic; encoding and decoding need a deterministic solver"
        )
    device, dtype = resolve_device(args.device), _DTYPES[args.dtype]
    loaded = load_model(args.model, device, dtype)
    grid = {
        "steps": args.steps,
        "timesteps": args.timesteps,
        "solver": solver,
        "prediction": loaded.prediction,
    }
    return loaded, grid, device, dtype


def _encode(args: argparse.Namespace) -> int:
    """Encode images to latents by integrating the ODE backwards; report the round trip."""
    from diffode.encoding import Encoding, decode, encode

    _output(args, "--out", (".npz",))
    if args.recon:
        _output(args, "--recon")
        if Path(args.recon).resolve() == Path(args.out).resolve():
            raise UsageError(f"--recon and --out name the same file {args.out!r}")
    if args.method == "reverse" and (args.tol is not None or args.max_iter is not None):
        raise UsageError("--tol and --max-iter set the iteration of --method exact; drop them or add it")
    loaded, grid, device, dtype = _model_and_grid(args)
    _check_picture(args.recon, loaded.sample_shape, "--recon")
    solver = grid["solver"]
    labels, guidance = _labels_and_guidance(args, loaded)
    x0 = load_images(args.images, loaded.sample_shape).to(device, dtype)

    def encoded(images: Tensor, image_labels: Tensor | None) -> Encoding:
        return encode(
            loaded.model,
            loaded.schedule,
            images,
            method=args.method,
            tol=args.tol,
            max_iter=args.max_iter,
            return_info=True,
            **grid,
            **_conditioning(image_labels, guidance, device),
        )

    start = time.perf_counter()
    # an adaptive solver controls its error over its whole batch: one image at a time, as sample
    # does, so that an image's latents do not depend on the other images in the files; one label
    # per image, in order and cycled, and decoding uses the same conditioning
    infos = runs.in_batches(
        encoded, x0, runs.batch_limit(solver, len(x0)), runs.cycle_labels(labels, len(x0))
    )
    wall = time.perf_counter() - start
    # the Encoding fixes the grid, solver and BDIA's companion: decoding retraces the encoding
    back = torch.cat([decode(loaded.model, loaded.schedule, part) for part in infos])
    nfe = sum(part.nfe for part in infos)
    cost = sum(part.evaluations_per_step * len(part.latents) for part in infos) / len(x0)
    error = float((back.double() - x0.double()).pow(2).mean())
    # stored as computed (float16 and bfloat16 widened to float32, which is exact): float64 latents
    # rounded to float32 no longer reproduce the round trip printed below (4e-7 against 3e-15)
    stored = torch.promote_types(dtype, torch.float32)
    z = torch.cat([part.latents for part in infos]).detach().cpu().to(stored)
    print(
        f"encoded {len(x0)} image(s) with {solver!r}, method={args.method}, steps={args.steps}"
        f"{_describe_labels(labels, guidance)}: NFE={nfe} wall={wall:.3f}s"
    )
    print(f"latents: mean={float(z.mean()):.4f} std={float(z.std()):.4f} (N(0, I) for data the model knows)")
    print(f"round trip decode(encode(x)): mean squared error per dimension {error:.3g}")
    worst = float((back.double() - x0.double()).abs().max())
    print(
        f"round trip max abs error {worst:.3g}; encoding cost {cost:.2f} network "
        "evaluations per image and step"
    )
    arrays = {"latents": z.numpy()}
    companions = [part.companion for part in infos if part.companion is not None]
    if companions:
        arrays["companion"] = torch.cat(companions).detach().cpu().to(stored).numpy()
    runs.write_arrays(args.out, **arrays)
    print(f"wrote {args.out}")
    if args.recon:
        write_samples(args.recon, torch.cat([x0.float().cpu(), back.detach().float().cpu()]), columns=len(x0))
        print(f"wrote {args.recon} (top: input, bottom: decoded)")
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    """Decode slerp (or lerp) in-betweens of the latents of two seeds or two images."""
    from diffode.encoding import decode, encode
    from diffode.interpolation import interpolate

    _output(args, "--out")
    loaded, grid, device, dtype = _model_and_grid(args)
    _check_picture(args.out, loaded.sample_shape, "--out")
    runs.check_memory(args.frames, loaded.sample_shape, "frames")
    labels, guidance = _labels_and_guidance(args, loaded)
    # one label per frame, in order and cycled; the two ends are encoded with their frames' labels
    frame_labels = runs.cycle_labels(labels, args.frames)
    ends = None if frame_labels is None else frame_labels[[0, -1]]
    solver = grid["solver"]
    if args.seeds is not None:
        seeds = parse_seeds(args.seeds)
        if len(seeds) != 2:
            raise UsageError(f"--seeds must name exactly two seeds, such as 3,7; got {args.seeds!r}")
        z = torch.stack([runs.seed_noise(seed, loaded.sample_shape)[0] for seed in seeds]).to(device, dtype)
        source = f"seeds {seeds[0]} and {seeds[1]}"
    else:
        # file by file, so that the report names the files the two images came from
        parts = [(name, load_images([name], loaded.sample_shape)) for name in args.images]
        images = torch.cat([part for _, part in parts]).to(device, dtype)
        if len(images) != 2:
            raise UsageError(f"--images must hold exactly two images, got {len(images)}")
        # one image at a time for adaptive solvers (see _encode)
        z = torch.cat(
            runs.in_batches(
                lambda part, y: encode(
                    loaded.model, loaded.schedule, part, **grid, **_conditioning(y, guidance, device)
                ),
                images,
                runs.batch_limit(solver, 2),
                ends,
            )
        )
        given = [name for name, part in parts for _ in range(len(part))]
        source = (
            f"the encodings of the two images of {given[0]}"
            if len(parts) == 1
            else f"the encodings of {given[0]} and {given[1]}"
        )
    weights = torch.linspace(0, 1, args.frames, dtype=torch.float64)
    start = time.perf_counter()
    path = interpolate(z[:1], z[1:], weights, args.method)[:, 0]
    x = runs.decode_in_batches(
        lambda latents, y: decode(
            loaded.model, loaded.schedule, latents, **grid, **_conditioning(y, guidance, device)
        ),
        path,
        runs.batch_limit(solver, args.batch),
        frame_labels,
    )
    wall = time.perf_counter() - start
    print(
        f"{args.method} between {source}{_describe_labels(labels, guidance)}: {args.frames} frames "
        f"decoded with {solver!r} in {wall:.3f}s"
    )
    write_samples(args.out, x, columns=args.frames, scale=args.scale)
    print(f"wrote {args.out}")
    return 0


def _likelihood(args: argparse.Namespace) -> int:
    """Mean bits per dimension (± standard error) of images under the model's probability-flow ODE."""
    from diffode.likelihood import mean_and_stderr, snap

    if bool(args.images) == bool(args.split):
        raise UsageError("pass image files (.npz or .png) or --split train|test, not both or neither")
    device = resolve_device(args.device)
    loaded = load_model(args.model, device, torch.float32)
    if args.split:
        from diffode.data import digits

        if loaded.sample_shape != (1, 8, 8):
            raise UsageError(
                f"--split takes the digits data, for 1×8×8 models; {loaded.name} makes {loaded.sample_shape}"
            )
        images, source = digits(args.split)[0], f"{args.split} split"
        levels = 17 if args.levels is None else args.levels
        # the split is stored on its 17 levels exactly
        slack = 0.0
    else:
        images = load_images(args.images, loaded.sample_shape)
        levels, source = 256 if args.levels is None else args.levels, ", ".join(args.images)
        if levels > 256:
            raise UsageError(f"--levels {levels}: image files hold 8-bit values, at most 256 levels")
        # 8-bit files hold other level counts (17-level digits) to within their rounding, 1/255
        slack = 1.001 / 255
    if levels:
        try:
            images = snap(images, levels, slack=slack)
        except ValueError as err:
            raise UsageError(f"--levels {levels}: {err}; or --levels 0 for a continuous density") from None
    start = time.perf_counter()
    bpd, nfe = runs.likelihood_images(
        loaded,
        images.to(device),
        levels=levels or None,
        batch=args.batch,
        divergence=args.divergence,
        tol=args.tol,
        progress=not args.no_progress,
    )
    mean, stderr = mean_and_stderr(bpd)
    kind = f"{levels} levels, dequantised: an upper bound" if levels else "continuous density"
    print(
        f"model={loaded.name} images={len(images)} ({source}) divergence={args.divergence} "
        f"NFE={nfe} wall={time.perf_counter() - start:.1f}s"
    )
    if len(images) > 1:
        print(f"bits/dim {mean:.4f} ± {stderr:.4f} (standard error; {kind})")
    else:
        # a standard error needs two images; "± 0.0000" would read as certainty
        print(f"bits/dim {mean:.4f} (one image: no standard error; {kind})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffode", description="DDIM sampling as numerical ODE solving.")
    threads = _Parser(add_help=False)
    threads.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default: 1, the fastest for small networks; 0: torch's choice)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser(
        "demo",
        help="sample a 2-D Gaussian mixture through its exact ε model",
        description="Sample the 8-component ring mixture through its exact ε model and report NFE, "
        "wall time and how close the sample statistics are to the data.",
    )
    _add_grid_options(demo, steps=20)
    demo.add_argument(
        "--n", type=_int_in(2, MAX_DEMO_POINTS), default=4000, help="number of samples (default: 4000)"
    )
    demo.add_argument("--seed", type=_SEED, default=0, help="random seed, below 2**32 (default: 0)")
    demo.add_argument("--out", default="gmm.png", help="scatter plot PNG ('' to skip; default: gmm.png)")
    _add_overwrite(demo)
    demo.set_defaults(run=_demo)

    smp = sub.add_parser(
        "sample",
        parents=[threads],
        help="sample digits from the bundled model (or a checkpoint) into a PNG grid or an .npz",
        description="Sample one image per seed from the bundled digits ε-network (or --model) and "
        "write a PNG grid or an .npz of uint8 NHWC images under arr_0. Prints NFE and wall time.",
    )
    smp.add_argument(
        "--model",
        default=None,
        help=_MODEL_HELP,
    )
    _add_grid_options(smp, steps=50)
    smp.add_argument("--sigma-hat", action="store_true", help="with --solver ddim: the paper's σ̂ variant")
    _add_label_options(smp, "seed")
    smp.add_argument(
        "--seeds", default="0-63", help="seeds, one sample each, e.g. 0-63 or 3,7,10-12 (default: 0-63)"
    )
    smp.add_argument(
        "--batch", type=_int_in(1), default=256, help="samples per solve (default: 256; adaptive solvers: 1)"
    )
    smp.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    smp.add_argument(
        "--dtype", default="float32", choices=tuple(_DTYPES), help="model and state dtype (default: float32)"
    )
    target = smp.add_mutually_exclusive_group()
    target.add_argument("--out", default="digits.png", help="output .png grid or .npz (default: digits.png)")
    target.add_argument(
        "--outdir",
        default=None,
        help="a folder of shard files instead (resumable; torchrun -m diffode for several processes)",
    )
    smp.add_argument(
        "--shard-size",
        type=_int_in(1),
        default=distributed.DEFAULT_SHARD_SIZE,
        help=f"with --outdir: seeds per shard file (default: {distributed.DEFAULT_SHARD_SIZE})",
    )
    smp.add_argument(
        "--columns", type=_int_in(0), default=0, help="images per row of the PNG grid (default: square)"
    )
    smp.add_argument(
        "--scale", type=_int_in(1, MAX_SCALE), default=4, help="PNG enlargement factor (default: 4)"
    )
    _add_overwrite(smp)
    smp.add_argument("--no-progress", action="store_true", help="no progress bar")
    smp.set_defaults(run=_sample)

    trn = sub.add_parser(
        "train",
        parents=[threads],
        help="train an ε-network (DDPM objective) and write a checkpoint folder",
        description="Train an ε-network with L_simple, AdamW and EMA on a dataset that needs no "
        "download; writes model.safetensors and config.json (with this command) to --out.",
    )
    trn.add_argument("--dataset", default="digits", choices=DATASETS, help="training data (default: digits)")
    trn.add_argument("--steps", type=int, default=10_000, help="optimiser steps (default: 10000)")
    trn.add_argument("--out", required=True, help="checkpoint folder")
    trn.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    trn.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    trn.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay (default: 0.999)")
    trn.add_argument("--seed", type=_RUN_SEED, default=0, help="random seed, below 2**32 - 1 (default: 0)")
    trn.add_argument("--channels", default="", help="UNet widths per resolution (digits; default 16,32,32)")
    trn.add_argument("--hidden", type=_int_in(1), default=None, help="MLP width (2-D sets; default 128)")
    trn.add_argument(
        "--checkpoint-every", type=int, default=1000, help="steps between checkpoints (0: end only)"
    )
    trn.add_argument(
        "--conditional",
        action="store_true",
        help="train a class-conditional UNet on the labels (digits), with label dropout for guidance",
    )
    trn.add_argument(
        "--label-dropout",
        type=float,
        default=None,
        help="with --conditional: probability of training on the null class (default: 0.1)",
    )
    trn.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
    _add_overwrite(trn, _NEW_RUN)
    trn.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    trn.add_argument("--no-progress", action="store_true", help="no progress bar")
    trn.set_defaults(run=_train)

    cls = sub.add_parser(
        "train-classifier",
        parents=[threads],
        help="train the digits classifier behind the Fréchet distance",
        description="Train the small digits classifier whose features define the digits Fréchet "
        "distance, and write it with the real train/test feature statistics to --out.",
    )
    cls.add_argument("--out", required=True, help="checkpoint folder")
    cls.add_argument("--steps", type=_int_in(1), default=3000, help="optimiser steps (default: 3000)")
    cls.add_argument("--seed", type=_SEED, default=0, help="random seed, below 2**32 (default: 0)")
    _add_overwrite(cls, _NEW_RUN)
    cls.add_argument("--no-progress", action="store_true", help="no progress bar")
    cls.set_defaults(run=_train_classifier)

    evl = sub.add_parser(
        "eval",
        parents=[threads],
        help="digits Fréchet distance of an .npz of samples",
        description="Digits Fréchet distance of uint8 NHWC 8×8 images (arr_0 of an .npz, as written "
        "by 'diffode sample --out x.npz') to the real digits, with the bundled classifier.",
    )
    evl.add_argument("samples", help=".npz file with uint8 images (n, 8, 8, 1) under arr_0")
    evl.add_argument(
        "--reference", default="train", choices=("train", "test"), help="real split (default: train)"
    )
    evl.set_defaults(run=_eval)

    pck = sub.add_parser(
        "pack",
        help="check a folder of shards (sample --outdir) and pack it into one .npz",
        description="Check that every shard of a folder written by 'diffode sample --outdir' is there "
        "and holds what its manifest says (listing the missing seed ranges otherwise), then write one "
        ".npz with the samples in seed order under arr_0 (uint8 NHWC images, as FID tools read them).",
    )
    pck.add_argument("outdir", help="the folder of shards")
    pck.add_argument("--out", required=True, help="output .npz")
    pck.add_argument("--png", default="", help="also write one PNG per seed into this folder")
    _add_overwrite(pck)
    pck.set_defaults(run=_pack)

    def add_model_options(p: argparse.ArgumentParser, timesteps: str | None = "uniform") -> None:
        p.add_argument(
            "--model",
            default=None,
            help=_MODEL_HELP,
        )
        _add_grid_options(p, steps=50, eta=False, timesteps=timesteps)
        p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
        p.add_argument(
            "--dtype",
            default="float32",
            choices=tuple(_DTYPES),
            help="model and state dtype (default: float32)",
        )

    enc = sub.add_parser(
        "encode",
        parents=[threads],
        help="encode images to latents (the ODE run backwards) and report the round trip",
        description="Encode images (.png files, or .npz files of uint8 NHWC images under arr_0) to "
        "latents by integrating the DDIM ODE backwards, decode them again, and report the round-trip "
        "error. Writes the latents (float32, or float64 with --dtype float64, under 'latents'; with "
        "--solver bdia --method exact also the 'companion' state that decoding needs) to an .npz.",
    )
    enc.add_argument("images", nargs="+", help=".png or .npz image files")
    enc.add_argument("--out", default="latents.npz", help="output .npz (default: latents.npz)")
    enc.add_argument(
        "--method",
        default="reverse",
        choices=("reverse", "exact"),
        help="encoding method: reverse integration (DDIM inversion) or exact inversion (default: reverse)",
    )
    enc.add_argument(
        "--tol",
        type=_positive_float,
        default=None,
        help="--method exact: fixed-point tolerance (default: diffode's)",
    )
    enc.add_argument(
        "--max-iter",
        type=_int_in(1),
        default=None,
        help=f"--method exact: fixed-point iterations per step and image (default: {DEFAULT_MAX_ITER})",
    )
    enc.add_argument(
        "--recon", default="", help="also write inputs and reconstructions to this .png (or .npz)"
    )
    _add_overwrite(enc)
    add_model_options(enc, timesteps=None)
    _add_label_options(enc, "image")
    enc.set_defaults(run=_encode)

    itp = sub.add_parser(
        "interpolate",
        parents=[threads],
        help="a strip of in-betweens of two seeds or two images (slerp of their latents)",
        description="Interpolate between the latents of two seeds (their noise) or of two images "
        "(their encodings) and decode each frame; writes a PNG strip or an .npz.",
    )
    ends = itp.add_mutually_exclusive_group(required=True)
    ends.add_argument("--seeds", default=None, help="two seeds, e.g. 3,7")
    ends.add_argument("--images", nargs="+", default=None, help="two images (.png or .npz files)")
    itp.add_argument(
        "--frames",
        type=_int_in(2, MAX_FRAMES),
        default=8,
        help=f"frames including both ends, 2 to {MAX_FRAMES} (default: 8)",
    )
    itp.add_argument(
        "--method", default="slerp", choices=("slerp", "lerp"), help="interpolation (default: slerp)"
    )
    itp.add_argument(
        "--out", default="interpolation.png", help="output .png strip or .npz (default: interpolation.png)"
    )
    itp.add_argument(
        "--scale", type=_int_in(1, MAX_SCALE), default=4, help="PNG enlargement factor (default: 4)"
    )
    itp.add_argument("--batch", type=_int_in(1), default=256, help="frames per decoding solve (default: 256)")
    _add_overwrite(itp)
    add_model_options(itp)
    _add_label_options(itp, "frame")
    itp.set_defaults(run=_interpolate)

    lik = sub.add_parser(
        "likelihood",
        parents=[threads],
        help="bits per dimension of images under the model (the ODE as a normalising flow)",
        description="Integrate the probability-flow ODE with its log-density from the data (t = 0) to "
        "the N(0, I) prior and print the mean bits per dimension with its standard error. Quantised "
        "data is dequantised uniformly within its level (an upper bound on the discrete bpd).",
    )
    lik.add_argument("images", nargs="*", help=".npz (uint8 NHWC under arr_0) or .png image files")
    lik.add_argument("--split", default=None, choices=("train", "test"), help="the digits data instead")
    lik.add_argument(
        "--model",
        default=None,
        help="digits (bundled), a diffode checkpoint or diffusers folder (default: digits)",
    )
    lik.add_argument(
        "--levels",
        type=_levels,
        default=None,
        help="quantisation levels in [-1, 1], at least 2 (default: 17 with --split, 256 for files; "
        "0: continuous)",
    )
    lik.add_argument(
        "--divergence", default="exact", choices=("exact", "hutchinson"), help="default: exact (D products)"
    )
    lik.add_argument(
        "--tol", type=_positive_float, default=None, help="rtol = atol of dopri5, > 0 (default: 1e-5)"
    )
    lik.add_argument("--batch", type=_int_in(1), default=64, help="images per solve (default: 64)")
    lik.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    lik.add_argument("--no-progress", action="store_true", help="no progress bar")
    lik.set_defaults(run=_likelihood)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        args.command_line = shlex.join(["diffode", *argv])
        if getattr(args, "threads", 0) < 0:
            raise UsageError(f"--threads must be >= 0 (0: torch's choice), got {args.threads}")
        if getattr(args, "threads", 0):
            torch.set_num_threads(args.threads)
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    # OSError: a file that cannot be read or written (missing, unreadable, disk full, ulimit -f)
    except (UsageError, ValueError, TypeError, ImportError, OSError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"diffode: error: {message}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        # the allocators' errors (a --hidden of 1e8 asks for 40 GB); any other RuntimeError is a
        # defect, whose traceback is wanted
        memory = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, RuntimeError) and not any(
            phrase in memory for phrase in ("can't allocate memory", "out of memory", "Out of memory")
        ):
            raise
        print(
            f"diffode: error: out of memory ({memory}); use a smaller model, --batch or --shard-size",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        # outputs are written atomically: an interrupted command leaves no partial file
        print(
            "diffode: interrupted; no file was left half-written (train: --resume continues from the "
            "last checkpoint; sample --outdir: run it again to resume)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
