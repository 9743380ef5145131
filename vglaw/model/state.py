"""Copying a state dict into a module with every mismatch named."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import InputError

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
        raise InputError(f"checkpoint does not match the model (nothing was loaded):\n{report}")
    module.load_state_dict(to_load, strict=False)
    return report
