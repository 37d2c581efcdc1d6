"""A compact ε-prediction UNet for small images (the 8×8 digits and similar)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffode.models.embedding import TimeEmbedding, check_call, size_argument


def _norm(channels: int) -> nn.GroupNorm:
    # 8 groups divide every width this UNet uses by default; fall back to fewer for odd widths
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, plus the time embedding as a per-channel shift, twice, with a skip."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """ε-network ``model(x, t)`` for images of shape ``(batch, in_channels, H, W)``.

    One residual block per resolution on the way down, a middle block, one per resolution on
    the way up (each fed the matching down-path activation by concatenation); strided 3×3
    convolutions downsample, nearest-neighbour upsampling with a 3×3 convolution goes back up.
    With ``channels=(32, 64, 64)`` an 8×8 input passes through 8×8 → 4×4 → 2×2.

    Args:
        in_channels: image channels (1 for the digits).
        channels: width at each resolution; H and W must be divisible by 2^(len(channels) - 1).
        emb_dim: width of the time embedding (even).
        image_size: side of the (square) images; kept in the config so a checkpoint knows the
            shape of the noise it expects.
        num_classes: 0 for an unconditional network (the default; no class parameters at all, so
            unconditional checkpoints load unchanged); otherwise the number of classes of a
            class-conditional one, whose label embedding has one more row, the null class
            (label ``num_classes``), trained by label dropout for classifier-free guidance.

    ``forward(x, t, class_labels=None)`` takes t as a float tensor of shape ``(batch,)`` in
    training-step units and returns ε̂ with x's shape. ``class_labels`` (integer ``(batch,)``, in
    0 … num_classes, num_classes being the null class) is for conditional networks only; ``None``
    means the null class there. Weights and computation use the module's dtype; the output is
    cast back to x's dtype.
    """

    cond_keyword = "class_labels"
    """The keyword a bare conditioning tensor is passed as (see :mod:`diffode.conditioning`)."""

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, ...] | list[int] = (32, 64, 64),
        emb_dim: int = 128,
        image_size: int = 8,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        in_channels = size_argument("in_channels", in_channels)
        image_size = size_argument("image_size", image_size)
        try:
            chans = [size_argument("channels entries", c) for c in channels]
        except ValueError:
            chans = []  # the message below shows the whole list
        if not chans:
            raise ValueError(f"channels must be a non-empty list of positive widths, got {channels!r}")
        factor = 2 ** (len(chans) - 1)
        if image_size % factor:
            raise ValueError(
                f"image_size={image_size} must be divisible by 2^(len(channels)-1) = {factor}; "
                "use fewer levels in channels"
            )
        self.in_channels, self.channels, self.image_size = in_channels, chans, image_size
        self.num_classes = size_argument("num_classes", num_classes, 0, "an integer >= 0 (0: unconditional)")
        self.time = TimeEmbedding(emb_dim)
        # the validated width, a Python int: the config must serialise to JSON
        self.emb_dim = self.time.dim
        self.stem = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, c in enumerate(chans):
            self.down.append(ResBlock(chans[max(i - 1, 0)], c, emb_dim))
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = ResBlock(chans[-1], chans[-1], emb_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(chans))):
            # input: the path's activation (already at width chans[i]) and the matching skip
            self.up.append(ResBlock(2 * chans[i], chans[i], emb_dim))
            if i > 0:
                self.upsample.append(nn.Conv2d(chans[i], chans[i - 1], 3, padding=1))
        self.out_norm = _norm(chans[0])
        self.out = nn.Conv2d(chans[0], in_channels, 3, padding=1)
        # start as the zero predictor so the first loss is E|ε|² = 1 and training starts calmly
        for p in self.out.parameters():
            nn.init.zeros_(p)
        # registered last and only when conditional, so an unconditional UNet has exactly the
        # parameters (and random initialisation) it had before classes existed
        self.label: nn.Embedding | None = None
        if num_classes:
            # added to the time embedding (as diffusers' class-conditional UNet2DModel does);
            # zero at the start, so the first steps train the unconditional network they would
            self.label = nn.Embedding(num_classes + 1, emb_dim)
            nn.init.zeros_(self.label.weight)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable) that rebuild this architecture
        (``num_classes`` only for a conditional network, so unconditional configs are as before)."""
        config: dict[str, Any] = {
            "in_channels": self.in_channels,
            "channels": list(self.channels),
            "emb_dim": self.emb_dim,
            "image_size": self.image_size,
        }
        if self.num_classes:
            config["num_classes"] = self.num_classes
        return config

    @property
    def null_label(self) -> int:
        """The label of the null class (``num_classes``); only for a conditional network."""
        if not self.num_classes:
            raise ValueError("this UNet is unconditional (num_classes=0); it has no null class")
        return self.num_classes

    def null_condition(self, cond: dict[str, Tensor]) -> dict[str, Tensor]:
        """The unconditional input matching ``cond`` (``{"class_labels": (batch,) labels}``): the
        null label for every sample, for classifier-free guidance (:mod:`diffode.conditioning`)."""
        labels = cond.get(self.cond_keyword)
        if labels is None or set(cond) != {self.cond_keyword}:
            raise ValueError(
                f"cond must be {{{self.cond_keyword!r}: labels}} for this UNet, got keys {sorted(cond)}"
            )
        return {self.cond_keyword: torch.full_like(labels, self.null_label)}

    def _label_embedding(
        self, class_labels: Tensor | None, batch: int, device: torch.device
    ) -> Tensor | None:
        """The class embedding ``(batch, emb_dim)`` to add to the time embedding, or ``None``."""
        if self.label is None:
            if class_labels is not None:
                raise ValueError(
                    "class_labels were given, but this UNet is unconditional (num_classes=0); "
                    "drop the labels or load a conditional model"
                )
            return None
        if class_labels is None:
            class_labels = torch.full((batch,), self.num_classes, dtype=torch.int64, device=device)
        if (
            class_labels.dtype.is_floating_point
            or class_labels.dtype.is_complex
            or class_labels.dtype == torch.bool
        ):
            raise TypeError(f"class_labels must be an integer tensor, got dtype {class_labels.dtype}")
        if class_labels.shape != (batch,):
            raise ValueError(
                f"class_labels must have shape (batch,) = ({batch},), got {tuple(class_labels.shape)}"
            )
        # the range check reads the labels: on a GPU that waits for the device at every call, once
        # per sampling step, so there diffode's front doors check them once (check_condition)
        if class_labels.device.type == "cpu":
            self._check_range(class_labels)
        return self.label(class_labels.to(device=device, dtype=torch.int64))

    def check_condition(self, cond: dict[str, Tensor]) -> None:
        """``ValueError`` for class labels outside 0 … ``num_classes`` (the null class); called once
        by :meth:`diffode.conditioning.Conditioning.build` for ``cond`` and ``uncond``, since the
        network itself checks the range only for labels on the CPU."""
        labels = cond.get(self.cond_keyword)
        if isinstance(labels, Tensor) and not labels.is_floating_point() and not labels.is_complex():
            self._check_range(labels)

    def _check_range(self, class_labels: Tensor) -> None:
        if class_labels.numel() and not (
            0 <= int(class_labels.min()) <= int(class_labels.max()) <= self.num_classes
        ):
            raise ValueError(
                f"class_labels must lie in 0 … {self.num_classes} ({self.num_classes}: the null class), "
                f"got values in {int(class_labels.min())} … {int(class_labels.max())}"
            )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample, ``(in_channels, image_size, image_size)``."""
        return (self.in_channels, self.image_size, self.image_size)

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        factor = 2 ** (len(self.channels) - 1)
        fits = x.ndim == 4 and x.shape[1] == self.in_channels
        fits = fits and x.shape[2] % factor == 0 and x.shape[3] % factor == 0
        check_call(x, t, f"{self.in_channels}, H, W", fits, f" with H and W multiples of {factor}")
        dtype = self.stem.weight.dtype
        emb = self.time(t)
        label = self._label_embedding(class_labels, x.shape[0], x.device)
        if label is not None:
            emb = emb + label
        h = self.stem(x.to(dtype))
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h))).to(x.dtype)
