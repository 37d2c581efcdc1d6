"""Checkpoints: a folder with ``model.safetensors`` (weights) and ``config.json`` (everything else).

``config.json`` names the architecture and its constructor arguments, the noise schedule, what
the network predicts, and how the weights were made (dataset, seed, steps, the exact command).
Loading rebuilds the model from that description and fills in the weights from the safetensors
file; nothing is ever unpickled, so a checkpoint from an untrusted source cannot run code. Files
in pickle-based formats (``torch.save``, ``.pt``, ``.ckpt``, ``.bin``) are refused with a clear
error. A training run adds ``training_state.safetensors`` (see :class:`TrainingState`).

Every file is written through :func:`diffode.atomic.atomic_write` (a temporary file in its folder,
renamed into place), so a crash or a full disk never leaves a half-written file where a good one
was.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from diffode.atomic import atomic_write
from diffode.field import PREDICTIONS
from diffode.models import architecture_name, build_model
from diffode.schedule import Schedule
from diffode.validation import require_device, require_floating_dtype

FORMAT = "diffode-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINING_STATE = "training_state.safetensors"
FEATURES = "features.safetensors"
"""A classifier checkpoint's real-data feature statistics (``diffode train-classifier``)."""
_STATE_KEY = "diffode_training_state"
_CONFIG_KEY = "diffode_config_sha256"
"""The weights file's header entry holding the SHA-256 of the content of the ``config.json``
written with them (:func:`_config_digest`)."""
_SCHEDULES = {"linear": Schedule.linear, "scaled_linear": Schedule.scaled_linear, "cosine": Schedule.cosine}
# a JSON header larger than this is not a checkpoint of ours (guards against reading a huge
# length field out of a file in some other format)
_MAX_HEADER = 100_000_000


def schedule_from_checkpoint_config(config: dict[str, Any]) -> Schedule:
    """The schedule a diffode checkpoint's ``"schedule"`` field describes:
    ``{"name": "linear" | "scaled_linear" | "cosine", **arguments}``, e.g.
    ``{"name": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02}``. (A diffusers
    scheduler config is read by :func:`diffode.diffusers_interop.schedule_from_diffusers_config`.)"""
    if not isinstance(config, dict) or config.get("name") not in _SCHEDULES:
        raise ValueError(
            f"schedule config must be a dict with 'name' in {sorted(_SCHEDULES)}, got {config!r}"
        )
    arguments = {k: v for k, v in config.items() if k != "name"}
    try:
        return _SCHEDULES[config["name"]](**arguments)
    except TypeError as err:
        raise ValueError(f"schedule config {config!r} has arguments the constructor rejects: {err}") from None


def _refuse_unsafe(path: Path) -> None:
    """Raise ValueError unless ``path`` starts like a safetensors file (length + JSON object)."""
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    with path.open("rb") as fh:
        head = fh.read(9)
    length = int.from_bytes(head[:8], "little")
    if len(head) == 9 and 0 < length <= min(path.stat().st_size - 8, _MAX_HEADER) and head[8:] == b"{":
        return
    # name the usual culprits: pickle protocols 2-5 open with PROTO (0x80) and the version,
    # torch.save writes a zip archive of pickles; anything else gets the generic message
    if (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or head[
        :4
    ] == b"PK\x03\x04":
        raise ValueError(
            f"{path} is a pickle or torch.save file; diffode never unpickles weights because "
            "unpickling can run arbitrary code. Convert it to safetensors in a trusted environment"
        )
    raise ValueError(f"{path} is not a safetensors file (no valid header); diffode loads only safetensors")


def load_tensors(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read a safetensors file into a dict of tensors, without unpickling anything.

    Raises ``ValueError`` for pickle/``torch.save`` files and anything else that is not a valid
    safetensors file.
    """
    path = Path(path)
    _refuse_unsafe(path)
    try:
        return load_file(path, device=str(device))
    except SafetensorError as err:
        raise ValueError(f"{path} is not a valid safetensors file: {err}") from None


def save_tensors(
    path: str | os.PathLike[str], tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write tensors (and string ``metadata``) to a safetensors file atomically (a crash never
    leaves a half-written file)."""
    payload = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_write(path) as fh:
        fh.write(save(payload, metadata=metadata))


def read_json_object(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """The JSON object in the file ``path`` (``what`` it is, for messages); ``ValueError`` naming the
    file when it is not valid JSON or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it should hold the {what}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file; it should hold the {what} as JSON") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object (the {what}), got a {type(data).__name__}")
    return data


def _field(config: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    """``config[key]``, checked to be present and of type ``kind``; ``ValueError`` naming the file
    and the field otherwise."""
    if key not in config:
        raise ValueError(f"{where} has no {key!r} field; was it written by diffode?")
    value = config[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(f"{where}: field {key!r} must be {names}, got {value!r}")
    return value


def check_fields(
    info: Mapping[str, Any], fields: Mapping[str, type | tuple[type, ...]], where: str | os.PathLike[str]
) -> None:
    """Check that ``info`` has each of ``fields`` with its type; ``ValueError`` naming the file
    ``where`` and the field otherwise (a damaged or foreign file, never a ``KeyError``)."""
    for key, kind in fields.items():
        _field(info, key, kind, Path(where))


def _config_digest(config: Mapping[str, Any]) -> str:
    """SHA-256 of a config's content, whatever its file's layout (indentation, key order, line
    endings: git may rewrite those on checkout)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_checkpoint(folder: str | os.PathLike[str], model: nn.Module, info: dict[str, Any]) -> Path:
    """Write ``model`` (a built-in architecture) to ``folder``; returns the folder.

    ``info`` is merged into ``config.json`` beside the architecture and its constructor
    arguments; put the schedule there as ``info["schedule"]`` (see :func:`schedule_from_checkpoint_config`)
    for ε-networks, along with provenance (dataset, seed, steps, command). Existing files are
    replaced atomically, so periodic checkpoints can overwrite each other safely.
    """
    folder = Path(folder)
    config_fn = getattr(model, "config", None)
    if not callable(config_fn):
        raise TypeError(f"model must be a built-in diffode architecture, got {type(model).__name__}")
    own = {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": architecture_name(model)}
    own["model"] = config_fn()
    clash = sorted(set(info) & set(own))
    if clash:
        raise ValueError(
            f"info must not set {', '.join(map(repr, clash))}: the checkpoint writes them itself"
        )
    # the whole config is serialised before either file is replaced: a failure leaves the old
    # checkpoint as it was, not new weights beside the old config
    try:
        text = json.dumps({**own, **info}, indent=2, sort_keys=False) + "\n"
    except (TypeError, ValueError) as err:
        raise ValueError(f"info must be JSON-serialisable: {err}") from None
    folder.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    # the two files are replaced one after the other: the weights name the config they belong
    # to, so a run killed in between (or an edited config) is refused on loading
    save_tensors(folder / WEIGHTS, dict(model.state_dict()), {_CONFIG_KEY: _config_digest(json.loads(text))})
    with atomic_write(folder / CONFIG) as fh:
        fh.write(data)
    return folder


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, parameters frozen), its config, its schedule
    (``None`` for networks that are not ε-networks, such as the digits classifier) and what the
    network predicts (the config's ``"prediction"``, one of :data:`diffode.PREDICTIONS`,
    ``"epsilon"`` when absent; sample with ``prediction=checkpoint.prediction``)."""

    model: nn.Module
    config: dict[str, Any]
    schedule: Schedule | None
    prediction: str = "epsilon"


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``config.json`` of a diffode checkpoint folder, checked for the format marker."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise ValueError(f"{folder} is not a diffode checkpoint folder: it has no {CONFIG}")
    config = read_json_object(path, "diffode checkpoint config")
    if config.get("format") != FORMAT:
        raise ValueError(f'{path} is not a diffode checkpoint config (expected "format": "{FORMAT}")')
    version = _field(config, "format_version", int, path)
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {version}, newer than this diffode reads "
            f"({FORMAT_VERSION}); upgrade diffode"
        )
    return config


def load_checkpoint(
    folder: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Checkpoint:
    """Load a checkpoint folder written by :func:`save_checkpoint` (or ``diffode train``).

    The model is rebuilt from ``config.json``, filled from ``model.safetensors`` (strictly: every
    weight must match), moved to ``device``/``dtype``, put in eval mode and frozen
    (``requires_grad=False``, so sampling builds no autograd graph; unfreeze to fine-tune).
    """
    device = require_device("device", device)
    dtype = require_floating_dtype("dtype", dtype)
    config = read_config(folder)
    where = Path(folder) / CONFIG
    architecture, settings = _field(config, "architecture", str, where), _field(config, "model", dict, where)
    try:
        model = build_model(architecture, settings)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    prediction = _field(config, "prediction", str, where) if "prediction" in config else "epsilon"
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"{where}: field 'prediction' must be one of {', '.join(map(repr, PREDICTIONS))}, "
            f"got {prediction!r}"
        )
    schedule = None
    if "schedule" in config:
        try:
            schedule = schedule_from_checkpoint_config(config["schedule"])
        except ValueError as err:
            raise ValueError(f"{where}: field 'schedule': {err}") from None
    weights = Path(folder) / WEIGHTS
    tensors = load_tensors(weights)
    with safe_open(weights, framework="pt") as fh:
        paired = (fh.metadata() or {}).get(_CONFIG_KEY)
    # weights written before the pairing entry existed carry none and are taken as they are
    if paired is not None and paired != _config_digest(config):
        raise ValueError(
            f"{weights} was written with a different {CONFIG} than the one beside it (a run killed "
            f"while overwriting the folder, or an edited {CONFIG}); restore the config written with "
            "these weights, or train again into this folder"
        )
    _load_weights(model, tensors, f"the weights in {weights}", f"the architecture in {where}")
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return Checkpoint(model=model, config=config, schedule=schedule, prediction=prediction)


def _load_weights(module: nn.Module, tensors: Mapping[str, Tensor], what: str, target: str) -> None:
    """``module.load_state_dict(tensors, strict=True)``, a mismatch reported in full as ValueError."""
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        # torch lists every missing, unexpected and mis-shaped key; keep all of it
        raise ValueError(f"{what} do not fit {target}: {err}") from None


# ----------------------------------------------------------------------------- training runs


def _has_checkpoint(folder: Path) -> bool:
    return (folder / CONFIG).is_file() or (folder / TRAINING_STATE).is_file()


def prepare_run_folder(
    out: str | os.PathLike[str], *, resume: bool, overwrite: bool, resumable: bool = True
) -> Path:
    """Check (and create) the output folder of a training run before any work starts.

    A new run needs a missing or empty folder; ``overwrite`` starts one in a folder that holds a
    checkpoint or other files (the old checkpoint's files stay until the new run's checkpoints
    replace them, each atomically, so an interrupted new run leaves the old one resumable; a
    file of the old run that the new one does not write goes when the new run first saves, see
    :func:`remove_foreign`). ``resume`` needs a folder holding the training state of a run.
    ``ValueError`` otherwise, offering ``--resume`` only where there is a run to continue and
    ``resumable``.
    """
    if resume and overwrite:
        raise ValueError(
            "resume and overwrite exclude each other: resume continues the run in out, "
            "overwrite starts a new one; pass one of them"
        )
    if not str(out).strip():
        raise ValueError(f"out must name a folder for the checkpoint, got {str(out)!r}")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"out={str(folder)!r} is a file, not a folder; pass a folder for the checkpoint")
    if resume:
        if not (folder / TRAINING_STATE).is_file():
            raise ValueError(
                f"out={str(folder)!r} holds no training state ({TRAINING_STATE}) to resume; "
                "drop --resume to start a new run"
            )
        return folder
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        run = _has_checkpoint(folder)
        resume_it = "pass --resume to continue that run, " if run and resumable else "pass "
        raise ValueError(
            f"out={str(folder)!r} already holds {'a checkpoint' if run else 'other files'}; {resume_it}"
            "--overwrite to start a new one there, or another folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def remove_foreign(folder: Path, name: str) -> None:
    """Remove ``folder/name``, a checkpoint file that the run saving there does not write (a
    classifier's :data:`FEATURES` beside a diffusion model, a diffusion run's
    :data:`TRAINING_STATE` beside a classifier): left by an earlier run in the folder, it would
    be read as this one's."""
    (folder / name).unlink(missing_ok=True)


@dataclass
class TrainingState:
    """What resuming a training run needs, as tensors plus JSON-able ``info``.

    ``tensors`` hold the raw weights (``model/…``), the EMA (``ema/…``), the optimiser's state
    tensors (``optimizer/<param>/<name>``) and the state of the run's random generator
    (``rng/generator``, uint8: it draws the batches, so it fixes the data order, times and noise;
    training draws nothing from torch's global generator);
    ``info`` holds the optimiser's scalars and parameter groups, the learning-rate scheduler's
    state and whatever the training loop adds (step, losses, config). Saved as one safetensors
    file with ``info`` as JSON in its header, so tensors and scalars are replaced together by a
    single atomic rename and can never come from different steps.
    """

    tensors: dict[str, Tensor]
    info: dict[str, Any]

    @classmethod
    def capture(
        cls,
        *,
        model: nn.Module,
        ema: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: LRScheduler,
        generator: torch.Generator,
        info: dict[str, Any],
    ) -> TrainingState:
        """The state of a run now; ``info`` (JSON-able) is stored alongside."""
        tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
        opt = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, param_state in opt["state"].items():
            for name, value in param_state.items():
                if isinstance(value, Tensor):
                    tensors[f"optimizer/{index}/{name}"] = value
                else:
                    scalars.setdefault(str(index), {})[name] = value
        tensors["rng/generator"] = generator.get_state()
        optimizer_info = {"param_groups": opt["param_groups"], "scalars": scalars}
        return cls(tensors, {**info, "optimizer": optimizer_info, "scheduler": scheduler.state_dict()})

    def restore(
        self,
        *,
        model: nn.Module,
        ema: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: LRScheduler,
        generator: torch.Generator,
    ) -> None:
        """Put the captured state back into freshly built objects of the same run."""

        def part(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

        _load_weights(model, part("model/"), "the raw weights of the training state", "the model")
        _load_weights(ema, part("ema/"), "the EMA weights of the training state", "the model")
        state: dict[int, dict[str, Any]] = {}
        for key, value in part("optimizer/").items():
            index, name = key.split("/", 1)
            state.setdefault(int(index), {})[name] = value
        for index, values in self.info["optimizer"]["scalars"].items():
            state.setdefault(int(index), {}).update(values)
        optimizer.load_state_dict({"state": state, "param_groups": self.info["optimizer"]["param_groups"]})
        scheduler.load_state_dict(self.info["scheduler"])
        generator.set_state(self.tensors["rng/generator"])


def save_training_state(folder: str | os.PathLike[str], state: TrainingState) -> None:
    """Write ``state`` to ``folder/training_state.safetensors`` (atomically)."""
    save_tensors(Path(folder) / TRAINING_STATE, state.tensors, {_STATE_KEY: json.dumps(state.info)})


def load_training_state(folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> TrainingState:
    """Read the training state that :func:`save_training_state` wrote to ``folder``."""
    path = Path(folder) / TRAINING_STATE
    tensors = load_tensors(path)
    with safe_open(path, framework="pt") as fh:
        metadata = fh.metadata() or {}
    if _STATE_KEY not in metadata:
        raise ValueError(f"{path} has no {_STATE_KEY!r} header entry; it is not a diffode training state")
    try:
        info = json.loads(metadata[_STATE_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: header entry {_STATE_KEY!r} is not valid JSON ({err})") from None
    for key in ("optimizer", "scheduler"):
        _field(info, key, dict, path)
    if _field(info, "step", int, path) < 0:
        raise ValueError(f"{path}: field 'step' must be an integer >= 0, got {info['step']!r}")
    # the generator state stays on the CPU; everything else follows the model
    moved = {k: v if k.startswith("rng/") else v.to(device) for k, v in tensors.items()}
    return TrainingState(moved, info)
