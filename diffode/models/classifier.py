"""A small CNN classifier for 8×8 digits whose penultimate layer serves as the feature space of
the digits Fréchet distance (:mod:`diffode.metrics`), the role Inception-v3 plays for FID."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from diffode.models.embedding import check_input, size_argument


class DigitsClassifier(nn.Module):
    """conv 3×3 (8×8) → conv 3×3 stride 2 (4×4) → linear to ``features`` → linear to 10 classes.

    Args:
        width: channels of the first convolution (the second has twice as many).
        features: width of the penultimate layer, the feature vector of :meth:`features`.
        image_size: side of the square grey input images ``(batch, 1, image_size, image_size)``.

    Inputs are float images in [-1, 1]; computation runs in the module's dtype.
    """

    def __init__(self, width: int = 32, features: int = 64, image_size: int = 8) -> None:
        super().__init__()
        width = size_argument("width", width)
        features = size_argument("features", features)
        image_size = size_argument("image_size", image_size)
        self.width, self.n_features, self.image_size = width, features, image_size
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        side = (image_size + 1) // 2
        self.fc = nn.Linear(2 * width * side * side, features)
        self.head = nn.Linear(features, 10)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable) that rebuild this architecture."""
        return {"width": self.width, "features": self.n_features, "image_size": self.image_size}

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer activations, ``(batch, features)``."""
        side = self.image_size
        check_input(x, f"1, {side}, {side}", x.ndim == 4 and tuple(x.shape[1:]) == (1, side, side))
        h = F.silu(self.conv1(x.to(self.conv1.weight.dtype)))
        h = F.silu(self.conv2(h))
        return F.silu(self.fc(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, ``(batch, 10)``."""
        return self.head(self.features(x))
