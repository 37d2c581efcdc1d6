"""Models that ship with diffode, trained on the CPU by the project's own commands.

- ``digits/``: an ε-network (:class:`~diffode.models.UNet`) for scikit-learn's 8×8 digits,
  trained by ``diffode train``; :func:`digits` loads it with its schedule.
- ``digits_cond/``: the class-conditional version (``num_classes=10``, a null class for
  classifier-free guidance), trained by ``diffode train --conditional``; :func:`digits_conditional`
  loads it.
- ``digits_classifier/``: the classifier whose features define the digits Fréchet distance
  (:func:`digits_fd`, the maths in :mod:`diffode.metrics`), trained by ``diffode
  train-classifier``, with the real-data feature statistics of the train and test splits.

Each folder is a checkpoint (``model.safetensors`` + ``config.json``); the config records the
command, seed and torch version that produced it, so anyone can retrain it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from diffode.checkpoint import FEATURES, load_checkpoint
from diffode.metrics import FeatureStats, digits_features, frechet_distance, load_feature_stats
from diffode.models import DigitsClassifier, UNet
from diffode.schedule import Schedule
from diffode.validation import require_finite

DIGITS = "digits"
DIGITS_CLASSIFIER = "digits_classifier"
DIGITS_CONDITIONAL = "digits_cond"
_NAMES = (DIGITS, DIGITS_CONDITIONAL, DIGITS_CLASSIFIER)


def path(name: str) -> Path:
    """The folder of the bundled checkpoint ``name`` (``"digits"``, ``"digits_cond"`` or
    ``"digits_classifier"``)."""
    if name not in _NAMES:
        raise ValueError(f"unknown bundled model {name!r}; choose one of {', '.join(map(repr, _NAMES))}")
    return Path(str(resources.files(__name__) / name))


def load_unet(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[UNet, Schedule]:
    """The bundled ε-network ``name`` (``"digits"`` or ``"digits_cond"``) and its schedule."""
    checkpoint = load_checkpoint(path(name), device=device, dtype=dtype)
    if not isinstance(checkpoint.model, UNet) or checkpoint.schedule is None:
        raise ValueError(f"{path(name)} does not hold a UNet with a schedule; reinstall diffode")
    return checkpoint.model, checkpoint.schedule


def digits(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[UNet, Schedule]:
    """The bundled digits ε-network (eval mode, frozen) and the schedule it was trained with.

    Sample it with ``diffode.sample(model, schedule, torch.randn(n, 1, 8, 8))``. It was trained
    on images in [-1, 1]; its samples overshoot that range slightly (measured at 20 steps: -1.07
    to 1.18, a fifth of the pixels outside), which the image writers clip.
    """
    return load_unet(DIGITS, device, dtype)


def digits_conditional(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[UNet, Schedule]:
    """The bundled class-conditional digits ε-network (10 classes plus the null class 10; eval
    mode, frozen) and its schedule.

    Sample sevens with guidance 3:
    ``diffode.sample(model, schedule, torch.randn(n, 1, 8, 8), cond=torch.full((n,), 7), guidance=3)``
    (the unconditional half of the guidance is the model's null class); like :func:`digits`,
    trained on images in [-1, 1], whose range its samples overshoot slightly.
    """
    return load_unet(DIGITS_CONDITIONAL, device, dtype)


def digits_classifier() -> DigitsClassifier:
    """The bundled digits classifier (CPU, float32, eval mode, frozen)."""
    model = load_checkpoint(path(DIGITS_CLASSIFIER)).model
    if not isinstance(model, DigitsClassifier):
        raise ValueError(f"{path(DIGITS_CLASSIFIER)} does not hold a DigitsClassifier; reinstall diffode")
    return model


def digits_feature_stats(split: str = "train") -> FeatureStats:
    """Classifier-feature statistics of the real digits ``split`` (``"train"`` or ``"test"``)."""
    return load_feature_stats(path(DIGITS_CLASSIFIER) / FEATURES, split)


def digits_fd(images: Tensor, reference: str = "train") -> float:
    """Digits Fréchet distance of images ``(n, 1, 8, 8)`` in [-1, 1] to the real ``reference``
    split (``"train"``: the data the bundled models were trained on, or ``"test"``), using the
    bundled classifier and the shipped real-data statistics (no scikit-learn needed)."""
    # said of the images, not of the features they become
    if images.ndim == 4 and images.shape[0] < 2:
        raise ValueError(f"digits_fd needs at least 2 images for a covariance, got {images.shape[0]}")
    require_finite("images", images)
    features = digits_features(images, digits_classifier())
    return frechet_distance(FeatureStats.of(features), digits_feature_stats(reference))


def real_floor() -> float:
    """The digits Fréchet distance of the real test split (297 images) to the train split (1500):
    the value a perfect generator reaches with 297 samples."""
    return frechet_distance(digits_feature_stats("test"), digits_feature_stats("train"))
