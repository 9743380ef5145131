"""ViT backbone weights: detectron2 ViTDet ``.pkl`` (restricted unpickler) and MAE / timm
``.pth`` (``torch.load(weights_only=True)``), resized to the model's grid and windows."""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.nn as nn

from ..errors import InputError
from ..model.vit_utils import get_abs_pos, resize_rel_pos
from ..model.state import LoadReport, load_state
from ..unpickle import safe_pickle_load

log = logging.getLogger(__name__)


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
    target = int(round((num_positions - cls_slot) ** 0.5))
    grid = get_abs_pos(pos.float(), has_cls, (target, target))  # (1, m, m, C)
    grid = grid.reshape(1, target * target, -1).to(pos.dtype)  # (1, m*m, C)
    if cls_slot:
        cls = pos[:, :1] if has_cls else torch.zeros_like(grid[:, :1])
        grid = torch.cat([cls, grid], dim=1)
    return grid


def _load_vit(backbone: nn.Module, state: dict, source: str, strict: bool) -> LoadReport:
    resized = LoadReport(source=source)
    state = adapt_vit_state(state, backbone, resized)
    report = load_state(backbone, state, source=source, strict=strict)
    report.resized = resized.resized
    log.info("%s", report)
    return report


def load_detectron2_vit(backbone: nn.Module, path: str | os.PathLike, *, strict: bool = False) -> LoadReport:
    """Load a detectron2 ViTDet checkpoint (``.pkl``, ``{"model": {name: ndarray}}``, names
    ``backbone.net.*``) into a :class:`vglaw.model.ViT`. Other detectron2 parts (neck, heads)
    are counted as unexpected."""
    data = safe_pickle_load(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a dict, got {type(data).__name__}")
    weights = data.get("model", data)
    prefix = "backbone.net."
    state, other = {}, []
    for name, value in weights.items():
        if not name.startswith(prefix):
            other.append(name)
            continue
        if not isinstance(value, np.ndarray):
            raise InputError(f"{path}: {name} is a {type(value).__name__}, not a numpy array")
        state[name[len(prefix):]] = torch.from_numpy(np.ascontiguousarray(value))
    if not state:
        raise InputError(f"{path}: no 'backbone.net.*' weights: not a detectron2 ViTDet checkpoint")
    report = _load_vit(backbone, state, str(path), strict)
    report.unexpected += other
    return report


def load_mae_vit(backbone: nn.Module, path: str | os.PathLike, *, strict: bool = False) -> LoadReport:
    """Load an MAE / timm ViT checkpoint (``.pth``, weights under "model" or at the top level,
    names ``blocks.N.attn.qkv.weight``) with ``torch.load(weights_only=True)``."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: expected a dict of tensors (optionally under 'model')")
    return _load_vit(backbone, dict(state), str(path), strict)
