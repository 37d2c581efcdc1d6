"""diffusers interoperability: sample diffusers ``UNet2DModel``s (unconditional or
class-conditional) and ``UNet2DConditionModel``s with diffode's solvers.

Optional: ``pip install "diffode[diffusers]"``. diffusers is imported only when these functions
run, so ``import diffode`` never needs it.

What diffode takes from a scheduler config, and what it leaves:

- The noise schedule: ``trained_betas``, or ``beta_schedule`` (``"linear"``, ``"scaled_linear"``,
  ``"squaredcos_cap_v2"``) with ``beta_start``, ``beta_end`` and ``num_train_timesteps``, and
  ``rescale_betas_zero_snr``. The table is built by diffusers' own ``DDIMScheduler``, so diffode
  uses the very float32 ᾱ values the model was trained and is sampled with (held in float64).
- ``prediction_type`` (``"epsilon"``, ``"sample"``, ``"v_prediction"``) selects the field.
- Sampler settings are not model properties and are ignored: diffode integrates the pure ODE.
  ``clip_sample`` (on by default in ``DDIMScheduler``: x̂₀ clipped to [-1, 1]) and
  ``thresholding`` have no counterpart; the last step always goes to ᾱ = 1 (σ = 0), as with
  ``set_alpha_to_one=True``; ``timestep_spacing`` and ``steps_offset`` only choose timesteps, so
  to reproduce a diffusers run pass its ``scheduler.timesteps`` as ``timesteps=`` to
  :func:`diffode.sample`. With ``clip_sample=False`` and ``set_alpha_to_one=True``, diffusers'
  DDIM loop (η = 0) and diffode's Euler on the same timesteps agree to round-off where that
  loop stays on its timesteps; in float32 that round-off is taken on x̄ = x·√(1+σ²), so it
  grows with the σ of the first step. ``DDIMScheduler.step`` takes each timestep t to
  t - T // S, which is the next of its timesteps for ``"leading"`` spacing and for
  ``"trailing"`` when S divides T, but not for ``"linspace"`` (T = 1000, S = 10: 999 → 899 and
  then 888 → 788, ...): there diffusers' loop leaves its own grid, and no σ grid reproduces it
  (measured: 27 % apart at 10 steps).
- Only schedules of β (DDPM-family schedulers) are read: a config with none of
  ``trained_betas``, ``beta_schedule``, ``beta_start`` and ``beta_end`` (flow matching, EDM,
  VE schedulers) raises ``ValueError`` instead of being read as diffusers' default linear β.
  ``timestep_type="continuous"`` (the network reads a function of σ as its time) is refused.
- With ``rescale_betas_zero_snr``, diffode's last ᾱ is the training table's 0 (σ = ∞);
  diffusers' Euler-family schedulers sample from 2⁻²⁴ instead.
- :func:`load_diffusers` instantiates ``UNet2DModel`` and ``UNet2DConditionModel`` only, from
  ``diffusion_pytorch_model.safetensors``, and refuses a config that does not fit its weights
  (keys missing, unexpected or of another shape) and networks whose output has another shape
  than their input (inpainting, upscaling, learned variance).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffode.checkpoint import read_json_object
from diffode.conditioning import Cond, Guidance
from diffode.field import ModelField, field_for
from diffode.schedule import Schedule

DIFFUSERS_PREDICTIONS = ("epsilon", "sample", "v_prediction")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
NETWORK_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
"""The diffusers network classes :func:`load_diffusers` instantiates (called as ``unet(x, t, ...)``)."""


def _import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as err:
        raise ImportError(
            'diffusers is not installed; install the optional extra with pip install "diffode[diffusers]"'
        ) from err
    return diffusers


def _cond_keyword(unet: Any) -> str | None:
    """The keyword a bare ``cond`` tensor is passed as: ``encoder_hidden_states`` for networks
    with cross-attention (``UNet2DConditionModel``), ``class_labels`` for class-conditional
    ``UNet2DModel``s (``num_class_embeds`` or ``class_embed_type`` in their config)."""
    config = getattr(unet, "config", None)
    if getattr(config, "cross_attention_dim", None) is not None:
        return "encoder_hidden_states"
    if getattr(config, "num_class_embeds", None) is not None or getattr(config, "class_embed_type", None):
        return "class_labels"
    return None


class UNetAdapter(torch.nn.Module):
    """A diffusers model as a diffode network ``model(x, t, **cond) -> Tensor``.

    A ``torch.nn.Module`` holding ``unet`` as a submodule, so the field's ``parameters()`` are the
    network's (what ``solve(..., adjoint=True)`` differentiates by default) and ``.to()``,
    ``.eval()`` reach it.

    Calls ``unet(x, t, **cond)`` and unwraps the output's ``.sample`` (or the first element of a
    tuple). x and floating conditioning tensors are cast to the network's dtype (``unet.dtype``)
    when it has one; the field casts the prediction back to the state's dtype. ``cond_keyword``
    says how a bare ``cond`` tensor is passed (see :func:`diffode.field_for`):
    ``"encoder_hidden_states"`` for a ``UNet2DConditionModel``, ``"class_labels"`` for a
    class-conditional ``UNet2DModel``, ``None`` for an unconditional network. diffusers networks
    have no null condition of their own: guidance needs ``uncond`` (e.g. the embeddings of the
    empty prompt).
    """

    def __init__(self, unet: Any) -> None:
        if not callable(unet):
            raise TypeError(f"unet must be a callable diffusers model, got {type(unet).__name__}")
        super().__init__()
        self.unet = unet
        self.cond_keyword = _cond_keyword(unet)

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        dtype = getattr(self.unet, "dtype", None)
        if isinstance(dtype, torch.dtype):
            x = x.to(dtype)
            cond = {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()}
        out = self.unet(x, t, **cond)
        if hasattr(out, "sample"):
            return out.sample
        if isinstance(out, tuple):
            return out[0]
        return out


@dataclass(frozen=True)
class DiffusersModel:
    """A diffusers network with what diffode needs to sample it.

    Attributes:
        model: the network as ``model(x, t)`` (a :class:`UNetAdapter`; the module is ``model.unet``).
        schedule: the training schedule, float64.
        prediction: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
        sample_shape: the shape of one sample, ``(channels, height, width)``, when the network's
            config tells it, else ``None``.
    """

    model: UNetAdapter
    schedule: Schedule
    prediction: str
    sample_shape: tuple[int, ...] | None

    def field(
        self, cond: Cond | None = None, guidance: float | Guidance | None = None, uncond: Cond | None = None
    ) -> ModelField:
        """The σ-space field of the network, conditioned and guided as asked (see
        :func:`diffode.field_for`)."""
        return field_for(
            self.model, self.schedule, self.prediction, cond=cond, guidance=guidance, uncond=uncond
        )


def schedule_from_diffusers_config(config: Mapping[str, Any]) -> tuple[Schedule, str]:
    """The schedule and prediction type of a diffusers scheduler config (see the module notes)."""
    if not isinstance(config, Mapping):
        raise TypeError(
            f"scheduler must be a diffusers scheduler or its config mapping, got {type(config).__name__}"
        )
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in DIFFUSERS_PREDICTIONS:
        raise ValueError(
            f"prediction_type must be one of {', '.join(map(repr, DIFFUSERS_PREDICTIONS))}, "
            f"got {prediction!r}"
        )
    if not any(
        config.get(key) is not None for key in ("trained_betas", "beta_schedule", "beta_start", "beta_end")
    ):
        name = config.get("_class_name", "the scheduler")
        raise ValueError(
            f"{name}'s config has no β schedule (trained_betas, beta_schedule, beta_start, beta_end): "
            "diffode samples models trained on a DDPM β schedule (DDIM-, DDPM-, Euler-, DPM-Solver-"
            "style schedulers), not flow-matching, EDM or VE models"
        )
    timestep_type = config.get("timestep_type", "discrete")
    if timestep_type != "discrete":
        # the network then reads a function of σ as its time (Euler's 0.25 log σ), not t in 0 … T-1
        raise ValueError(
            f"timestep_type={timestep_type!r}: the network reads its time as a function of σ, which "
            "diffode does not feed it; only timestep_type='discrete' (training steps 0 … T-1) is read"
        )
    _check_config_types(config)
    beta_schedule = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is None and beta_schedule not in BETA_SCHEDULES:
        raise ValueError(
            f"beta_schedule must be one of {', '.join(map(repr, BETA_SCHEDULES))} (or give trained_betas), "
            f"got {beta_schedule!r}"
        )
    diffusers = _import_diffusers()
    keys = (
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "rescale_betas_zero_snr",
    )
    kwargs = {k: config[k] for k in keys if k in config}
    table = diffusers.DDIMScheduler(**kwargs).alphas_cumprod
    return Schedule.from_alphas_cumprod(table.to(torch.float64)), prediction


def _check_config_types(config: Mapping[str, Any]) -> None:
    """The β-schedule keys of a scheduler config, typed as diffusers expects them: ``ValueError``
    naming the key otherwise (torch's own message names none, and a string such as ``"no"`` is
    a true ``rescale_betas_zero_snr``)."""
    checks: dict[str, tuple[Any, str]] = {
        "num_train_timesteps": (
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2,
            "an integer >= 2",
        ),
        "beta_start": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
        "beta_end": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
        "rescale_betas_zero_snr": (lambda v: isinstance(v, bool), "true or false"),
        "trained_betas": (
            lambda v: (
                v is None
                or (
                    isinstance(v, (list, tuple))
                    and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in v)
                )
            ),
            "a list of numbers (or null)",
        ),
    }
    for key, (valid, expected) in checks.items():
        if key in config and not valid(config[key]):
            raise ValueError(f"scheduler config key {key!r} must be {expected}, got {config[key]!r}")


def _sample_shape(unet: Any) -> tuple[int, ...] | None:
    config = getattr(unet, "config", None)
    channels = getattr(config, "in_channels", None)
    size = getattr(config, "sample_size", None)
    if not isinstance(channels, int) or size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return (channels, int(height), int(width))


def from_diffusers(unet: Any, scheduler: Any) -> DiffusersModel:
    """Wrap an in-memory diffusers network and its scheduler for diffode.

    Args:
        unet: a diffusers model called as ``unet(x, t, **cond)``: a ``UNet2DModel`` (with
            ``class_labels`` when class-conditional) or a ``UNet2DConditionModel``
            (``encoder_hidden_states``); its output's ``.sample`` is the prediction.
        scheduler: a diffusers scheduler (its ``.config`` is read) or a scheduler config mapping.

    Returns:
        A :class:`DiffusersModel`; sample with
        ``diffode.sample(m.model, m.schedule, noise, prediction=m.prediction)``, adding
        ``cond=``, ``guidance=`` and ``uncond=`` for a conditional network.
    """
    config = getattr(scheduler, "config", scheduler)
    schedule, prediction = schedule_from_diffusers_config(config)
    return DiffusersModel(UNetAdapter(unet), schedule, prediction, _sample_shape(unet))


def _first_file(candidates: list[Path], what: str, fix: str) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    places = ", ".join(str(p) for p in candidates)
    raise ValueError(f"no {what} found: looked for {places}; {fix}")


@contextlib.contextmanager
def quiet_diffusers() -> Iterator[None]:
    """diffusers' own log lines off for the block: it logs an error before raising the OSError
    that diffode reports in one line, and warns on every cast of a model to a dtype, even with no
    module to keep in float32."""
    logging = _import_diffusers().utils.logging
    before = logging.get_verbosity()
    logging.set_verbosity(logging.CRITICAL + 10)
    try:
        yield
    finally:
        logging.set_verbosity(before)


def load_diffusers(path: str | Path) -> DiffusersModel:
    """Load a network and its scheduler config from a folder written by ``save_pretrained``.

    The network is read from ``path/unet`` or ``path`` itself (``config.json`` and safetensors
    weights; pickled ``.bin`` weights are refused) with ``local_files_only=True``, so nothing is
    downloaded. The scheduler config is ``path/scheduler/scheduler_config.json``, or
    ``scheduler_config.json`` beside the network's ``config.json``. The class named in
    ``config.json`` (default ``UNet2DModel``) is instantiated.

    Raises:
        ValueError: when the folder or a config file is missing or the weights cannot be read.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"path must be a folder written by save_pretrained, got {str(root)!r}")
    config_file = _first_file(
        [root / "unet" / "config.json", root / "config.json"],
        "network config",
        "save the network with unet.save_pretrained(path / 'unet')",
    )
    unet_dir = config_file.parent
    scheduler_file = _first_file(
        [root / "scheduler" / "scheduler_config.json", unet_dir / "scheduler_config.json"],
        "scheduler config",
        "save the scheduler with scheduler.save_pretrained(path / 'scheduler')",
    )
    scheduler_config = read_json_object(scheduler_file, "diffusers scheduler config")
    class_name = read_json_object(config_file, "diffusers network config").get("_class_name", "UNet2DModel")
    if not isinstance(class_name, str):
        raise ValueError(f"{config_file}: field '_class_name' must be a string, got {class_name!r}")
    try:
        schedule, prediction = schedule_from_diffusers_config(scheduler_config)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{scheduler_file}: {err}") from None
    if class_name not in NETWORK_CLASSES:
        raise ValueError(
            f"{config_file} names {class_name!r}; diffode samples the diffusers networks "
            f"{' and '.join(NETWORK_CLASSES)} (called as unet(x, t, ...))"
        )
    weights = sorted(p.name for p in unet_dir.glob("*.safetensors"))
    pickled = sorted(p.name for pattern in ("*.bin", "*.pt", "*.ckpt") for p in unet_dir.glob(pattern))
    # one file, or shards listed by their index (save_pretrained shards large networks)
    readable = (unet_dir / "diffusion_pytorch_model.safetensors").is_file() or (
        unet_dir / "diffusion_pytorch_model.safetensors.index.json"
    ).is_file()
    if not readable and (pickled or weights):
        found = ", ".join(pickled + weights)
        raise ValueError(
            f"{unet_dir} holds {found} but no diffusion_pytorch_model.safetensors: diffode never "
            "unpickles weights (.bin, .pt, .ckpt) and reads no variant files; re-save the network with "
            "unet.save_pretrained(path, safe_serialization=True)"
        )
    model_class = getattr(_import_diffusers(), class_name)
    try:
        with quiet_diffusers():
            unet, info = model_class.from_pretrained(
                unet_dir,
                local_files_only=True,
                use_safetensors=True,
                low_cpu_mem_usage=False,
                output_loading_info=True,
            )
    except (OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"could not load the network from {unet_dir}: {err}") from err
    # diffusers fills weights missing from the file with fresh (even uninitialised) values and
    # drops unused ones, with its warning silenced above: a config that does not fit its weights
    problems = {
        k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v
    }
    if problems:
        listed = "; ".join(
            f"{k.replace('_', ' ')}: {', '.join(map(str, v[:5]))}" for k, v in problems.items()
        )
        raise ValueError(
            f"the weights in {unet_dir} do not fit its config.json ({listed}); the config must be the "
            "one saved with these weights"
        )
    shape = _sample_shape(unet)
    channels_out = getattr(unet.config, "out_channels", None)
    if shape is not None and channels_out is not None and channels_out != shape[0]:
        raise ValueError(
            f"{config_file}: in_channels={shape[0]} but out_channels={channels_out}; diffode samples "
            "networks whose prediction has the input's shape (not inpainting, upscaling or "
            "learned-variance networks)"
        )
    return DiffusersModel(UNetAdapter(unet), schedule, prediction, shape)
