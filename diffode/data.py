"""Training data that needs no download: scikit-learn's bundled 8×8 digits and generated 2-D sets.

Every loader returns float32 tensors: images ``(n, 1, 8, 8)`` scaled to [-1, 1], points
``(n, 2)`` at unit scale (the scale DDPM schedules assume). Splits and draws are fixed by seeds,
so a dataset name and a seed identify the data exactly.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from diffode.oracles import GaussianMixture
from diffode.validation import SEED_LIMIT, require_int, require_nonnegative

DATASETS = ("digits", "gmm", "moons", "swissroll")
DIGITS_TRAIN = 1500
"""Size of the digits train split; the other 297 of scikit-learn's 1797 images are the test split."""
DIGITS_SPLIT_SEED = 0
_SPLITS = ("train", "test", "all")


def digits(split: str = "train") -> tuple[Tensor, Tensor]:
    """scikit-learn's 1797 bundled 8×8 digits as ``(images, labels)``.

    Images are float32 ``(n, 1, 8, 8)``, the 17 grey levels 0 … 16 mapped linearly to [-1, 1];
    labels int64 ``(n,)``. The split is a fixed permutation (``torch.randperm`` with seed 0):
    the first 1500 images are ``"train"``, the remaining 297 ``"test"``; ``"all"`` is the
    unpermuted set. Needs scikit-learn (``pip install "diffode[train]"``); the data ships with
    it, nothing is downloaded.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    images, labels = (v.clone() for v in _all_digits())
    if split == "all":
        return images, labels
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    index = order[:DIGITS_TRAIN] if split == "train" else order[DIGITS_TRAIN:]
    return images[index], labels[index]


@lru_cache(maxsize=1)
def _all_digits() -> tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            'the digits dataset needs scikit-learn; install it with pip install "diffode[train]"'
        ) from None
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    return images, torch.as_tensor(bunch.target, dtype=torch.int64)


LABELLED = {"digits": 10}
"""Datasets with class labels, and their number of classes (for conditional training)."""


def load_labels(name: str, *, split: str = "train") -> Tensor:
    """The class labels (int64 ``(n,)``, in 0 … ``LABELLED[name]`` - 1) of a labelled dataset's
    ``split``, in the order of :func:`load_dataset`'s images."""
    if name not in LABELLED:
        raise ValueError(
            f"dataset {name!r} has no class labels; conditional training needs one of {', '.join(LABELLED)}"
        )
    return digits(split)[1]


def gmm(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points of the 8-component ring mixture (:meth:`diffode.oracles.GaussianMixture.ring`:
    radius 2, component std 0.15), float32 ``(n, 2)``; its exact ε is known."""
    require_int("n", n, low=1)
    return GaussianMixture.ring().sample(n, generator).float()


def moons(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> Tensor:
    """Two interleaving half circles (as scikit-learn's ``make_moons``), centred at the origin,
    with Gaussian noise of std ``noise``; float32 ``(n, 2)``, half the points on each moon."""
    require_int("n", n, low=1)
    noise = require_nonnegative("noise", noise)
    upper = n - n // 2
    angle = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    outer = torch.stack([torch.cos(angle[:upper]), torch.sin(angle[:upper])], dim=1)
    inner = torch.stack([1 - torch.cos(angle[upper:]), 0.5 - torch.sin(angle[upper:])], dim=1)
    points = torch.cat([outer, inner]) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    points = points + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return points.float()


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> Tensor:
    """A 2-D swiss roll: θ uniform in [1.5π, 4.5π], points θ(cos θ, sin θ)/7 (radius ≤ 4.5π/7 ≈ 2.02) plus
    Gaussian noise of std ``noise``; float32 ``(n, 2)``."""
    require_int("n", n, low=1)
    noise = require_nonnegative("noise", noise)
    theta = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator, dtype=torch.float64))
    points = theta[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1) / 7.0
    points = points + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return points.float()


_POINT_SETS = {"gmm": gmm, "moons": moons, "swissroll": swiss_roll}


def load_dataset(name: str, *, split: str = "train", n: int = 10_000, seed: int = 0) -> Tensor:
    """The training data of a named dataset (one of :data:`DATASETS`).

    ``"digits"`` returns the fixed split (``n`` and ``seed`` do not apply). The 2-D sets return
    ``n`` points drawn with ``torch.Generator().manual_seed(seed)`` for ``"train"`` and
    ``seed + 1`` for ``"test"``.
    """
    if name == "digits":
        return digits(split)[0]
    if name not in _POINT_SETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' for {name!r}, got {split!r}")
    # the test split uses seed + 1, which must stay below the limit too
    seed = require_int("seed", seed, low=0, high=SEED_LIMIT - 2)
    generator = torch.Generator().manual_seed(seed + (split == "test"))
    return _POINT_SETS[name](n, generator)
