"""A frozen text encoder's output per training expression, computed once."""
from __future__ import annotations

import torch

from ..model.text import TextEncoder


class FrozenTextCache:
    """A frozen text encoder's output per expression, computed on its first use and kept.

    A frozen encoder (eval mode, no gradients) gives an expression the same features in every
    epoch, so training needs them once per expression instead of once per epoch. Rows are keyed
    by their token ids and kept on the CPU: expressions x tokens x hidden x 4 bytes (about 0.2 GB
    for the 18k expressions of the synthetic demo set, several GB for RefCOCO at 768 wide: it
    is meant for small frozen-text runs). Padding positions come back as zeros; the model only reads
    tokens through the attention mask.
    """

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self.rows: dict[bytes, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 device: torch.device | str | None = None) -> torch.Tensor:
        """(B, L) ids and right-padded mask -> (B, L, Dt) on ``device`` (default: the ids'), as
        ``encoder(input_ids, attention_mask)``. Give the ids on the CPU, as the loader yields
        them: the keys are then read without waiting for the device."""
        device = input_ids.device if device is None else torch.device(device)
        ids, mask = input_ids.cpu(), attention_mask.cpu()
        lengths = mask.sum(1).tolist()
        keys = [row[:n].tobytes() for row, n in zip(ids.numpy(), lengths)]
        new = [i for i, key in enumerate(keys) if key not in self.rows]
        if new:
            features = self.encoder(ids[new].to(device), mask[new].to(device)).float().cpu()
            for i, row in zip(new, features):
                self.rows[keys[i]] = row[:lengths[i]].clone()
        out = torch.zeros(*ids.shape, self.encoder.hidden_size)
        for i, key in enumerate(keys):
            out[i, :lengths[i]] = self.rows[key]
        return out.to(device, non_blocking=True)
