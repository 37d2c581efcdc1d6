"""Training: an ε-network with the DDPM objective (Ho et al., 2020, "L_simple"), and the digits
classifier behind the Fréchet distance (:func:`train_classifier`).

Each DDPM step draws a batch x₀ of training data, integer times t uniform in 0 … T-1 and noise
ε, forms x_t = √ᾱ_t x₀ + √(1-ᾱ_t) ε and minimises ‖ε_θ(x_t, t) - ε‖² with AdamW (linear warm-up,
cosine decay: torch's ``LinearLR`` then ``CosineAnnealingLR``). An exponential moving average
(EMA, torch's ``AveragedModel``) of the weights is what gets saved and sampled. All randomness
(initial weights, batches, times, noise) comes from ``seed``, so a config reproduces its run on
the same hardware and thread count.

A conditional run (``TrainConfig(conditional=True)``, a labelled dataset) trains
ε_θ(x_t, t, y) on the true labels y, each replaced by the null class with probability
``label_dropout`` (Ho & Salimans, 2022), so one network learns both the conditional and the
unconditional prediction that classifier-free guidance combines.

Runs resume: every checkpoint also writes ``training_state.safetensors`` (raw and EMA weights,
optimiser and learning-rate scheduler state, the random generator that orders the data, the
losses so far), and ``train(config, out, resume=True)`` continues from it to the same weights
an uninterrupted run reaches.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from diffode.checkpoint import (
    FEATURES,
    TRAINING_STATE,
    TrainingState,
    check_fields,
    load_training_state,
    prepare_run_folder,
    read_config,
    remove_foreign,
    save_checkpoint,
    save_training_state,
    schedule_from_checkpoint_config,
)
from diffode.data import DATASETS, LABELLED, digits, load_dataset, load_labels
from diffode.metrics import FeatureStats, digits_features, frechet_distance, save_feature_stats
from diffode.models import DigitsClassifier, build_model
from diffode.runs import MAX_OUTPUT_BYTES
from diffode.schedule import Schedule
from diffode.validation import SEED_LIMIT, require_bool, require_int, require_nonnegative, require_positive

_DEFAULT_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "image": ("unet", {"in_channels": 1, "channels": [16, 32, 32], "emb_dim": 64, "image_size": 8}),
    "points": ("mlp", {"dim": 2, "hidden": 128, "depth": 3, "emb_dim": 64}),
}


def _linear_schedule() -> dict[str, Any]:
    return {"name": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02}


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved verbatim in the checkpoint's config).

    Attributes:
        dataset: one of :data:`diffode.data.DATASETS`.
        steps: optimiser steps in total (a resumed run stops at the same total).
        batch_size: training examples per step.
        lr: peak AdamW learning rate (reached after ``warmup`` steps, then cosine decay to 0).
        weight_decay: AdamW weight decay.
        ema_decay: decay of the weight average that is saved (warmed up as (1+k)/(10+k)).
        warmup: linear learning-rate warm-up steps (at most a fifth of ``steps``, so that short
            runs reach the peak rate).
        seed: seeds the initial weights and every random draw of the run.
        schedule: the noise schedule, as for :func:`diffode.checkpoint.schedule_from_checkpoint_config`.
        architecture: ``"unet"`` or ``"mlp"``; empty for the dataset's default.
        model: constructor arguments; empty for the dataset's default.
        n_points: size of the generated training set for the 2-D datasets.
        checkpoint_every: write a checkpoint every this many steps (and at the end); 0: only at the end.
        conditional: train a class-conditional UNet on a labelled dataset (see
            :data:`diffode.data.LABELLED`); its ``model`` gets ``num_classes`` by default.
        label_dropout: for conditional runs, the probability that a training label is replaced
            by the null class (what classifier-free guidance needs).
    """

    dataset: str = "digits"
    steps: int = 10_000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    warmup: int = 200
    seed: int = 0
    schedule: dict[str, Any] = field(default_factory=_linear_schedule)
    architecture: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    n_points: int = 10_000
    checkpoint_every: int = 1000
    conditional: bool = False
    label_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        # the checked values are kept as Python numbers (NumPy's from a sweep included): the
        # config is saved as JSON in every checkpoint
        self.steps = require_int("steps", self.steps, low=1)
        self.batch_size = require_int("batch_size", self.batch_size, low=1)
        self.lr = require_positive("lr", self.lr)
        self.weight_decay = require_nonnegative("weight_decay", self.weight_decay)
        self.ema_decay = require_nonnegative("ema_decay", self.ema_decay)
        if not self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        self.warmup = require_int("warmup", self.warmup, low=0)
        # the run's test split and test loss use seed + 1, which must be a seed too
        self.seed = require_int("seed", self.seed, low=0, high=SEED_LIMIT - 2)
        self.n_points = require_int("n_points", self.n_points, low=1)
        self.checkpoint_every = require_int("checkpoint_every", self.checkpoint_every, low=0)
        require_bool("conditional", self.conditional)
        self.label_dropout = require_nonnegative("label_dropout", self.label_dropout)
        if not self.label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout}")
        if not self.architecture:
            kind = "image" if self.dataset == "digits" else "points"
            self.architecture, defaults = _DEFAULT_MODELS[kind]
            self.model = {**defaults, **self.model}
        if self.conditional:
            if self.dataset not in LABELLED:
                raise ValueError(
                    f"conditional training needs a labelled dataset ({', '.join(LABELLED)}), got "
                    f"dataset={self.dataset!r}; drop --conditional or choose a labelled dataset"
                )
            if self.architecture != "unet":
                raise ValueError(
                    f"conditional training needs architecture 'unet' (it has the class embedding), "
                    f"got {self.architecture!r}"
                )
            self.model = {"num_classes": LABELLED[self.dataset], **self.model}
        elif self.model.get("num_classes"):
            raise ValueError(
                f"model num_classes={self.model['num_classes']!r} makes a conditional network; pass "
                "conditional=True (--conditional) to train it on labels"
            )
        # a nested value JSON cannot hold (a NumPy number in model options) would otherwise fail
        # at the first save, after the training work
        for name in ("schedule", "model"):
            try:
                json.dumps(getattr(self, name))
            except (TypeError, ValueError):
                raise TypeError(
                    f"{name} must be built from Python numbers, strings, lists and dicts (it is saved "
                    f"as JSON), got {getattr(self, name)!r}; convert NumPy values with .item()"
                ) from None


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the EMA network, in eval mode with frozen parameters, ready for ``diffode.sample``.
        schedule: the schedule it was trained with.
        losses: mean training loss of each block of ``log_every`` steps.
        test_loss: L_simple of the EMA network on the test split (fixed draws; see :func:`eval_loss`).
        seconds: wall time of the run.
    """

    model: nn.Module
    schedule: Schedule
    losses: list[float]
    test_loss: float
    seconds: float


def ddpm_loss(
    model: nn.Module,
    schedule: Schedule,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    labels: Tensor | None = None,
) -> Tensor:
    """L_simple: mean of (ε_θ(√ᾱ_t x₀ + √(1-ᾱ_t) ε, t) - ε)² over the batch; t int64 ``(batch,)``.
    ``labels`` (int64 ``(batch,)``), for a conditional network, are passed as ``class_labels``."""
    ab = schedule.alphas_cumprod.to(x0.device)[t].to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    cond = {} if labels is None else {"class_labels": labels}
    return (model(x_t, t.to(x0.dtype), **cond) - noise).pow(2).mean()


def eval_loss(
    model: nn.Module,
    schedule: Schedule,
    data: Tensor,
    *,
    repeats: int = 4,
    seed: int = 1,
    labels: Tensor | None = None,
) -> float:
    """L_simple on ``data`` with fixed draws of (t, ε) (``repeats`` per example, from ``seed``), so
    that two models, or one model before and after training, are compared on identical terms.
    ``labels`` (int64 ``(n,)``): the data's classes, for a conditional network."""
    generator = torch.Generator().manual_seed(seed)
    x0 = data.repeat(repeats, *([1] * (data.ndim - 1)))
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    device = next(model.parameters()).device
    y = None if labels is None else labels.repeat(repeats).to(device)
    return float(ddpm_loss(model, schedule, x0.to(device), t.to(device), noise.to(device), y).detach())


def _optimizer(
    params: Iterable[nn.Parameter], *, lr: float, weight_decay: float, steps: int, warmup: int
) -> tuple[torch.optim.AdamW, LRScheduler]:
    """AdamW with the learning rate ramped linearly from lr/warmup to lr over ``warmup`` steps,
    then cosine-decayed to 0 at ``steps`` (no ramp when ``warmup`` is 0)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    cosine = CosineAnnealingLR(optimizer, T_max=max(steps - warmup, 1))
    if warmup == 0:
        return optimizer, cosine
    # step k of the ramp has factor (k+1)/warmup, so the peak is reached at step warmup-1
    ramp = LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1)
    return optimizer, SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


def _step(optimizer: torch.optim.Optimizer, scheduler: LRScheduler, loss: Tensor) -> None:
    """One optimiser step on ``loss`` and one learning-rate scheduler step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()


def _ema(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s parameters, started at its current weights.

    The decay is warmed up as min(decay, (1+k)/(10+k)) at step k, so early averages are not
    dominated by the random initial weights.
    """

    def average(averaged: Tensor, current: Tensor, num_averaged: Tensor | int) -> Tensor:
        # num_averaged counts the updates so far; the first update (the initial weights) is a copy
        k = float(num_averaged) - 1
        return torch.lerp(averaged, current, 1 - min(decay, (1 + k) / (10 + k)))

    ema = AveragedModel(model, avg_fn=average)
    ema.update_parameters(model)
    return ema.requires_grad_(False)


def _resumable_fields(config: TrainConfig) -> dict[str, Any]:
    """The config fields a resumed run must share with the run it continues."""
    return {f.name: getattr(config, f.name) for f in fields(config) if f.name != "checkpoint_every"}


def _differing_fields(config: TrainConfig, saved: dict[str, Any]) -> list[str]:
    """The resumable fields of ``config`` that differ from a run's ``saved`` config."""
    # compared as stored: JSON turns the tuples of a config (channels=(16, 32)) into lists
    given = json.loads(json.dumps(_resumable_fields(config)))
    # a field added since the run started (conditional, label_dropout) had its default then
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    return [k for k in given if saved.get(k, defaults.get(k)) != given[k]]


def _check_resumable(config: TrainConfig, saved: dict[str, Any], where: Path) -> None:
    differ = _differing_fields(config, saved)
    if differ:
        given = json.loads(json.dumps(_resumable_fields(config)))
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, given {given[k]!r}" for k in differ)
        raise ValueError(
            f"cannot resume {where}: the run was started with other settings ({details}); pass the "
            "settings of the original run, or --overwrite to start a new one"
        )


def train(
    config: TrainConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    command: str = "",
    device: str | torch.device = "cpu",
    progress: bool = True,
    log_every: int = 100,
) -> TrainResult:
    """Train an ε-network as described by ``config``; checkpoint it to ``out`` when given.

    The checkpoint (see :mod:`diffode.checkpoint`) holds the EMA weights and a config with the
    architecture, schedule, the whole ``config``, the step reached, the recent training loss,
    the test loss, the ``command`` that started the run, torch's version and thread count; and
    the training state that ``resume`` continues from.

    Args:
        resume: continue the run checkpointed in ``out`` (same ``config``; ``config.steps`` is
            the total) instead of starting one.
        overwrite: start a new run in ``out`` even if it holds a checkpoint or other files.

    Raises:
        ValueError: ``config.model`` does not fit ``config.architecture``; ``out`` is empty, a file,
            or a folder that holds a checkpoint or other files (without ``resume`` or
            ``overwrite``); ``resume`` without a checkpoint to continue, or with a config that
            differs from the checkpointed run's. Nothing is created in ``out`` then.
    """
    require_int("log_every", log_every, low=1)
    require_bool("resume", resume)
    if resume and out is None:
        raise ValueError(
            "resume=True continues the run checkpointed in out, but out is None; pass the run's folder"
        )
    # the network and the schedule first (they are cheap): a config they refuse leaves no output
    # folder behind
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.architecture, config.model).to(device)
    schedule = schedule_from_checkpoint_config(config.schedule)
    data = load_dataset(config.dataset, split="train", n=config.n_points, seed=config.seed)
    test = load_dataset(config.dataset, split="test", n=min(config.n_points, 2000), seed=config.seed)
    # a model that does not make samples of the data's shape would train on, or fail mid-run,
    # and its checkpoint would sample another shape than its config records
    shape = tuple(getattr(model, "sample_shape", data.shape[1:]))
    if shape != tuple(data.shape[1:]):
        raise ValueError(
            f"the {config.architecture} model makes samples of shape {shape}, but {config.dataset} holds "
            f"{tuple(data.shape[1:])}; choose an architecture and model options that fit the dataset"
        )
    batch_bytes = config.batch_size * math.prod(data.shape[1:]) * 4
    if batch_bytes > MAX_OUTPUT_BYTES:
        raise ValueError(
            f"batch_size={config.batch_size} samples of shape {tuple(data.shape[1:])} need "
            f"{batch_bytes / 2**30:.1f} GiB a batch before the network's activations; lower batch_size "
            "(CLI --batch-size)"
        )
    folder = prepare_run_folder(out, resume=resume, overwrite=overwrite) if out is not None else None
    labels = load_labels(config.dataset, split="train").to(device) if config.conditional else None
    test_labels = load_labels(config.dataset, split="test") if config.conditional else None
    ema = _ema(model, config.ema_decay)
    optimizer, scheduler = _optimizer(
        model.parameters(),
        lr=config.lr,
        weight_decay=config.weight_decay,
        steps=config.steps,
        warmup=min(config.warmup, config.steps // 5),
    )
    generator = torch.Generator().manual_seed(config.seed)
    data_dev = data.to(device)
    losses: list[float] = []
    recent: list[Tensor] = []
    first, seconds_before = 0, 0.0
    if resume and folder is not None:
        state = load_training_state(folder, device=device)
        required: dict[str, type | tuple[type, ...]] = {
            "config": dict,
            "seconds": (int, float),
            "losses": list,
            "recent": list,
        }
        check_fields(state.info, required, folder / TRAINING_STATE)
        _check_resumable(config, state.info["config"], folder)
        try:
            state.restore(model=model, ema=ema, optimizer=optimizer, scheduler=scheduler, generator=generator)
        except (KeyError, TypeError, RuntimeError) as err:  # fields check_fields does not reach
            raise ValueError(
                f"{folder / TRAINING_STATE}: the training state is damaged ({type(err).__name__}: {err}); "
                "start the run again with --overwrite"
            ) from None
        first, seconds_before = state.info["step"], state.info["seconds"]
        losses = list(state.info["losses"])
        recent = [torch.tensor(v, device=device) for v in state.info["recent"]]
    start = time.perf_counter()

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - start

    def check_finite(step: int) -> None:
        """Refuse to go on (or to save) once the loss is no longer finite: the weights are then
        garbage, and a model that samples NaN must not be written as a result."""
        finite = all(math.isfinite(v) for v in losses[-1:])
        if recent:
            finite = finite and bool(torch.isfinite(torch.stack(recent)).all())
        if not finite:
            raise ValueError(
                f"training diverged: the loss was not finite by step {step}; the checkpoint in the output "
                f"folder (if any) is from before. Lower the learning rate (lr={config.lr:g} now; CLI --lr) "
                "or raise TrainConfig.warmup (the CLI warms up over min(200, steps/5) steps)"
            )

    def checkpoint(step: int) -> None:
        check_finite(step)
        if folder is None:
            return
        # the training state first: it alone is read on resume, and each file is replaced
        # atomically, so a kill between the writes leaves a consistent state to resume from
        save_training_state(
            folder,
            TrainingState.capture(
                model=model,
                ema=ema,
                optimizer=optimizer,
                scheduler=scheduler,
                generator=generator,
                info={
                    "step": step,
                    "seconds": elapsed(),
                    "losses": losses,
                    "recent": [float(v) for v in recent],
                    "config": _resumable_fields(config),
                },
            ),
        )
        info = {
            "prediction": "epsilon",
            "schedule": config.schedule,
            "dataset": config.dataset,
            "sample_shape": list(data.shape[1:]),
            "step": step,
            "train_loss": losses[-1] if losses else None,
            "test_loss": eval_loss(
                ema.module, schedule, test.to(device), seed=config.seed + 1, labels=test_labels
            ),
            "training": asdict(config),
            "command": command,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "seconds": round(elapsed(), 1),
        }
        save_checkpoint(folder, ema.module, info)
        remove_foreign(folder, FEATURES)

    model.train()
    steps = range(first, config.steps)
    for step in tqdm(steps, desc="train", disable=not progress, initial=first, total=config.steps):
        index = torch.randint(0, data.shape[0], (config.batch_size,), generator=generator)
        t = torch.randint(0, schedule.T, (config.batch_size,), generator=generator)
        noise = torch.randn((config.batch_size, *data.shape[1:]), generator=generator)
        y = None
        if labels is not None:
            # drawn after the unconditional run's draws, from the same generator, so resuming
            # restores them too; a dropped label becomes the null class num_classes
            drop = torch.rand(config.batch_size, generator=generator) < config.label_dropout
            y = torch.where(drop.to(device), config.model["num_classes"], labels[index.to(device)])
        loss = ddpm_loss(model, schedule, data_dev[index.to(device)], t.to(device), noise.to(device), y)
        _step(optimizer, scheduler, loss)
        ema.update_parameters(model)
        recent.append(loss.detach())
        if len(recent) == log_every or step == config.steps - 1:
            losses.append(float(torch.stack(recent).mean()))
            recent.clear()
            check_finite(step + 1)
        done = step + 1
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
            checkpoint(done)
    # a run stopped between the final training state and the model's files resumes at its end:
    # the model is written then if the folder's config.json is behind the training state
    if first < config.steps or not resume or not _saved_final(folder, config):
        checkpoint(config.steps)
    trained = ema.module.eval()
    return TrainResult(
        model=trained,
        schedule=schedule,
        losses=losses,
        test_loss=eval_loss(trained, schedule, test.to(device), seed=config.seed + 1, labels=test_labels),
        seconds=elapsed(),
    )


def _saved_final(folder: Path | None, config: TrainConfig) -> bool:
    """Whether ``folder``'s config.json is this run's final one: its step and its training
    config, not only its step (a config left by an earlier run in the folder, beside this run's
    weights after a kill between the two files, may have the same step)."""
    if folder is None:
        return False
    try:
        saved = read_config(folder)
    except (OSError, ValueError):
        return False
    training = saved.get("training")
    return (
        saved.get("step") == config.steps
        and isinstance(training, dict)
        and not _differing_fields(config, training)
    )


# ----------------------------------------------------------------------------- the digits classifier


def _shift(x: Tensor, generator: torch.Generator) -> Tensor:
    """Translate each image by -1, 0 or +1 pixel in each direction, filling with background (-1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy = torch.randint(0, 3, (n,), generator=generator)
    dx = torch.randint(0, 3, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


@dataclass
class ClassifierResult:
    """What :func:`train_classifier` returns: the classifier (eval mode), its test accuracy,
    the real-data feature statistics of both splits, and the wall time."""

    classifier: DigitsClassifier
    test_accuracy: float
    train_stats: FeatureStats
    test_stats: FeatureStats
    seconds: float


def train_classifier(
    out: str | Path | None = None,
    *,
    steps: int = 3000,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    overwrite: bool = False,
    command: str = "",
    progress: bool = True,
) -> ClassifierResult:
    """Train the digits classifier on the train split (cross-entropy, AdamW with cosine decay,
    random ±1-pixel shifts), seeded; with ``out``, write it as a checkpoint folder plus
    ``features.safetensors`` holding the real feature statistics (see
    :func:`diffode.metrics.save_feature_stats`, splits train and test). Needs scikit-learn.

    ``out`` is checked before training, as by :func:`train`: it must be a missing or empty
    folder, or ``overwrite`` must be given; ``ValueError`` otherwise, and for ``steps`` or
    ``batch_size`` below 1 or a learning rate that is not a finite number > 0."""
    require_int("steps", steps, low=1)
    require_int("batch_size", batch_size, low=1)
    require_positive("lr", lr)
    require_int("seed", seed, low=0, high=SEED_LIMIT - 1)
    folder = (
        prepare_run_folder(out, resume=False, overwrite=overwrite, resumable=False)
        if out is not None
        else None
    )
    start = time.perf_counter()
    x_train, y_train = digits("train")
    x_test, y_test = digits("test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitsClassifier()
    optimizer, scheduler = _optimizer(net.parameters(), lr=lr, weight_decay=1e-4, steps=steps, warmup=0)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in tqdm(range(steps), desc="train-classifier", disable=not progress):
        index = torch.randint(0, x_train.shape[0], (batch_size,), generator=generator)
        _step(optimizer, scheduler, F.cross_entropy(net(_shift(x_train[index], generator)), y_train[index]))
    net.eval().requires_grad_(False)
    if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
        raise ValueError(
            f"training the classifier diverged (its weights are not finite after {steps} steps); lower "
            f"the learning rate (lr={lr:g} now; CLI --lr)"
        )
    accuracy = float((net(x_test).argmax(1) == y_test).double().mean())
    train_stats = FeatureStats.of(digits_features(x_train, net))
    test_stats = FeatureStats.of(digits_features(x_test, net))
    if folder is not None:
        info = {
            "dataset": "digits",
            "test_accuracy": accuracy,
            "training": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed},
            "feature_stats": {"train": train_stats.n, "test": test_stats.n},
            "floor_test_vs_train": frechet_distance(test_stats, train_stats),
            "command": command,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        save_checkpoint(folder, net, info)
        save_feature_stats(folder / FEATURES, {"train": train_stats, "test": test_stats})
        remove_foreign(folder, TRAINING_STATE)
    return ClassifierResult(net, accuracy, train_stats, test_stats, time.perf_counter() - start)
