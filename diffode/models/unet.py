"""A compact ε-prediction UNet for small images (the 8×8 digits and similar)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffode.models.embedding import TimeEmbedding


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

    ``forward(x, t)`` takes t as a float tensor of shape ``(batch,)`` in training-step units and
    returns ε̂ with x's shape. Weights and computation use the module's dtype; the output is cast
    back to x's dtype.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, ...] | list[int] = (32, 64, 64),
        emb_dim: int = 128,
        image_size: int = 8,
    ) -> None:
        super().__init__()
        chans = [int(c) for c in channels]
        if not chans or any(c < 1 for c in chans):
            raise ValueError(f"channels must be a non-empty list of positive widths, got {channels!r}")
        factor = 2 ** (len(chans) - 1)
        if image_size % factor:
            raise ValueError(
                f"image_size={image_size} must be divisible by 2^(len(channels)-1) = {factor}; "
                "use fewer levels in channels"
            )
        self.in_channels, self.channels, self.emb_dim, self.image_size = (
            in_channels,
            chans,
            emb_dim,
            image_size,
        )
        self.time = TimeEmbedding(emb_dim)
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

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable) that rebuild this architecture."""
        return {
            "in_channels": self.in_channels,
            "channels": list(self.channels),
            "emb_dim": self.emb_dim,
            "image_size": self.image_size,
        }

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample, ``(in_channels, image_size, image_size)``."""
        return (self.in_channels, self.image_size, self.image_size)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        dtype = self.stem.weight.dtype
        emb = self.time(t)
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
