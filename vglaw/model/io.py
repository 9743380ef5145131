"""Loading VG-LAW models from checkpoint directories written by ``VGLAW.save_pretrained``
(``config.json`` + ``model.safetensors``, no pickle): the config rebuilds the architecture and
every weight is loaded strictly. (Training checkpoints: ``vglaw.engine.checkpoint.load_model``.)"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file

from ..errors import InputError
from ..hub import resolve_checkpoint
from ..weights.state import load_state
from .build import build_model, model_config_from_dict
from .vglaw import CONFIG_NAME, WEIGHTS_NAME, VGLAW


def from_config_dict(config: dict, state: dict[str, torch.Tensor] | None = None, *,
                     source: str = "state dict") -> VGLAW:
    """Rebuild from ``VGLAW.config_dict()`` (no download) and, when given, load ``state`` strictly."""
    config = dict(config)
    includes_text = config.pop("includes_text_encoder", True)
    model = build_model(model_config_from_dict(config), load_text_weights=not includes_text)
    if state is not None:
        load_state(model, state, source=source, strict=True,
                   allow_missing=() if includes_text else ("text_encoder.",))
    return model


def from_pretrained(directory: str | os.PathLike, **overrides) -> VGLAW:
    """Rebuild a model saved by ``VGLAW.save_pretrained`` (no pickle is read) from a local
    directory or a Hub repo id (``USER/NAME``, through the local Hub cache); ``overrides``
    replace config fields."""
    directory = resolve_checkpoint(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {directory} is not a vglaw checkpoint directory")
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or "embed_dim" not in raw:
        raise InputError(f"{config_path} is not a vglaw model config")
    # the architecture comes from the saved text_config; weights from the file (or the
    # pretrained text encoder directory when the file leaves them out)
    try:
        state = load_file(str(weights_path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
        raise InputError(f"{weights_path} is not a readable safetensors file: {e}") from None
    return from_config_dict({**raw, **overrides}, state, source=str(weights_path))

