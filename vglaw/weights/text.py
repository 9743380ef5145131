"""Text encoder weights from a Hugging Face BERT directory."""
from __future__ import annotations

import os
from pathlib import Path

import torch.nn as nn

from ..errors import MissingFileError
from ..model.text import TextEncoder
from ..model.state import LoadReport, load_state


def load_text_encoder(model: nn.Module, directory: str | os.PathLike) -> LoadReport:
    """Replace ``model.text_encoder``'s weights with a Hugging Face BERT directory's (same
    hidden size and at least as many layers)."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise MissingFileError(f"{directory / 'config.json'} not found: not a Hugging Face model directory")
    layers = model.text_encoder.bert.config.num_hidden_layers
    pretrained = TextEncoder.from_pretrained(directory, layers)
    return load_state(model.text_encoder, pretrained.state_dict(), source=str(directory), strict=True)
