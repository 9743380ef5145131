"""Where a command runs: one resolver for every ``--device`` and ``run.device``, and the
arithmetic (``--precision``) of a forward pass there."""
from __future__ import annotations

import contextlib
import logging
import re

import torch

from .errors import InputError

log = logging.getLogger(__name__)
CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device = "auto", *, local_rank: int = 0) -> torch.device:
    """``auto``: the GPU when CUDA has one, else the CPU; ``cpu``; ``cuda`` (GPU ``local_rank``,
    as under torchrun) or ``cuda:N``. A GPU that is not there, or any other name, is an
    InputError naming the valid values: nothing falls back silently. Logs the choice (not for a
    ``torch.device``, which was resolved before)."""
    resolved_before = isinstance(name, torch.device)
    name = str(name).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        device = torch.device("cpu")
    elif re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r}: no CUDA GPU is visible to torch {torch.__version__} here; "
                             f"use auto or cpu (valid: {CHOICES})")
        index = int(name.split(":")[1]) if ":" in name else local_rank
        if index >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0.."
                             f"cuda:{torch.cuda.device_count() - 1}")
        device = torch.device("cuda", index)
    else:
        raise InputError(f"unknown device {name!r}: use {CHOICES}")
    if not resolved_before:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
        log.info("device: %s (%s)", device, where)
    return device


def autocast(device: torch.device, precision: str):
    """The context of a forward pass in ``precision`` (fp32, bf16 or fp16) on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)
