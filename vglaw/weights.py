"""Loading weights from the formats people have, without running code from the file.

* detectron2 ViTDet ``.pkl``: read by :class:`RestrictedUnpickler` (numpy arrays and plain
  containers only);
* MAE / timm ViT ``.pth``: ``torch.load(weights_only=True)``;
* Hugging Face BERT directories: ``transformers``;
* vglaw's own checkpoints: safetensors + JSON (``VGLAW.from_pretrained``).

Every loader returns a :class:`LoadReport` naming the missing, unexpected and mis-shaped keys
and the tensors that were resized to the model's grid or window.
"""
from __future__ import annotations

import importlib
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .model.text import TextEncoder
from .model.vit_utils import resize_rel_pos

log = logging.getLogger(__name__)

# (module, name) pairs a weights or annotation pickle may rebuild: numpy arrays, dtypes and
# scalars, and plain containers. Everything else is refused.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"),
    ("_codecs", "encode"),  # how protocol-2 pickles store bytes
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays and plain containers.

    A pickle that names any other callable (``os.system``, ``builtins.eval``, a class...) is
    refused with :class:`pickle.UnpicklingError` before anything is called.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays and plain containers are allowed "
                "(this file may try to run code)")
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
            module = module.replace("numpy.core", "numpy._core", 1)
        if module == "__builtin__":
            module = "builtins"
        return getattr(importlib.import_module(module), name)


def safe_pickle_load(path: str | os.PathLike):
    """Load a pickle (Python 2 pickles included) with :class:`RestrictedUnpickler`."""
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(f"{path}: {e}") from None
        except (EOFError, ValueError) as e:
            raise ValueError(f"{path}: not a readable pickle ({e})") from None


@dataclass
class LoadReport:
    """What happened to each key when a state dict was loaded into a module."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "name: checkpoint (..) vs model (..)"
    resized: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.source}: {len(self.loaded)} tensors match"]
        for what in ("missing", "unexpected", "mismatched", "resized"):
            names = getattr(self, what)
            if names:
                lines.append(f"  {what} ({len(names)}): " + ", ".join(names))
        return "\n".join(lines)


def load_state(module: nn.Module, state: dict[str, torch.Tensor], *, source: str, strict: bool = True,
               allow_missing: tuple[str, ...] = ()) -> LoadReport:
    """Copy ``state`` into ``module``; report (or with ``strict``, raise on) every key that is
    missing, unexpected or has the wrong shape. Keys starting with ``allow_missing`` may be absent."""
    own = module.state_dict()
    report = LoadReport(source=source)
    to_load = {}
    for name, tensor in state.items():
        if name not in own:
            report.unexpected.append(name)
        elif tuple(tensor.shape) != tuple(own[name].shape):
            report.mismatched.append(f"{name}: checkpoint {tuple(tensor.shape)} vs model {tuple(own[name].shape)}")
        else:
            to_load[name] = tensor
    report.missing = [n for n in own if n not in state and not n.startswith(allow_missing or ("\0",))]
    report.loaded = sorted(to_load)
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise ValueError(f"checkpoint does not match the model (nothing was loaded):\n{report}")
    module.load_state_dict(to_load, strict=False)
    return report


def adapt_vit_state(state: dict[str, torch.Tensor], backbone: nn.Module, report: LoadReport) -> dict:
    """Resize a ViT checkpoint's position grid and relative position tables to ``backbone``."""
    own = backbone.state_dict()
    out = dict(state)
    for name, tensor in state.items():
        if name not in own or tuple(tensor.shape) == tuple(own[name].shape):
            continue
        if name == "pos_embed" and tensor.ndim == 3:
            out[name] = _resize_pos_embed(tensor, own[name].shape[1], backbone.pretrain_use_cls_token)
        elif name.endswith(("rel_pos_h", "rel_pos_w")) and tensor.shape[1] == own[name].shape[1]:
            out[name] = resize_rel_pos(tensor.float(), own[name].shape[0]).to(tensor.dtype)
        else:
            continue
        report.resized.append(f"{name}: {tuple(tensor.shape)} -> {tuple(out[name].shape)}")
    return out


def _resize_pos_embed(pos: torch.Tensor, num_positions: int, cls_slot: bool) -> torch.Tensor:
    """(1, [1+] n*n, C) -> (1, [1+] m*m, C): bicubic on the grid; the cls slot is kept (or zero)."""
    n_in = pos.shape[1]
    has_cls = int(round((n_in - 1) ** 0.5)) ** 2 == n_in - 1
    grid = pos[:, 1:] if has_cls else pos
    size = int(round(grid.shape[1] ** 0.5))
    target = int(round((num_positions - cls_slot) ** 0.5))
    # (1, n*n, C) -> (1, C, n, n) -> (1, C, m, m) -> (1, m*m, C)
    g = grid.reshape(1, size, size, -1).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=(target, target), mode="bicubic", align_corners=False)
    g = g.permute(0, 2, 3, 1).reshape(1, target * target, -1).to(pos.dtype)
    if cls_slot:
        cls = pos[:, :1] if has_cls else torch.zeros_like(g[:, :1])
        g = torch.cat([cls, g], dim=1)
    return g


def _load_vit(backbone: nn.Module, state: dict, source: str, strict: bool) -> LoadReport:
    report = LoadReport(source=source)
    state = adapt_vit_state(state, backbone, report)
    loaded = load_state(backbone, state, source=source, strict=False)
    report.loaded, report.missing = loaded.loaded, loaded.missing
    report.unexpected, report.mismatched = loaded.unexpected, loaded.mismatched
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise ValueError(f"checkpoint does not match the backbone:\n{report}")
    log.info("%s", report)
    return report


def load_detectron2_vit(backbone: nn.Module, path: str | os.PathLike, *, strict: bool = False) -> LoadReport:
    """Load a detectron2 ViTDet checkpoint (``.pkl``, ``{"model": {name: ndarray}}``, names
    ``backbone.net.*``) into a :class:`vglaw.model.ViT`. Other detectron2 parts (neck, heads)
    are counted as unexpected."""
    data = safe_pickle_load(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict, got {type(data).__name__}")
    weights = data.get("model", data)
    prefix = "backbone.net."
    state, other = {}, []
    for name, value in weights.items():
        if not name.startswith(prefix):
            other.append(name)
            continue
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{path}: {name} is a {type(value).__name__}, not a numpy array")
        state[name[len(prefix):]] = torch.from_numpy(np.ascontiguousarray(value))
    if not state:
        raise ValueError(f"{path}: no 'backbone.net.*' weights: not a detectron2 ViTDet checkpoint")
    report = _load_vit(backbone, state, str(path), strict)
    report.unexpected += other
    return report


def load_mae_vit(backbone: nn.Module, path: str | os.PathLike, *, strict: bool = False) -> LoadReport:
    """Load an MAE / timm ViT checkpoint (``.pth``, weights under "model" or at the top level,
    names ``blocks.N.attn.qkv.weight``) with ``torch.load(weights_only=True)``."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (optionally under 'model')")
    return _load_vit(backbone, dict(state), str(path), strict)


def load_text_encoder(model: nn.Module, directory: str | os.PathLike) -> LoadReport:
    """Replace ``model.text_encoder``'s weights with a Hugging Face BERT directory's (same
    hidden size and at least as many layers)."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory / 'config.json'} not found: not a Hugging Face model directory")
    layers = model.text_encoder.bert.config.num_hidden_layers
    pretrained = TextEncoder.from_pretrained(directory, layers)
    return load_state(model.text_encoder, pretrained.state_dict(), source=str(directory), strict=True)
