"""Conditioning and classifier-free guidance for network fields.

A conditional network is called as ``model(x, t, **cond)``: the conditioning is a mapping of
tensors with the batch as first dimension (``{"class_labels": labels}``,
``{"encoder_hidden_states": ctx}``), or a bare tensor passed as the keyword the model declares
in its ``cond_keyword`` attribute (the built-in :class:`~diffode.models.UNet` declares
``"class_labels"``). Conditioning follows the samples: a solver that evaluates part of the batch
gets the matching rows (:meth:`Conditioning.rows`).

Classifier-free guidance (Ho & Salimans, 2022) combines the conditional and unconditional
predictions as out_u + w (out_c - out_u). The network's raw outputs are combined: every
parameterisation's ε is an affine function of the output at a given x with the same
coefficients for both calls, and the weights 1 - w and w sum to 1, so combining outputs is
combining ε (and x̂₀). w = 1 is the conditional model, w = 0 the unconditional one.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from diffode.validation import describe, require_bool, require_nonnegative

Cond = Tensor | Mapping[str, Tensor]
"""Conditioning as given by a user: a tensor or a mapping of tensors, batch first."""


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance settings.

    Attributes:
        scale: the guidance weight w ≥ 0 (1: the conditional model, 0: the unconditional one).
        rescale: guidance rescale φ ∈ [0, 1] (Lin et al., 2024, "Common diffusion noise schedules
            and sample steps are flawed", eq. 15-16): the guided output is rescaled to the standard
            deviation of the conditional one, per sample, and mixed in with weight φ. 0: off.
        interval: ``(σ_lo, σ_hi)``: guide only where σ_lo ≤ σ ≤ σ_hi and use the conditional model
            elsewhere (Kynkäänniemi et al., 2024, "Applying guidance in a limited interval
            improves sample and distribution quality"). ``None``: guide everywhere.
        batched: one network call on the doubled batch (2B; default) or two calls of B (less
            memory at the peak).
    """

    scale: float
    rescale: float = 0.0
    interval: tuple[float, float] | None = None
    batched: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", require_nonnegative("guidance", self.scale))
        rescale = require_nonnegative("rescale", self.rescale)
        if rescale > 1:
            raise ValueError(f"rescale must lie in [0, 1], got {rescale}")
        object.__setattr__(self, "rescale", rescale)
        if self.interval is not None:
            try:
                lo, hi = (float(v) for v in self.interval)
            except (TypeError, ValueError):
                raise TypeError(
                    f"interval must be a pair (sigma_lo, sigma_hi) of numbers, got {describe(self.interval)}"
                ) from None
            if not 0 <= lo <= hi:
                raise ValueError(
                    f"interval must be (sigma_lo, sigma_hi), 0 <= sigma_lo <= sigma_hi, got {self.interval}"
                )
            object.__setattr__(self, "interval", (lo, hi))
        require_bool("batched", self.batched)


def as_guidance(guidance: float | Guidance | None) -> Guidance | None:
    """A front door's ``guidance`` argument (a weight, a :class:`Guidance` or ``None``) as settings."""
    if guidance is None or isinstance(guidance, Guidance):
        return guidance
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real):
        raise TypeError(f"guidance must be a number w >= 0 or a diffode.Guidance, got {describe(guidance)}")
    return Guidance(float(guidance))


def _keyword_arguments(name: str, cond: Cond, model: object) -> dict[str, Tensor]:
    """``cond`` as the keyword arguments of the network call."""
    if isinstance(cond, Tensor):
        keyword = getattr(model, "cond_keyword", None)
        if not isinstance(keyword, str):
            raise TypeError(
                f"{name} is a bare tensor, but the model declares no cond_keyword to pass it as; pass a "
                f"mapping instead, e.g. {name}={{'class_labels': labels}}"
            )
        cond = {keyword: cond}
    if not isinstance(cond, Mapping) or not cond:
        raise TypeError(f"{name} must be a tensor or a non-empty mapping of tensors, got {describe(cond)}")
    for key, value in cond.items():
        if not isinstance(key, str) or not isinstance(value, Tensor) or value.ndim == 0:
            raise TypeError(
                f"{name} must be tensors with the batch as first dimension (one row per sample), keyed by "
                f"keyword name; got {key!r}: {describe(value)}"
            )
    return dict(cond)


@dataclass(frozen=True)
class Conditioning:
    """The per-sample inputs of a network call besides the state and the time, with guidance.

    Built by :meth:`build`; fields hold one and call the network through :meth:`call`.

    Attributes:
        cond: keyword arguments of the conditional call, each ``(batch, ...)``.
        uncond: keyword arguments of the unconditional call (same keys), with guidance only.
        guidance: the guidance settings, or ``None`` for a plain conditional call.
    """

    cond: dict[str, Tensor]
    uncond: dict[str, Tensor] | None = None
    guidance: Guidance | None = None

    @classmethod
    def build(
        cls,
        model: object,
        cond: Cond | None,
        guidance: float | Guidance | None = None,
        uncond: Cond | None = None,
    ) -> Conditioning | None:
        """Check and combine a front door's ``cond``, ``guidance`` and ``uncond`` arguments.

        Without ``uncond``, guidance takes the model's own unconditional input from its
        ``null_condition(cond)`` method (the built-in conditional UNet's null label); a model
        without one raises ``ValueError`` asking for ``uncond``. Returns ``None`` when nothing
        is conditional.
        """
        settings = as_guidance(guidance)
        if cond is None:
            if settings is not None or uncond is not None:
                raise ValueError("guidance and uncond need a conditional model: pass cond= as well")
            return None
        kwargs = _keyword_arguments("cond", cond, model)
        batch = {v.shape[0] for v in kwargs.values()}
        if len(batch) != 1:
            raise ValueError(f"every cond tensor must have the same batch size, got sizes {sorted(batch)}")
        # a model may check its inputs' values here, once, rather than at every call (where, on a
        # GPU, reading them would wait for the device at every step)
        check = getattr(model, "check_condition", None)
        if callable(check):
            check(kwargs)
        if settings is None:
            if uncond is not None:
                raise ValueError(
                    "uncond is used only with guidance; pass guidance=w as well, or leave uncond out"
                )
            return cls(kwargs)
        if uncond is None:
            null = getattr(model, "null_condition", None)
            if not callable(null):
                raise ValueError(
                    "guidance needs the unconditional input: this model has no null_condition(); pass "
                    "uncond= in the form of cond (e.g. the embeddings of the empty prompt)"
                )
            uncond = null(kwargs)
        un = _keyword_arguments("uncond", uncond, model)
        if set(un) != set(kwargs):
            raise ValueError(f"uncond must have the keys of cond, {sorted(kwargs)}, got {sorted(un)}")
        for key, value in un.items():
            if value.shape != kwargs[key].shape:
                raise ValueError(
                    f"uncond[{key!r}] must have the shape of cond[{key!r}], {tuple(kwargs[key].shape)}, got "
                    f"{tuple(value.shape)}"
                )
        if callable(check):
            check(un)
        return cls(kwargs, un, settings)

    @property
    def batch(self) -> int:
        return next(iter(self.cond.values())).shape[0]

    def tensors(self) -> list[Tensor]:
        """The conditional and unconditional inputs, in keyword order (what a gradient with respect
        to the conditioning reaches)."""
        return [*self.cond.values(), *(self.uncond or {}).values()]

    def rows(self, index: Tensor) -> Conditioning:
        """The conditioning of the batch rows ``index`` (1-D int64)."""

        def take(kwargs: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.index_select(0, index.to(v.device)) for k, v in kwargs.items()}

        return replace(self, cond=take(self.cond), uncond=None if self.uncond is None else take(self.uncond))

    def call(
        self, network: Callable[..., Tensor], x: Tensor, scalar: Tensor, sigma: float | Tensor
    ) -> Tensor:
        """The (guided) network output for input ``x`` and per-sample time ``scalar`` at noise
        level ``sigma`` (for the guidance interval), shape of ``x``."""
        if x.shape[0] != self.batch:
            raise ValueError(
                f"the conditioning has batch size {self.batch} but the state has {x.shape[0]}; give cond "
                "(and uncond) one row per sample"
            )
        settings = self.guidance
        if settings is None or self.uncond is None or not _inside(settings, sigma):
            return network(x, scalar, **self.cond)
        if settings.batched:
            both = {k: torch.cat([self.uncond[k], v]) for k, v in self.cond.items()}
            out_u, out_c = network(torch.cat([x, x]), torch.cat([scalar, scalar]), **both).chunk(2)
        else:
            out_u, out_c = network(x, scalar, **self.uncond), network(x, scalar, **self.cond)
        guided = out_u + settings.scale * (out_c - out_u)
        if settings.rescale > 0:
            # per sample (a (batch,) state has one element per sample: std over no dimension would
            # pool the batch), population standard deviations (one element gives 0, not NaN); where
            # the guided output is constant there is no spread to match and it stays as it is
            shape = (x.shape[0], *([1] * (x.ndim - 1)))
            spread = guided.reshape(x.shape[0], -1).std(dim=1, correction=0).reshape(shape)
            target = out_c.reshape(x.shape[0], -1).std(dim=1, correction=0).reshape(shape)
            ratio = torch.where(spread > 0, target / spread, torch.ones_like(spread))
            guided = settings.rescale * (guided * ratio) + (1 - settings.rescale) * guided
        if settings.interval is not None and isinstance(sigma, Tensor) and sigma.ndim > 0:
            lo, hi = settings.interval
            inside = ((sigma >= lo) & (sigma <= hi)).to(x.device).reshape(-1, *([1] * (x.ndim - 1)))
            return torch.where(inside, guided, out_c)
        return guided


def _inside(settings: Guidance, sigma: float | Tensor) -> bool:
    """Whether a scalar σ lies in the guidance interval (per-sample σ is masked after the call)."""
    if settings.interval is None or (isinstance(sigma, Tensor) and sigma.ndim > 0):
        return True
    lo, hi = settings.interval
    return lo <= float(sigma.detach() if isinstance(sigma, Tensor) else sigma) <= hi


__all__ = ["Cond", "Conditioning", "Guidance", "as_guidance"]
