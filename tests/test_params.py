"""Parameter counts of the paper's model, derived independently of our modules."""
from functools import partial

import pytest
import torch.nn as nn
from transformers import BertConfig, BertModel

from vglaw import build_model
from vglaw.model.build import BERT_BASE

timm = pytest.importorskip("timm")


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_vitb_parameter_count():
    model = build_model("vitb")
    ref = timm.create_model("samvit_base_patch16", pretrained=False, img_size=448, neck_chans=0, num_classes=0,
                            norm_layer=partial(nn.LayerNorm, eps=1e-6))
    # timm stores the position grid at 28x28 with no cls slot; ViTDet at 14x14 + cls
    backbone = count(ref.patch_embed) + count(ref.blocks) + ref.pos_embed.numel() - 28 * 28 * 768 + 197 * 768
    text = count(BertModel(BertConfig(**dict(BERT_BASE, num_hidden_layers=6)), add_pooling_layer=False))
    C, Dt, K, h = 768, 768, 32, 48
    generator = 12 * Dt + 3 * C * K + K * C + 12 * ((Dt * h + h) + 2 * h + (h * K * K + K * K))
    box = 2 * (Dt * 64 + 64) + (C * 256 + 256) + (256 * 256 + 256) + (256 * 4 + 4)
    mask = (C * 256 * 4 + 256) + 2 * 256 + (256 * Dt * 4 + Dt)
    assert count(model.backbone) == backbone
    assert count(model.text_encoder) == text
    assert count(model.generator) == generator
    assert count(model.box_head) == box and count(model.mask_head) == mask
    assert count(model) == backbone + text + generator + box + mask
    print(f"vitb: backbone {backbone:,} text {text:,} generator {generator:,} box {box:,} mask {mask:,} "
          f"total {count(model):,}")
