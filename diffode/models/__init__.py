"""Built-in networks. The ε-networks are called as ``model(x, t)`` with t a float ``(batch,)``
tensor in training-step units: :class:`UNet` for small images, :class:`MLP` for low-dimensional
data. :class:`DigitsClassifier` provides the features of the digits Fréchet distance.

Each model reports its constructor arguments through ``config()`` (the ε-networks also the
shape of one sample through ``sample_shape``); :func:`build_model` rebuilds a model from a name
and such a config, which is how checkpoints are loaded without pickling.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffode.models.classifier import DigitsClassifier
from diffode.models.embedding import TimeEmbedding, sinusoidal_embedding
from diffode.models.mlp import MLP
from diffode.models.unet import UNet

Architecture = UNet | MLP | DigitsClassifier
ARCHITECTURES: dict[str, type[Architecture]] = {
    "unet": UNet,
    "mlp": MLP,
    "digits-classifier": DigitsClassifier,
}


def build_model(architecture: str, config: dict[str, Any]) -> Architecture:
    """A freshly initialised model of the named architecture (a key of :data:`ARCHITECTURES`) from the
    constructor arguments in ``config`` (as returned by the model's ``config()``)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    try:
        return ARCHITECTURES[architecture](**config)
    except TypeError as err:
        raise ValueError(f"config {config!r} does not fit architecture {architecture!r}: {err}") from None


def architecture_name(model: nn.Module) -> str:
    """The registry name of a built-in model instance."""
    for name, cls in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise TypeError(
        f"{type(model).__name__} is not a built-in diffode architecture ({', '.join(ARCHITECTURES)})"
    )


__all__ = [
    "ARCHITECTURES",
    "MLP",
    "DigitsClassifier",
    "TimeEmbedding",
    "UNet",
    "architecture_name",
    "build_model",
    "sinusoidal_embedding",
]
