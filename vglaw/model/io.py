"""Loading VG-LAW models: the one loader behind ``VGLAW.from_pretrained``.

A checkpoint is a directory written by ``VGLAW.save_pretrained`` (``config.json`` +
``model.safetensors``, no pickle), a training checkpoint file written by ``vglaw train``
(``last.pt`` / ``best.pt``, read with ``torch.load(weights_only=True)``), or a Hugging Face Hub
repo id (``USER/NAME``, through the local Hub cache). The config rebuilds the architecture and
every weight is loaded strictly; a weight holding NaN or infinity is refused, naming the first such
tensor. A confidence calibrator beside the weights (``calibration.json`` in the directory,
``<file>.calibration.json`` beside a file) is loaded with them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import InputError, MissingFileError
from ..hub import resolve_checkpoint
from .build import build_model, model_config_from_dict
from .confidence import Calibrator, calibration_path
from .state import load_state
from .vglaw import CONFIG_NAME, WEIGHTS_NAME, VGLAW


def from_config_dict(config: dict, state: dict[str, torch.Tensor] | None = None, *,
                     source: str = "state dict", strict: bool = True, new_existence: bool = False) -> VGLAW:
    """Rebuild from ``VGLAW.config_dict()`` (no download) and, when given, load ``state``.
    ``new_existence``: the existence output is added to a model saved without it (its head starts
    from its initialisation, the rest is loaded strictly)."""
    config = dict(config)
    includes_text = config.pop("includes_text_encoder", True)
    model = build_model(model_config_from_dict(config), load_text_weights=not includes_text)
    if state is not None:
        allow_missing = (() if includes_text else ("text_encoder.",)) + (("exists_head.",) if new_existence else ())
        load_state(model, state, source=source, strict=strict, allow_missing=allow_missing)
    return model


def read_checkpoint_file(path: str | os.PathLike) -> dict:
    """The dict of a training checkpoint file (``torch.load`` with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - name the file whatever went wrong
        # torch's own message would suggest weights_only=False, which must never be done with an
        # unknown file: only its first line is kept, and only when it is not that advice
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = type(e).__name__ if "weights_only" in reason else reason
        raise InputError(f"{path} is not a vglaw checkpoint: give a checkpoint folder (config.json + "
                         f"model.safetensors) or a training .pt written by vglaw train ({reason})") from None
    missing = {"model", "model_config"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise InputError(f"{path} is not a vglaw training checkpoint (lacks {sorted(missing)})")
    check_finite(state["model"], path)
    return state


def check_finite(state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Refuse weights holding NaN or infinity (a model that answers NaN), naming the first tensor."""
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise InputError(f"{source}: weight {name} holds {bad} non-finite value(s) (NaN or infinity); "
                             "a model with such weights answers NaN, so it is not loaded")


def _read_directory(directory: Path) -> tuple[dict, dict[str, torch.Tensor], Path]:
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise MissingFileError(f"{path} not found: {directory} is not a vglaw checkpoint directory")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or "embed_dim" not in config:
        raise InputError(f"{config_path} is not a vglaw model config")
    # the architecture comes from the saved text_config; weights from the file (or the
    # pretrained text encoder directory when the file leaves them out)
    try:
        state = load_file(str(weights_path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
        raise InputError(f"{weights_path} is not a readable safetensors file: {e}") from None
    check_finite(state, weights_path)
    return config, state, weights_path


def checkpoint_files(source: str | os.PathLike) -> list[Path]:
    """The files a model loaded from ``source`` (as :func:`load_pretrained` takes it) is made of:
    config and weights (or the training checkpoint file), and the calibrator when there is one."""
    path = resolve_checkpoint(source)
    files = [path / CONFIG_NAME, path / WEIGHTS_NAME] if path.is_dir() else [path]
    if calibration_path(path).is_file():
        files.append(calibration_path(path))
    return files


def load_pretrained(source: str | os.PathLike, *, strict: bool = True, **overrides) -> VGLAW:
    """A model from a checkpoint directory, a training checkpoint file or a Hub repo id;
    ``overrides`` replace config fields (``existence=True`` adds the existence output to a model
    saved without it, its head newly initialised: the start of a fine-tuning)."""
    path = resolve_checkpoint(source)
    if path.is_dir():
        config, state, origin = _read_directory(path)
    else:
        checkpoint = read_checkpoint_file(path)
        config, state, origin = checkpoint["model_config"], checkpoint["model"], path
    new_existence = bool(overrides.get("existence")) and not config.get("existence")
    model = from_config_dict({**config, **overrides}, state, source=str(origin), strict=strict,
                             new_existence=new_existence)
    if calibration_path(path).is_file():
        model.calibrator = Calibrator.load(calibration_path(path))
    return model


def from_pretrained(directory: str | os.PathLike, **overrides) -> VGLAW:
    """``VGLAW.from_pretrained`` (kept as ``vglaw.from_pretrained``)."""
    return load_pretrained(directory, **overrides)
