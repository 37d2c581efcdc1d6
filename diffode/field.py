"""The vector field of the DDIM ODE in σ/x̄ coordinates (reference §3 and §7):

    dx̄/dσ = ε(x̄, σ)

A field is any callable ``f(sigma, xbar) -> Tensor``; the argument order matches torchdiffeq,
so a field can be handed to ``odeint`` as is.

Networks come in several parameterizations. Each one below turns its network's output into the
same pair (ε, x̂₀) with x̂₀ = x̄ - σε, so every solver sees the same ODE whatever the network
predicts. With α = 1/√(1+σ²), s = σ/√(1+σ²) and x = αx̄ (the network's input):

============================  ======================  ==============================
field (``prediction``)        network output          conversion
============================  ======================  ==============================
EpsField (``"epsilon"``)      ε                       x̂₀ = (x - sε)/α
X0Field (``"sample"``)        x̂₀                      ε = (x - αx̂₀)/s
VField (``"v_prediction"``)   v = αε - s x̂₀           ε = s x + αv, x̂₀ = αx - s v
ScoreField (``"score"``)      ∇ₓ log p_t(x)           ε = -s · score
DenoiserField (EDM)           D(x̄; σ) = x̂₀            ε = (x̄ - D)/σ
============================  ======================  ==============================

The prediction names are diffusers' ``prediction_type`` values.
"""

from __future__ import annotations

import copy
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from diffode.conditioning import Cond, Conditioning, Guidance
from diffode.schedule import NoiseSchedule

Sigma = float | Tensor
"""σ as a Python float, a 0-d float tensor, or a ``(batch,)`` tensor (one σ per sample)."""

Model = Callable[[Tensor, Tensor], Tensor]
"""A network called as ``model(x, t)``: x of shape ``(batch, ...)`` in x-space, t a float tensor
of shape ``(batch,)`` in training-step units."""

Coefficient = float | Tensor
"""α or s: a Python float for a scalar σ, else a tensor shaped to broadcast against the state."""


@runtime_checkable
class VectorField(Protocol):
    """Anything callable as ``f(sigma, x) -> dx/dsigma`` with the shape and dtype of ``x``."""

    def __call__(self, sigma: Sigma, x: Tensor, /) -> Tensor: ...


class PredictingField(VectorField, Protocol):
    """A field that also gives its denoised estimate: ``predict(σ, x̄) -> (f(σ, x̄), x̂₀)``, and
    ``predict_x(σ, x)``, the same from the x-space state (the only reading at σ = ∞).

    :func:`diffode.solve` hands every stepper its field in this form (a plain callable gets
    x̂₀ = x̄ - σ f and cannot be read at σ = ∞), so the boundary steps of :mod:`diffode.boundary`
    use a network's own x̂₀.
    """

    def predict(self, sigma: Sigma, x: Tensor, /) -> tuple[Tensor, Tensor]: ...

    def predict_x(self, sigma: Sigma, x: Tensor, /) -> tuple[Tensor, Tensor]: ...

    def rows(self, index: Tensor, /) -> PredictingField:
        """The same field for the batch rows ``index`` only (a 1-D int64 tensor): a solver that
        evaluates part of the batch calls the field this returns, so per-sample conditioning
        follows the rows."""
        ...


def _scalar(sigma: Sigma) -> float:
    """A scalar σ as a Python float; a 0-d tensor may carry a graph (odeint_adjoint
    differentiates with respect to time), which a float does not need."""
    return float(sigma.detach()) if isinstance(sigma, Tensor) else float(sigma)


def signal_and_noise(sigma: Sigma, like: Tensor) -> tuple[Coefficient, Coefficient]:
    """(α, s) = (1/√(1+σ²), σ/√(1+σ²)), with σ = ∞ giving (0, 1).

    A scalar σ gives Python floats (no device traffic); a ``(batch,)`` σ gives tensors in
    ``like``'s dtype and device, shaped ``(batch, 1, ...)`` to broadcast against ``like``.
    """
    if isinstance(sigma, Tensor) and sigma.ndim > 0:
        if sigma.numel() != like.shape[0]:
            raise ValueError(
                f"a per-sample sigma needs one value per sample: shape ({like.shape[0]},) for a state of "
                f"shape {tuple(like.shape)}, got shape {tuple(sigma.shape)}"
            )
        sig = sigma.to(like.device, torch.float64).reshape(-1, *([1] * (like.ndim - 1)))
        # α = 1/√(1+σ²) and s = σα written so that neither overflows for huge σ (σ² = inf) and
        # s reaches its limit 1 at σ = ∞
        inverse = 1 / sig
        alpha = torch.where(sig > 1, inverse * torch.rsqrt(1 + inverse * inverse), torch.rsqrt(1 + sig * sig))
        s = torch.where(sig > 1, torch.rsqrt(1 + inverse * inverse), sig * torch.rsqrt(1 + sig * sig))
        return alpha.to(like.dtype), s.to(like.dtype)
    value = _scalar(sigma)
    if value > 1:
        inverse_f = 1.0 / value
        s_f = 1.0 / math.sqrt(1.0 + inverse_f * inverse_f)
        return inverse_f * s_f, s_f
    alpha_f = 1.0 / math.sqrt(1.0 + value * value)
    return alpha_f, value * alpha_f


def _per_sample(value: float | Tensor, like: Tensor) -> Tensor:
    """A network's scalar input (t or σ) as a ``(batch,)`` tensor: float32, or float64 when
    ``like`` is float64."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    if isinstance(value, Tensor):
        return value.to(like.device, dtype).reshape(-1).expand(like.shape[0])
    return torch.full((like.shape[0],), value, dtype=dtype, device=like.device)


def _parameter_dtype(model: Callable[..., Tensor]) -> torch.dtype | None:
    """The floating dtype of an ``nn.Module``'s first floating parameter or buffer (the dtype it
    computes in), or ``None`` for other callables and parameter-free modules."""
    if isinstance(model, torch.nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
    return None


def _from_eps(eps: Tensor, x: Tensor, alpha: Coefficient, s: Coefficient) -> tuple[Tensor, Tensor]:
    return eps, (x - s * eps) / alpha


def _from_x0(x0: Tensor, x: Tensor, alpha: Coefficient, s: Coefficient) -> tuple[Tensor, Tensor]:
    return (x - alpha * x0) / s, x0


class ModelField(torch.nn.Module, ABC):
    """Base class of the fields of a network: f(σ, x̄) = ε, with x̂₀ = x̄ - σε on request.

    A subclass says how its network is called (:meth:`_run`) and how the output becomes
    (ε, x̂₀) (:meth:`_split`); this class checks the output shape and provides the three ways to
    read the field (:func:`diffode.solve` counts the evaluations). A field is an ``nn.Module``
    whose submodule is the network (when it is one), so its parameters are discoverable, as
    ``torchdiffeq.odeint_adjoint`` and :func:`diffode.solve` (``adjoint=True``) expect. Calls take
    σ as a Python float, a 0-d
    tensor or one σ per sample (``(batch,)``) and a state of shape ``(batch, ...)`` in any
    floating dtype; results have the state's shape and dtype. An ``nn.Module`` network is called
    in the dtype of its parameters (:attr:`network_dtype`, read at each call), the
    input cast to it and the output cast back.
    """

    prediction: ClassVar[str]
    """What the network predicts, in diffusers' ``prediction_type`` words."""
    call_convention: ClassVar[str] = "model(x, t)"
    finite_at_infinity: ClassVar[bool] = False
    """Whether x̂₀ stays finite at σ = ∞ (zero terminal SNR), so the first step can leave σ = ∞."""

    def __init__(self, model: Callable[[Tensor, Tensor], Tensor]) -> None:
        if not callable(model):
            raise TypeError(f"model must be callable as {self.call_convention}, got {type(model).__name__}")
        super().__init__()
        self.model = model
        self.conditioning: Conditioning | None = None
        # the module that owns the first floating parameter, and its name there: reading it back
        # costs nothing per call and follows casts (field.double(), model.half()) and parameters
        # replaced by loading (load_state_dict(assign=True)); buffers are replaced by a cast, so a
        # module without parameters is looked through each time. In a tuple, which nn.Module does
        # not register as a submodule of the field.
        name = next(
            (n for n, p in model.named_parameters() if p.is_floating_point())
            if isinstance(model, torch.nn.Module)
            else iter(()),
            None,
        )
        if name is None or not isinstance(model, torch.nn.Module):
            self._dtype_source: tuple[torch.nn.Module, str] | tuple[()] = ()
        else:
            owner, _, attribute = name.rpartition(".")
            self._dtype_source = (model.get_submodule(owner), attribute)

    @property
    def network_dtype(self) -> torch.dtype | None:
        """The dtype the network computes in: that of an ``nn.Module``'s first floating parameter
        or buffer, current after casts (``field.double()`` or ``model.half()`` change it) and
        loading, or ``None`` for other callables."""
        if self._dtype_source:
            parameter = getattr(*self._dtype_source, None)
            if isinstance(parameter, Tensor):
                return parameter.dtype
        return _parameter_dtype(self.model)

    def conditioned(
        self, cond: Cond | None, guidance: float | Guidance | None = None, uncond: Cond | None = None
    ) -> ModelField:
        """A copy of this field whose network gets ``cond`` (and classifier-free ``guidance``
        against ``uncond``); see :class:`~diffode.conditioning.Conditioning`. With all three
        ``None``, the field itself."""
        conditioning = Conditioning.build(self.model, cond, guidance, uncond)
        if conditioning is None:
            return self
        field = copy.copy(self)
        field.conditioning = conditioning
        return field

    def _network(self, inp: Tensor, scalar: Tensor, sigma: Sigma) -> Tensor:
        """The network's output for input ``inp`` and per-sample time or σ ``scalar``, with its
        conditioning and guidance."""
        if self.conditioning is None:
            return self.model(inp, scalar)
        return self.conditioning.call(self.model, inp, scalar, sigma)

    def _network_input(self, x: Tensor) -> Tensor:
        """``x`` in the network's own dtype: a float64 state meets a float32 network (or the
        reverse) by a cast at the call, while the state keeps its dtype."""
        dtype = self.network_dtype
        return x if dtype is None or dtype == x.dtype else x.to(dtype)

    @abstractmethod
    def _run(self, sigma: Sigma, x: Tensor, alpha: Coefficient) -> Tensor:
        """The network's raw output at noise level σ for the x-space state ``x`` = αx̄."""

    @abstractmethod
    def _split(self, out: Tensor, x: Tensor, alpha: Coefficient, s: Coefficient) -> tuple[Tensor, Tensor]:
        """(ε, x̂₀) from the network output ``out`` at x = αx̄."""

    def _predict(self, sigma: Sigma, x: Tensor, alpha: Coefficient, s: Coefficient) -> tuple[Tensor, Tensor]:
        out = self._run(sigma, x, alpha)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"model output must have the input's shape {tuple(x.shape)}, got {shape}; "
                f"the model must return its prediction ({self.prediction}) for every input element"
            )
        return self._split(out.to(x.dtype), x, alpha, s)

    def predict_x(self, sigma: Sigma, x: Tensor) -> tuple[Tensor, Tensor]:
        """(ε, x̂₀) from the x-space state ``x`` = x̄/√(1+σ²), shape ``(batch, ...)``.

        This is the only way to read the field at σ = ∞ (zero terminal SNR), where x̄ is infinite
        but x is the noise itself; fields whose x̂₀ is singular there raise ``ValueError``.
        """
        alpha, s = signal_and_noise(sigma, x)
        # (a per-sample σ syncs with the device here; predict_x is off the sampling loop's path)
        if not self.finite_at_infinity and (
            alpha == 0.0 if isinstance(alpha, float) else bool((alpha == 0).any())
        ):
            raise ValueError(
                f"{type(self).__name__} cannot be evaluated at sigma = inf (zero terminal SNR): a "
                f"{self.prediction} model gives no finite x̂0 there; use a v- or x0-prediction model "
                "(prediction='v_prediction' or 'sample') or a σ grid that starts at a finite σ"
            )
        return self._predict(sigma, x, alpha, s)

    def predict(self, sigma: Sigma, xbar: Tensor) -> tuple[Tensor, Tensor]:
        """(ε, x̂₀) at (σ, x̄): the field value and the denoised estimate, each shaped like x̄.

        A scalar σ must be positive and finite: at σ = 0 the network would be read outside its
        training range (x̂₀ is x̄ itself there), and at σ = ∞ x̄ is infinite (read the field with
        :meth:`predict_x` from x instead). A ``(batch,)`` σ is not checked, which would
        synchronise with the device."""
        scale: Sigma = sigma
        if not (isinstance(sigma, Tensor) and sigma.ndim > 0):
            # read once (a 0-d device tensor syncs): the coefficients take the number
            scale = value = _scalar(sigma)
            if value == 0.0 or math.isinf(value):
                raise ValueError(
                    f"the field cannot be read at sigma = {value:g}: "
                    + (
                        "stop at the schedule's sigma_min and take x̂₀ there, as diffode.solve does"
                        if value == 0.0
                        else "x̄ is infinite there; use predict_x with the x-space noise"
                    )
                )
        alpha, s = signal_and_noise(scale, xbar)
        return self._predict(sigma, xbar * alpha, alpha, s)

    def rows(self, index: Tensor) -> ModelField:
        """This field for the batch rows ``index`` only (see :class:`PredictingField`): the
        conditioning of those rows; without conditioning, the field itself."""
        if self.conditioning is None:
            return self
        field = copy.copy(self)
        field.conditioning = self.conditioning.rows(index)
        return field

    def denoised(self, sigma: Sigma, xbar: Tensor) -> Tensor:
        """x̂₀(x̄, σ) = x̄ - σ f(σ, x̄), the network's estimate of the clean sample."""
        return self.predict(sigma, xbar)[1]

    def __call__(self, sigma: Sigma, xbar: Tensor) -> Tensor:
        return self.predict(sigma, xbar)[0]


class ScheduleField(ModelField):
    """Base of fields whose network is called as ``model(x, t)`` on a schedule's time axis.

    Args:
        model: called as ``model(x, t)`` with x of shape ``(batch, ...)`` and t a float tensor of
            shape ``(batch,)`` in training-step units (0 … T-1 for a discrete schedule), exactly
            as diffusers' UNets and the DDIM reference code are called. x is in the network's
            dtype (an ``nn.Module``'s parameters; for other callables, the state's); t is
            float64 for a float64 state and float32 otherwise (float16 cannot hold every
            training step).
        schedule: the schedule the model was trained with.
    """

    def __init__(self, model: Model, schedule: NoiseSchedule) -> None:
        super().__init__(model)
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(
                f"schedule must be a diffode.Schedule or another NoiseSchedule, got {type(schedule).__name__}"
            )
        if math.isinf(schedule.sigma_max) and not self.finite_at_infinity:
            raise ValueError(
                f"schedule has zero terminal SNR (sigma_max = inf), where a {self.prediction} model "
                "is singular (x̂0 = (x - s·ε)/α with α = 0); use a v- or x0-prediction field "
                "(prediction='v_prediction' or 'sample'), or rescale the schedule"
            )
        self.schedule = schedule

    _TIME_CACHE_SIZE: ClassVar[int] = 4096
    """Scalar-σ network-time tensors kept per field (see :meth:`_time`)."""

    def _time(self, sigma: Sigma, like: Tensor) -> Tensor:
        if isinstance(sigma, Tensor) and sigma.ndim > 0:
            return _per_sample(self.schedule.t(sigma.to(like.device, torch.float64)), like)
        # A Python scalar keeps the default path free of host-device copies and syncs, and its
        # (batch,) time tensor is kept: a solve reads the same σ values again (stages, the step
        # into 0, repeated solves on one grid), and building t(σ) and the tensor costs more than
        # a small network's call. The key holds everything the tensor depends on; the network
        # gets the same tensor object each time, which it must not modify in place.
        value = _scalar(sigma)
        # a tensor made under inference_mode cannot be saved for a later backward pass
        key = (value, like.shape[0], like.dtype, like.device, torch.is_inference_mode_enabled())
        cache: dict[tuple[float, int, torch.dtype, torch.device, bool], Tensor] = self.__dict__.setdefault(
            "_time_cache", {}
        )
        times = cache.get(key)
        if times is None:
            if len(cache) >= self._TIME_CACHE_SIZE:
                cache.clear()
            times = cache[key] = _per_sample(float(self.schedule.t(value)), like)
        return times

    def _run(self, sigma: Sigma, x: Tensor, alpha: Coefficient) -> Tensor:
        x = self._network_input(x)
        return self._network(x, self._time(sigma, x), sigma)


class EpsField(ScheduleField):
    """The DDIM ODE field of an ε-prediction network: f(σ, x̄) = ε_θ(x̄/√(1+σ²), t(σ)).

    See :class:`ScheduleField` for ``model`` and ``schedule``. Calling the field with σ (a float,
    a 0-d tensor or one σ per sample, ``(batch,)``) and x̄ (``(batch, ...)``, any floating dtype)
    returns ε with the shape and dtype of x̄. A schedule
    with zero terminal SNR is refused: ε alone does not determine x̂₀ at σ = ∞.
    """

    prediction = "epsilon"

    def _split(self, out: Tensor, x: Tensor, alpha: Coefficient, s: Coefficient) -> tuple[Tensor, Tensor]:
        return _from_eps(out, x, alpha, s)


class X0Field(ScheduleField):
    """Field of an x̂₀-prediction network ``model(x, t) ≈ E[x₀ | x]``: ε = (x - αx̂₀)/s.

    See :class:`ScheduleField` for the arguments. Works on zero-terminal-SNR schedules.
    """

    prediction = "sample"
    finite_at_infinity = True

    def _split(self, out: Tensor, x: Tensor, alpha: Coefficient, s: Coefficient) -> tuple[Tensor, Tensor]:
        return _from_x0(out, x, alpha, s)


class VField(ScheduleField):
    """Field of a v-prediction network (Salimans & Ho, 2022), v = αε - s x₀:
    ε = s x + αv and x̂₀ = αx - s v.

    See :class:`ScheduleField` for the arguments. Works on zero-terminal-SNR schedules, where
    at σ = ∞ (α = 0, s = 1) ε = x and x̂₀ = -v.
    """

    prediction = "v_prediction"
    finite_at_infinity = True

    def _split(self, out: Tensor, x: Tensor, alpha: Coefficient, s: Coefficient) -> tuple[Tensor, Tensor]:
        return s * x + alpha * out, alpha * x - s * out


class ScoreField(ScheduleField):
    """Field of a score network ``model(x, t) ≈ ∇ₓ log p_t(x)`` in x-space: ε = -s · score.

    See :class:`ScheduleField` for the arguments. For a continuous-time score-SDE model use
    :meth:`Schedule.vp` with its ``time_scale``.
    """

    prediction = "score"

    def _split(self, out: Tensor, x: Tensor, alpha: Coefficient, s: Coefficient) -> tuple[Tensor, Tensor]:
        return _from_eps(-s * out, x, alpha, s)


class DenoiserField(ModelField):
    """Field of an EDM-style denoiser D(x̄; σ) ≈ E[x₀ | x̄] (Karras et al., 2022): ε = (x̄ - D)/σ.

    Args:
        model: called as ``model(xbar, sigma)`` with x̄ of shape ``(batch, ...)`` (the
            variance-exploding state, x₀ + σ·noise, not scaled) and σ a float tensor of shape
            ``(batch,)``: x̄ in the network's dtype (an ``nn.Module``'s parameters; for other
            callables, the state's), σ float64 for a float64 state and float32 otherwise. No
            schedule or time map
            is involved; choose the σ grid from the noise levels the denoiser was trained on.

    The field is undefined at σ = ∞.
    """

    prediction = "denoiser"
    call_convention = "model(xbar, sigma)"

    def _run(self, sigma: Sigma, x: Tensor, alpha: Coefficient) -> Tensor:
        xbar = self._network_input(x / alpha)
        return self._network(xbar, _per_sample(sigma, xbar), sigma)

    def _split(self, out: Tensor, x: Tensor, alpha: Coefficient, s: Coefficient) -> tuple[Tensor, Tensor]:
        return _from_x0(out, x, alpha, s)


_SCHEDULE_FIELDS: dict[str, type[ScheduleField]] = {
    cls.prediction: cls for cls in (EpsField, X0Field, VField, ScoreField)
}
PREDICTIONS = tuple(_SCHEDULE_FIELDS)
"""The ``prediction`` names :func:`field_for` accepts (diffusers' ``prediction_type`` values and
``"score"``)."""


def field_for(
    model: Model | ModelField,
    schedule: NoiseSchedule,
    prediction: str = "epsilon",
    *,
    cond: Cond | None = None,
    guidance: float | Guidance | None = None,
    uncond: Cond | None = None,
) -> ModelField:
    """The field of ``model`` trained on ``schedule`` with the given ``prediction`` type.

    Args:
        model: a network called as ``model(x, t)`` (see :class:`ScheduleField`), or a
            :class:`ModelField` (for example a :class:`DenoiserField`), returned as is.
        schedule: the schedule the network was trained with. A field built on another schedule
            is refused.
        prediction: ``"epsilon"``, ``"sample"`` (x̂₀), ``"v_prediction"`` or ``"score"``. With a
            field, only its own prediction or the default is accepted.
        cond: conditioning for a conditional network, passed as keyword arguments: a mapping
            of tensors with the batch as first dimension, or a bare tensor passed as the
            keyword the model declares (``model.cond_keyword``); see :mod:`diffode.conditioning`.
        guidance: classifier-free guidance weight w (or a :class:`~diffode.Guidance`): the
            field becomes ε_u + w (ε_c - ε_u).
        uncond: the unconditional input for guidance, in the form of ``cond``; default: the
            model's own (``model.null_condition(cond)``, e.g. the built-in UNet's null label).
    """
    if not isinstance(prediction, str) or prediction not in PREDICTIONS:
        raise ValueError(
            f"prediction must be one of {', '.join(map(repr, PREDICTIONS))}, got {prediction!r}; "
            "wrap an EDM denoiser D(x̄; σ) as DenoiserField(model) and pass the field instead"
        )
    if not isinstance(model, ModelField):
        return _SCHEDULE_FIELDS[prediction](model, schedule).conditioned(cond, guidance, uncond)
    if prediction not in ("epsilon", model.prediction):
        raise ValueError(
            f"prediction={prediction!r} contradicts the {type(model).__name__} passed as model, which "
            f"predicts {model.prediction!r}; leave prediction out when passing a field"
        )
    if isinstance(model, ScheduleField) and model.schedule != schedule:
        raise ValueError(
            f"the {type(model).__name__} was built on {model.schedule!r}, not on schedule={schedule!r}; "
            "build the field on the schedule you sample with"
        )
    return model.conditioned(cond, guidance, uncond)
