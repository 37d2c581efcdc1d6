"""Training an ε-network with the DDPM objective (Ho et al., 2020, "L_simple").

Each step draws a batch x₀ of training data, integer times t uniform in 0 … T-1 and noise ε,
forms x_t = √ᾱ_t x₀ + √(1-ᾱ_t) ε and minimises ‖ε_θ(x_t, t) - ε‖² with AdamW (linear warm-up,
cosine decay). An exponential moving average (EMA) of the weights is what gets saved and
sampled. All randomness (initial weights, batches, times, noise) comes from ``seed``, so a
config reproduces its run on the same hardware and thread count.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffode.checkpoint import save_checkpoint, schedule_from_config
from diffode.data import DATASETS, load_dataset
from diffode.models import build_model
from tqdm import tqdm
from diffode.schedule import Schedule
from diffode.validation import require_int, require_nonnegative, require_positive

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
        steps: optimiser steps.
        batch_size: training examples per step.
        lr: peak AdamW learning rate (reached after ``warmup`` steps, then cosine decay to 0).
        weight_decay: AdamW weight decay.
        ema_decay: decay of the weight average that is saved (warmed up as (1+k)/(10+k)).
        warmup: linear learning-rate warm-up steps (at most a fifth of ``steps``, so that short
            runs reach the peak rate).
        seed: seeds the initial weights and every random draw of the run.
        schedule: the noise schedule, as for :func:`diffode.checkpoint.schedule_from_config`.
        architecture: ``"unet"`` or ``"mlp"``; empty for the dataset's default.
        model: constructor arguments; empty for the dataset's default.
        n_points: size of the generated training set for the 2-D datasets.
        checkpoint_every: write a checkpoint every this many steps (and at the end); 0: only at the end.
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

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        require_int("steps", self.steps, low=1)
        require_int("batch_size", self.batch_size, low=1)
        require_positive("lr", self.lr)
        require_nonnegative("weight_decay", self.weight_decay)
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        require_int("warmup", self.warmup, low=0)
        require_int("seed", self.seed, low=0)
        require_int("n_points", self.n_points, low=1)
        require_int("checkpoint_every", self.checkpoint_every, low=0)
        if not self.architecture:
            kind = "image" if self.dataset == "digits" else "points"
            self.architecture, defaults = _DEFAULT_MODELS[kind]
            self.model = {**defaults, **self.model}


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


def ddpm_loss(model: nn.Module, schedule: Schedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """L_simple: mean of (ε_θ(√ᾱ_t x₀ + √(1-ᾱ_t) ε, t) - ε)² over the batch; t int64 ``(batch,)``."""
    ab = schedule.alphas_cumprod.to(x0.device)[t].to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    return (model(x_t, t.to(x0.dtype)) - noise).pow(2).mean()


def eval_loss(
    model: nn.Module, schedule: Schedule, data: Tensor, *, repeats: int = 4, seed: int = 1
) -> float:
    """L_simple on ``data`` with fixed draws of (t, ε) (``repeats`` per example, from ``seed``), so
    that two models, or one model before and after training, are compared on identical terms."""
    generator = torch.Generator().manual_seed(seed)
    x0 = data.repeat(repeats, *([1] * (data.ndim - 1)))
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    device = next(model.parameters()).device
    return float(ddpm_loss(model, schedule, x0.to(device), t.to(device), noise.to(device)).detach())


def _lr_factor(config: TrainConfig) -> Callable[[int], float]:
    warmup = min(config.warmup, config.steps // 5)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(config.steps - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def train(
    config: TrainConfig,
    out: str | Path | None = None,
    *,
    command: str = "",
    device: str | torch.device = "cpu",
    progress: bool = True,
    log_every: int = 100,
) -> TrainResult:
    """Train an ε-network as described by ``config``; checkpoint it to ``out`` when given.

    The checkpoint (see :mod:`diffode.checkpoint`) holds the EMA weights and a config with the
    architecture, schedule, the whole ``config``, the step reached, the recent training loss,
    the test loss, the ``command`` that started the run, torch's version and thread count.
    """
    schedule = schedule_from_config(config.schedule)
    data = load_dataset(config.dataset, split="train", n=config.n_points, seed=config.seed)
    test = load_dataset(config.dataset, split="test", n=min(config.n_points, 2000), seed=config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.architecture, config.model).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    generator = torch.Generator().manual_seed(config.seed)
    data_dev = data.to(device)
    losses: list[float] = []
    recent: list[Tensor] = []
    start = time.perf_counter()

    def checkpoint(step: int) -> None:
        if out is None:
            return
        info = {
            "prediction": "epsilon",
            "schedule": config.schedule,
            "dataset": config.dataset,
            "sample_shape": list(data.shape[1:]),
            "step": step,
            "train_loss": losses[-1] if losses else None,
            "test_loss": eval_loss(ema, schedule, test.to(device), seed=config.seed + 1),
            "training": asdict(config),
            "command": command,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "seconds": round(time.perf_counter() - start, 1),
        }
        save_checkpoint(out, ema, info)

    model.train()
    for step in tqdm(range(config.steps), desc="train", disable=not progress):
        index = torch.randint(0, data.shape[0], (config.batch_size,), generator=generator)
        t = torch.randint(0, schedule.T, (config.batch_size,), generator=generator)
        noise = torch.randn((config.batch_size, *data.shape[1:]), generator=generator)
        loss = ddpm_loss(model, schedule, data_dev[index.to(device)], t.to(device), noise.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p.detach(), 1 - decay)
        recent.append(loss.detach())
        if len(recent) == log_every or step == config.steps - 1:
            losses.append(float(torch.stack(recent).mean()))
            recent.clear()
        done = step + 1
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
            checkpoint(done)
    checkpoint(config.steps)
    ema.eval()
    return TrainResult(
        model=ema,
        schedule=schedule,
        losses=losses,
        test_loss=eval_loss(ema, schedule, test.to(device), seed=config.seed + 1),
        seconds=time.perf_counter() - start,
    )
