"""The Fréchet distance maths: FID's recipe, applied to scikit-learn's 8×8 digits.

Features are the penultimate-layer activations of a digits classifier
(:func:`diffode.train.train_classifier`, command ``diffode train-classifier``). This module
holds only the maths and file reading; the bundled classifier, its shipped feature statistics
and the digits distance built on them live in :mod:`diffode.pretrained`. The distance between
two sets is the Fréchet distance between Gaussian fits of their features (Heusel et al., 2017):

    FD = ‖μ₁ - μ₂‖² + Tr(C₁ + C₂ - 2 (C₁^{1/2} C₂ C₁^{1/2})^{1/2})

computed in float64 through symmetric eigendecompositions, which stay real and stable where a
general matrix square root of C₁C₂ picks up imaginary round-off. Like FID, the estimate is
biased upwards for small sets; compare numbers computed from equally many samples.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from diffode.checkpoint import load_tensors, save_tensors
from diffode.models import DigitsClassifier
from diffode.validation import require_finite, require_int

_F64 = torch.float64


@dataclass(frozen=True)
class FeatureStats:
    """Mean ``(D,)`` and covariance ``(D, D)`` (float64) of ``n`` feature vectors."""

    mean: Tensor
    cov: Tensor
    n: int

    def __post_init__(self) -> None:
        # built by hand or read from a file: float64 on the CPU, and a covariance that is one
        # (a negative one made the distance's clamp at 0 return 0 in silence)
        require_int("n", self.n, low=2)
        # the round-off of the dtype the covariance was computed in (float32 features' eigenvalues
        # come out a few units below 0)
        given = self.cov.dtype if self.cov.is_floating_point() else _F64
        slack = max(1e-9, 64 * torch.finfo(given).eps)
        mean = self.mean.detach().to("cpu", _F64)
        cov = self.cov.detach().to("cpu", _F64)
        d = mean.shape[0] if mean.ndim == 1 else -1
        if d < 1 or tuple(cov.shape) != (d, d):
            raise ValueError(
                f"FeatureStats needs a mean (D,) and a covariance (D, D), got {tuple(mean.shape)} and "
                f"{tuple(cov.shape)}"
            )
        if bool(torch.isfinite(cov).all()):
            scale = float(cov.diagonal().abs().sum()) + torch.finfo(_F64).tiny
            asymmetry = float((cov - cov.T).abs().max())
            if asymmetry > slack * scale:
                raise ValueError(
                    f"FeatureStats covariance must be symmetric, got a largest |C - Cᵀ| of {asymmetry:.3g} "
                    f"(trace {scale:.3g}); pass (C + C.T) / 2"
                )
            lowest = float(torch.linalg.eigvalsh(cov).min())
            if lowest < -slack * scale:
                raise ValueError(
                    f"FeatureStats covariance must be positive semi-definite, got an eigenvalue of "
                    f"{lowest:.3g} (trace {scale:.3g}); compute it with FeatureStats.of(features)"
                )
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", cov)

    @classmethod
    def of(cls, features: Tensor) -> FeatureStats:
        """Statistics of features ``(n, D)``, n ≥ 2 (unbiased covariance)."""
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"features must have shape (n >= 2, D), got {tuple(features.shape)}")
        require_finite("features", features)
        f = features.detach().to("cpu", _F64)
        # torch.cov gives a 0-d tensor for one feature
        d = f.shape[1]
        return cls(mean=f.mean(0), cov=torch.cov(f.T).reshape(d, d), n=int(f.shape[0]))


def _sym_sqrt(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between the Gaussians N(a.mean, a.cov) and N(b.mean, b.cov), ≥ 0."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature dimensions differ: {tuple(a.mean.shape)} vs {tuple(b.mean.shape)}")
    for name, stats in (("a", a), ("b", b)):
        if not (bool(torch.isfinite(stats.mean).all()) and bool(torch.isfinite(stats.cov).all())):
            raise ValueError(f"{name} has a non-finite mean or covariance; compute it from finite features")
    root = _sym_sqrt(a.cov)
    middle = root @ b.cov @ root
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (a.mean - b.mean).pow(2).sum() + torch.trace(a.cov) + torch.trace(b.cov) - 2 * cross
    return max(float(value), 0.0)


def digits_features(images: Tensor, classifier: DigitsClassifier, batch: int = 2000) -> Tensor:
    """Classifier features of digit images ``(n, 1, 8, 8)`` in [-1, 1] (clipped), float64 ``(n, D)``.

    Computed with a float64 CPU copy of ``classifier`` (the argument is left as it is), so the
    numbers do not depend on the device or batch size. The bundled classifier is
    :func:`diffode.pretrained.digits_classifier`.
    """
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        raise ValueError(f"digit images must have shape (n, 1, 8, 8), got {tuple(images.shape)}")
    if not images.is_floating_point():
        # uint8 pixels (0 … 255) were clipped to [-1, 1] and scored (FD 3273 for the test split)
        raise TypeError(
            f"digit images must be floats in [-1, 1], got dtype {images.dtype}; map uint8 pixels p "
            "with p / 127.5 - 1 (diffode.images.from_uint8)"
        )
    require_int("batch", batch, low=1)
    net = copy.deepcopy(classifier).to("cpu", _F64)
    x = images.detach().to("cpu", _F64).clamp(-1, 1)
    return torch.cat([net.features(x[i : i + batch]).detach() for i in range(0, x.shape[0], batch)])


def save_feature_stats(path: str | Path, stats: dict[str, FeatureStats]) -> None:
    """Write feature statistics by split name to a safetensors file (``{split}_mean`` ``(D,)``,
    ``{split}_cov`` ``(D, D)`` float64, ``{split}_n`` int64 ``(1,)``)."""
    tensors = {}
    for split, s in stats.items():
        tensors[f"{split}_mean"], tensors[f"{split}_cov"] = s.mean, s.cov
        tensors[f"{split}_n"] = torch.tensor([s.n])
    save_tensors(path, tensors)


def load_feature_stats(path: str | Path, split: str) -> FeatureStats:
    """Feature statistics of ``split`` from a file written by :func:`save_feature_stats`."""
    tensors = load_tensors(path)
    if f"{split}_mean" not in tensors:
        splits = sorted({k.rsplit("_", 1)[0] for k in tensors})
        raise ValueError(f"split must be one of {splits}, got {split!r}")
    missing = [k for k in (f"{split}_cov", f"{split}_n") if k not in tensors]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)}: not a file written by save_feature_stats")
    mean, cov = tensors[f"{split}_mean"].to(_F64), tensors[f"{split}_cov"].to(_F64)
    return FeatureStats(mean=mean, cov=cov, n=int(tensors[f"{split}_n"][0]))
