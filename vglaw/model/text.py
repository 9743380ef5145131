"""Text encoder: a Hugging Face BERT keeping only its first layers."""
from __future__ import annotations

import os

import torch
import torch.nn as nn
from transformers import BertConfig, BertModel
from transformers.utils import logging as hf_logging

from ..errors import InputError
from ..hub import resolve_text_source


def truncated_bert_config(config: BertConfig | dict, num_layers: int) -> BertConfig:
    """A copy of ``config`` with ``num_hidden_layers = num_layers`` (checked against the source)."""
    config = BertConfig(**config) if isinstance(config, dict) else BertConfig(**config.to_dict())
    if num_layers > config.num_hidden_layers:
        raise InputError(f"text_layers={num_layers} but the BERT config has only "
                         f"{config.num_hidden_layers} layers")
    config.num_hidden_layers = num_layers
    return config


class BertWithoutPooler(BertModel):
    """BERT built and loaded without its pooler: vglaw reads the token features only, so a
    checkpoint's pooler weights are known leftovers, not a mismatch to report."""

    _keys_to_ignore_on_load_unexpected = [r"^pooler\."]

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config, add_pooling_layer=False)


class TextEncoder(nn.Module):
    """BERT (first ``num_layers`` layers, no pooler). Output: token features (B, L, Dt)."""

    def __init__(self, *, config: BertConfig | dict, num_layers: int) -> None:
        """Random weights from a BertConfig (or its dict); use :meth:`from_pretrained` for weights."""
        super().__init__()
        self.bert = BertWithoutPooler(truncated_bert_config(config, num_layers))

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, num_layers: int) -> "TextEncoder":
        """Load a pretrained BERT from a local Hugging Face model directory (or a hub id when
        online) and keep its first ``num_layers`` layers."""
        source = resolve_text_source(source)
        config = BertConfig.from_pretrained(source)
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # loading is quiet: no "Loading weights" bar per model load
        try:
            bert = BertWithoutPooler.from_pretrained(source, config=truncated_bert_config(config, num_layers))
        finally:
            if shown:
                hf_logging.enable_progress_bar()
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
