"""Checkpoints: a folder with ``model.safetensors`` (weights) and ``config.json`` (everything else).

``config.json`` names the architecture and its constructor arguments, the noise schedule, and
how the weights were made (dataset, seed, steps, the exact command). Loading rebuilds the model
from that description and fills in the weights from the safetensors file; nothing is ever
unpickled, so a checkpoint from an untrusted source cannot run code. Files in pickle-based
formats (``torch.save``, ``.pt``, ``.ckpt``, ``.bin``) are refused with a clear error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn

from diffode.models import architecture_name, build_model
from diffode.schedule import Schedule

FORMAT = "diffode-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
_SCHEDULES = {"linear": Schedule.linear, "scaled_linear": Schedule.scaled_linear, "cosine": Schedule.cosine}
# a JSON header larger than this is not a checkpoint of ours (guards against reading a huge
# length field out of a file in some other format)
_MAX_HEADER = 100_000_000


def schedule_from_config(config: dict[str, Any]) -> Schedule:
    """The schedule described by ``{"name": "linear" | "scaled_linear" | "cosine", **arguments}``,
    e.g. ``{"name": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02}``."""
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


def save_tensors(path: str | os.PathLike[str], tensors: dict[str, Tensor]) -> None:
    """Write tensors to a safetensors file atomically (a crash never leaves a half-written file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))
    os.replace(tmp, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def save_checkpoint(folder: str | os.PathLike[str], model: nn.Module, info: dict[str, Any]) -> Path:
    """Write ``model`` (a built-in architecture) to ``folder``; returns the folder.

    ``info`` is merged into ``config.json`` beside the architecture and its constructor
    arguments; put the schedule there as ``info["schedule"]`` (see :func:`schedule_from_config`)
    for ε-networks, along with provenance (dataset, seed, steps, command). Existing files are
    replaced atomically, so periodic checkpoints can overwrite each other safely.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config_fn = getattr(model, "config", None)
    if not callable(config_fn):
        raise TypeError(f"model must be a built-in diffode architecture, got {type(model).__name__}")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture_name(model),
        "model": config_fn(),
        **info,
    }
    save_tensors(folder / WEIGHTS, dict(model.state_dict()))
    _write_json(folder / CONFIG, config)
    return folder


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, parameters frozen), its config, its schedule
    (``None`` for networks that are not ε-networks, such as the digits classifier)."""

    model: nn.Module
    config: dict[str, Any]
    schedule: Schedule | None


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``config.json`` of a diffode checkpoint folder, checked for the format marker."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise ValueError(f"{folder} is not a diffode checkpoint folder: it has no {CONFIG}")
    config = json.loads(path.read_text())
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f'{path} is not a diffode checkpoint config (expected "format": "{FORMAT}")')
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {config['format_version']}, newer than this diffode reads "
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
    config = read_config(folder)
    model = build_model(config["architecture"], config["model"])
    tensors = load_tensors(Path(folder) / WEIGHTS)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(f"weights in {folder} do not fit the architecture in its config: {first}") from None
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    schedule = schedule_from_config(config["schedule"]) if "schedule" in config else None
    return Checkpoint(model=model, config=config, schedule=schedule)
