"""The digits Fréchet distance: FID's recipe on scikit-learn's 8×8 digits.

Features are the penultimate-layer activations of a small digits classifier that diffode trains
(:func:`train_classifier`, command ``diffode train-classifier``) and ships with its feature
statistics on the real train and test splits. The distance between two sets is the Fréchet
distance between Gaussian fits of their features (Heusel et al., 2017):

    FD = ‖μ₁ - μ₂‖² + Tr(C₁ + C₂ - 2 (C₁^{1/2} C₂ C₁^{1/2})^{1/2})

computed in float64 through symmetric eigendecompositions, which stay real and stable where a
general matrix square root of C₁C₂ picks up imaginary round-off. Like FID, the estimate is
biased upwards for small sets; compare numbers computed from equally many samples.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from diffode.checkpoint import load_tensors, save_checkpoint, save_tensors
from diffode.data import digits
from diffode.models import DigitsClassifier
from tqdm import tqdm

_F64 = torch.float64


@dataclass(frozen=True)
class FeatureStats:
    """Mean ``(D,)`` and covariance ``(D, D)`` (float64) of ``n`` feature vectors."""

    mean: Tensor
    cov: Tensor
    n: int

    @classmethod
    def of(cls, features: Tensor) -> FeatureStats:
        """Statistics of features ``(n, D)``, n ≥ 2 (unbiased covariance)."""
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"features must have shape (n >= 2, D), got {tuple(features.shape)}")
        f = features.detach().to("cpu", _F64)
        return cls(mean=f.mean(0), cov=torch.cov(f.T), n=int(f.shape[0]))


def _sym_sqrt(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between the Gaussians N(a.mean, a.cov) and N(b.mean, b.cov), ≥ 0."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature dimensions differ: {tuple(a.mean.shape)} vs {tuple(b.mean.shape)}")
    root = _sym_sqrt(a.cov)
    middle = root @ b.cov @ root
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (a.mean - b.mean).pow(2).sum() + torch.trace(a.cov) + torch.trace(b.cov) - 2 * cross
    return max(float(value), 0.0)


def digits_features(images: Tensor, classifier: DigitsClassifier | None = None, batch: int = 2000) -> Tensor:
    """Classifier features of digit images ``(n, 1, 8, 8)`` in [-1, 1] (clipped), float64 ``(n, D)``.

    Uses the bundled classifier unless one is given (a float64 CPU copy of it; the argument is
    left as it is); computed in float64 on the CPU so the numbers do not depend on the device or
    batch size.
    """
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        raise ValueError(f"digit images must have shape (n, 1, 8, 8), got {tuple(images.shape)}")
    if classifier is None:
        from diffode.pretrained import digits_classifier

        classifier = digits_classifier()
    net = copy.deepcopy(classifier).to("cpu", _F64)
    x = images.detach().to("cpu", _F64).clamp(-1, 1)
    return torch.cat([net.features(x[i : i + batch]).detach() for i in range(0, x.shape[0], batch)])


def digits_fd(images: Tensor, reference: str = "train") -> float:
    """Digits Fréchet distance of images ``(n, 1, 8, 8)`` in [-1, 1] to the real ``reference``
    split (``"train"``: the data the bundled models were trained on, or ``"test"``), using the
    bundled classifier and the shipped real-data statistics (no scikit-learn needed)."""
    from diffode.pretrained import digits_feature_stats

    return frechet_distance(FeatureStats.of(digits_features(images)), digits_feature_stats(reference))


def real_floor() -> float:
    """The digits Fréchet distance of the real test split (297 images) to the train split (1500):
    the value a perfect generator reaches with 297 samples."""
    from diffode.pretrained import digits_feature_stats

    return frechet_distance(digits_feature_stats("test"), digits_feature_stats("train"))


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
    command: str = "",
    progress: bool = True,
) -> ClassifierResult:
    """Train the digits classifier on the train split (cross-entropy, AdamW with cosine decay,
    random ±1-pixel shifts), seeded; with ``out``, write it as a checkpoint folder plus
    ``features.safetensors`` holding the real feature statistics (``{split}_mean``,
    ``{split}_cov``, ``{split}_n`` for ``split`` in train, test). Needs scikit-learn."""
    start = time.perf_counter()
    x_train, y_train = digits("train")
    x_test, y_test = digits("test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitsClassifier()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in tqdm(range(steps), desc="train-classifier", disable=not progress):
        index = torch.randint(0, x_train.shape[0], (batch_size,), generator=generator)
        loss = F.cross_entropy(net(_shift(x_train[index], generator)), y_train[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    net.eval().requires_grad_(False)
    accuracy = float((net(x_test).argmax(1) == y_test).double().mean())
    train_stats = FeatureStats.of(digits_features(x_train, net))
    test_stats = FeatureStats.of(digits_features(x_test, net))
    if out is not None:
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
        save_checkpoint(out, net, info)
        tensors = {}
        for split, stats in (("train", train_stats), ("test", test_stats)):
            tensors[f"{split}_mean"], tensors[f"{split}_cov"] = stats.mean, stats.cov
            tensors[f"{split}_n"] = torch.tensor([stats.n])
        save_tensors(Path(out) / "features.safetensors", tensors)
    return ClassifierResult(net, accuracy, train_stats, test_stats, time.perf_counter() - start)


def load_feature_stats(path: str | Path, split: str) -> FeatureStats:
    """Feature statistics of ``split`` from a ``features.safetensors`` file written by
    :func:`train_classifier`."""
    tensors = load_tensors(path)
    if f"{split}_mean" not in tensors:
        splits = sorted({k.rsplit("_", 1)[0] for k in tensors})
        raise ValueError(f"split must be one of {splits}, got {split!r}")
    mean, cov = tensors[f"{split}_mean"].to(_F64), tensors[f"{split}_cov"].to(_F64)
    return FeatureStats(mean=mean, cov=cov, n=int(tensors[f"{split}_n"][0]))
