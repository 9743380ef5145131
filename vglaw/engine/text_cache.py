"""A frozen text encoder's output per training expression, computed once."""
from __future__ import annotations

import torch

from .. import distributed as dist
from ..model.text import TextEncoder
from ..progress import progress


class FrozenTextCache:
    """A frozen text encoder's output per expression, computed once and kept.

    A frozen encoder (eval mode, no gradients) gives an expression the same features in every
    epoch, so training needs them once per expression instead of once per epoch. Rows are keyed
    by their token ids and kept on the CPU: expressions x tokens x hidden x 4 bytes (about 0.2 GB
    for the 18k expressions of the synthetic demo set, several GB for RefCOCO at 768 wide: it
    is meant for small frozen-text runs). Padding positions come back as zeros; the model only reads
    tokens through the attention mask.

    An expression's features differ in the last bits with the batch it was encoded in (its
    padding and its neighbours change the kernels' summation order). Training therefore encodes
    every expression up front with :meth:`fill`, in the dataset's order, so that a run and the same
    run resumed from a checkpoint get the same bits; :meth:`__call__` encodes what is missing on
    its first use.
    """

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self.rows: dict[bytes, torch.Tensor] = {}

    @staticmethod
    def _keys(ids: torch.Tensor, mask: torch.Tensor) -> tuple[list[bytes], list[int]]:
        """Each CPU row's key (its token ids' bytes) and length, read through numpy: no device wait."""
        lengths = mask.numpy().sum(1).tolist()
        return [row[:n].tobytes() for row, n in zip(ids.numpy(), lengths)], lengths

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor, device: torch.device) -> None:
        """Encode CPU rows ``ids`` / ``mask`` (right-padded) in one batch and keep them."""
        keys, lengths = self._keys(ids, mask)
        width = max(lengths)
        self.encoder.eval()  # frozen: no dropout, whichever mode the model was built or left in
        features = self.encoder(ids[:, :width].to(device), mask[:, :width].to(device)).float().cpu()
        for key, row, n in zip(keys, features, lengths):
            self.rows[key] = row[:n].clone()

    @torch.no_grad()
    def fill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, device: torch.device | str,
             batch_size: int = 256) -> int:
        """Encode the expressions of (N, L) ids and right-padded mask that are not kept yet, in
        their order, ``batch_size`` at a time; returns how many were encoded."""
        keys, _ = self._keys(input_ids, attention_mask)
        first = {}  # each new expression's first row
        for i, key in enumerate(keys):
            if key not in self.rows:
                first.setdefault(key, i)
        new = list(first.values())
        for start in progress(range(0, len(new), batch_size), "text cache", show=dist.is_main(), unit="batch"):
            rows = new[start:start + batch_size]
            self._encode(input_ids[rows], attention_mask[rows], torch.device(device))
        return len(new)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 device: torch.device | str | None = None) -> torch.Tensor:
        """(B, L) ids and right-padded mask -> (B, L, Dt) on ``device`` (default: the ids'), as
        ``encoder(input_ids, attention_mask)``. Give the ids on the CPU, as the loader yields
        them: the keys are then read without waiting for the device."""
        device = input_ids.device if device is None else torch.device(device)
        ids, mask = input_ids.cpu(), attention_mask.cpu()
        keys, lengths = self._keys(ids, mask)
        new = [i for i, key in enumerate(keys) if key not in self.rows]
        if new:
            self._encode(ids[new], mask[new], device)
        out = torch.zeros(*ids.shape, self.encoder.hidden_size)
        for i, key in enumerate(keys):
            out[i, :lengths[i]] = self.rows[key]
        return out.to(device, non_blocking=True)
