"""A time-conditioned MLP ε-network for low-dimensional data (the 2-D toy sets)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from diffode.models.embedding import TimeEmbedding, check_call, size_argument


class MLP(nn.Module):
    """ε-network ``model(x, t)`` for vectors of shape ``(batch, dim)``.

    Residual blocks ``h + Linear(SiLU(LayerNorm(h) + emb))`` on a hidden width, the time
    embedding added inside each block.

    Args:
        dim: data dimension (2 for the toy sets).
        hidden: hidden width.
        depth: number of residual blocks.
        emb_dim: width of the time embedding (even).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 64) -> None:
        super().__init__()
        dim = size_argument("dim", dim)
        hidden = size_argument("hidden", hidden)
        depth = size_argument("depth", depth)
        self.dim, self.hidden, self.depth = dim, hidden, depth
        self.time = TimeEmbedding(emb_dim)
        self.emb_dim = self.time.dim
        self.inp = nn.Linear(dim, hidden)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(depth))
        self.embs = nn.ModuleList(nn.Linear(emb_dim, hidden) for _ in range(depth))
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        for p in self.out.parameters():
            nn.init.zeros_(p)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable) that rebuild this architecture."""
        return {"dim": self.dim, "hidden": self.hidden, "depth": self.depth, "emb_dim": self.emb_dim}

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample, ``(dim,)``."""
        return (self.dim,)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        check_call(x, t, f"{self.dim}", x.ndim == 2 and x.shape[1] == self.dim)
        dtype = self.inp.weight.dtype
        emb = self.time(t)
        h = self.inp(x.to(dtype))
        for norm, emb_layer, layer in zip(self.norms, self.embs, self.layers, strict=True):
            h = h + layer(F.silu(norm(h) + emb_layer(emb)))
        return self.out(F.silu(h)).to(x.dtype)
