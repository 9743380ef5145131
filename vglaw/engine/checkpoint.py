"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a ``torch.save`` dict of tensors and plain values (``torch.load`` with
``weights_only=True`` reads it): model and model config, optimizer, scheduler, grad scaler,
epoch / step counters, RNG states, the run config and the best score so far.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_write
# the reader of what save_checkpoint writes is the checkpoint format's, in vglaw.model.io
from ..model.io import read_checkpoint_file as load_checkpoint  # noqa: F401


def rng_state() -> dict:
    """This process's RNG states as plain lists (so they can be gathered across processes)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state().tolist(), "python": random.getstate(),
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` through a temporary file and an atomic rename, so that a
    crash mid-write leaves the previous checkpoint intact."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(state, f)

    atomic_write(path, write)
