"""The checkpoint format: the one home of saving and loading VG-LAW models.

``VGLAW.save_pretrained`` and ``VGLAW.from_pretrained`` are :func:`save_pretrained` and
:func:`from_pretrained` here (``vglaw.model`` sets them on the class, so that the model's module
needs to import neither this one nor the builder).

A checkpoint is a directory written by :func:`save_pretrained` (``config.json`` +
``model.safetensors``, no pickle, with the model card ``README.md``), a training checkpoint file
written by ``vglaw train`` (``last.pt`` / ``best.pt``, read with ``torch.load(weights_only=True)``),
or a Hugging Face Hub repo id (``USER/NAME``, through the local Hub cache). The config rebuilds the
architecture and every weight is loaded strictly; a weight holding NaN or infinity is refused,
naming the first such tensor. A confidence calibrator beside the weights (``calibration.json`` in
the directory, ``<file>.calibration.json`` beside a file) is loaded with them. The file names are
:mod:`vglaw.checkpoint_names`' (the Hub download fetches the same files).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint_names import CALIBRATION_NAME, CARD_NAME, CONFIG_NAME, TRAINING_NAME, WEIGHTS_NAME
from ..errors import InputError, MissingFileError
from ..fileio import atomic_write, json_text
from ..hub import resolve_checkpoint
from .build import build_model
from .card import model_card
from .confidence import Calibrator, calibration_path
from .config import model_config_from_dict
from .state import load_state
from .vglaw import VGLAW


def save_pretrained(model: VGLAW, directory: str | os.PathLike, include_text_encoder: bool = True,
                    training: dict | None = None) -> None:
    """Write ``config.json``, ``model.safetensors`` and the model card ``README.md`` into
    ``directory`` (:func:`from_pretrained` reads them back; ``vglaw push`` uploads them to the
    Hugging Face Hub).

    With ``include_text_encoder=False`` the text encoder's weights are left out; loading then
    takes them from ``config.text_encoder`` (a local pretrained directory). ``training`` (see
    :func:`vglaw.model.card.model_card`) is saved as ``training.json`` and rendered into the card.
    A calibrator is saved as ``calibration.json``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if include_text_encoder or not k.startswith("text_encoder.")}
    config = {**model.config_dict(), "includes_text_encoder": include_text_encoder}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, lambda p: p.write_text(json_text(config, indent=2) + "\n"))
    if training is not None:
        atomic_write(directory / TRAINING_NAME, lambda p: p.write_text(json_text(training, indent=2) + "\n"))
    if model.calibrator is not None:
        model.calibrator.save(directory / CALIBRATION_NAME)
    atomic_write(directory / CARD_NAME, lambda p: p.write_text(model_card(config, training)))


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
        raise InputError(f"{path} is not a vglaw checkpoint: give a checkpoint folder ({CONFIG_NAME} + "
                         f"{WEIGHTS_NAME}) or a training .pt written by vglaw train ({reason})") from None
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
    """The files a model loaded from ``source`` (as :func:`from_pretrained` takes it) is made of:
    config and weights (or the training checkpoint file), and the calibrator when there is one."""
    path = resolve_checkpoint(source)
    files = [path / CONFIG_NAME, path / WEIGHTS_NAME] if path.is_dir() else [path]
    if calibration_path(path).is_file():
        files.append(calibration_path(path))
    return files


def from_pretrained(source: str | os.PathLike, *, device: str | torch.device | None = None, strict: bool = True,
                    **overrides) -> VGLAW:
    """The model saved in ``source``: a directory written by :func:`save_pretrained`, a training
    checkpoint file (``last.pt`` / ``best.pt``) or a Hub repo id ``USER/NAME`` (through the local
    Hub cache). Every weight is loaded strictly unless ``strict=False``; ``overrides`` replace
    config fields (``existence=True`` adds the existence output to a model saved without it, its
    head newly initialised: the start of a fine-tuning); ``device`` moves it there."""
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
    return model if device is None else model.to(device)
