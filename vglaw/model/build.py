"""The model config, the named variants and the one builder that wires the parts together."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import MASK_THRESHOLD, build_dataclass
from ..errors import InputError
from ..hub import resolve_text_source
from .heads import BoxHead, MaskHead
from .law import LAW_TYPES, WeightGenerator
from .text import TextEncoder
from .vglaw import VGLAW
from .vit import ViT

# bert-base-uncased: the paper's text encoder, used with random weights when no
# pretrained directory is given
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)


@dataclass
class VGLAWConfig:
    """Everything needed to rebuild a VG-LAW model (saved into every checkpoint)."""

    # canvas and ViTDet backbone
    img_size: int = 448
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_blocks: tuple[int, ...] = (2, 5, 8, 11)
    drop_path_rate: float = 0.1
    vit_ln_eps: float = 1e-6
    pretrain_img_size: int = 224
    pos_resize: str = "bicubic"
    pos_init: str = "trunc_normal"
    attention: str = "bias"  # how rel-pos enters attention: "bias" (ViTDet's) or "fold" (same logits, no bias)
    # language adaptive weights
    law_type: str = "svd"
    law_rank: int = 32
    law_groups: int = 1
    generator_heads: int = 12
    generator_reduction: int = 16
    generator_ln_eps: float = 1e-5
    # text encoder: a local Hugging Face BERT directory (or hub id), else random weights
    # from text_config (bert-base-uncased's shape when None)
    text_encoder: str | None = None
    text_layers: int = 6
    text_config: dict | None = None
    max_len: int = 40
    # heads
    box_attn_dim: int = 64
    box_hidden_dim: int = 256
    mask_hidden_dim: int = 256
    mask_ln_eps: float = 1e-6
    # a mask pixel is the object where sigmoid(logit) > this (the authors' value); checkpoints and
    # ONNX files carry it, and the predictor, evaluation and export read it from here
    mask_threshold: float = MASK_THRESHOLD

    def __post_init__(self) -> None:
        self.global_blocks = tuple(self.global_blocks)
        if self.law_type not in LAW_TYPES:
            raise InputError(f"law_type must be one of {LAW_TYPES}, got {self.law_type!r}")
        if self.img_size % self.patch_size:
            raise InputError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")


VARIANTS: dict[str, dict] = {
    # the paper: ViTDet-B at 448 with 6 BERT-base layers
    "vitb": {},
    # a small model for tests and CPU demos (trained from scratch: sin-cos positions)
    "tiny": dict(img_size=128, embed_dim=128, depth=4, num_heads=4, window_size=4, global_blocks=(1, 3),
                 drop_path_rate=0.0, pretrain_img_size=128, pos_init="sincos", law_rank=8,
                 generator_heads=4, text_layers=2, max_len=20, box_attn_dim=32, box_hidden_dim=64,
                 mask_hidden_dim=32,
                 text_config=dict(BERT_BASE, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=256)),
}


def model_config_from_dict(values: dict) -> VGLAWConfig:
    """A VGLAWConfig from a dict (a saved config.json), rejecting unknown keys and wrong types
    with the key named."""
    return build_dataclass(VGLAWConfig, values)


def build_model(name: str | VGLAWConfig = "vitb", *, load_text_weights: bool = True, **overrides) -> VGLAW:
    """Build a VG-LAW model.

    Args:
        name: a variant of ``VARIANTS`` ("vitb", "tiny") or a VGLAWConfig.
        load_text_weights: load the pretrained text encoder from ``text_encoder`` when it is set
            (False builds the architecture only, for loading a full checkpoint afterwards).
        overrides: VGLAWConfig fields, e.g. ``law_type="none"``, ``text_encoder="/path/to/bert"``.
    """
    if isinstance(name, VGLAWConfig):
        config = model_config_from_dict({**dataclasses.asdict(name), **overrides})
    elif name in VARIANTS:
        config = model_config_from_dict({**VARIANTS[name], **overrides})
    else:
        raise InputError(f"unknown model {name!r}; known: {sorted(VARIANTS)}")

    if config.text_encoder and load_text_weights:
        text_encoder = TextEncoder.from_pretrained(config.text_encoder, config.text_layers)
    elif config.text_config is None and config.text_encoder:
        from transformers import BertConfig

        text_encoder = TextEncoder(config=BertConfig.from_pretrained(resolve_text_source(config.text_encoder)),
                                   num_layers=config.text_layers)
    else:
        text_encoder = TextEncoder(config=config.text_config or BERT_BASE, num_layers=config.text_layers)
    text_dim = text_encoder.hidden_size

    backbone = ViT(img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
                   depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                   drop_path_rate=config.drop_path_rate, ln_eps=config.vit_ln_eps,
                   pretrain_img_size=config.pretrain_img_size, pos_resize=config.pos_resize,
                   window_size=config.window_size, global_blocks=config.global_blocks,
                   pos_init=config.pos_init, attention=config.attention)
    generator = None
    if config.law_type != "none":
        generator = WeightGenerator(law_type=config.law_type, depth=config.depth, text_dim=text_dim,
                                    embed_dim=config.embed_dim, rank=config.law_rank, groups=config.law_groups,
                                    num_heads=config.generator_heads, reduction=config.generator_reduction,
                                    ln_eps=config.generator_ln_eps)
    box_head = BoxHead(embed_dim=config.embed_dim, text_dim=text_dim, attn_dim=config.box_attn_dim,
                       hidden_dim=config.box_hidden_dim)
    mask_head = MaskHead(embed_dim=config.embed_dim, text_dim=text_dim, hidden_dim=config.mask_hidden_dim,
                         ln_eps=config.mask_ln_eps)
    return VGLAW(text_encoder=text_encoder, generator=generator, backbone=backbone, box_head=box_head,
                 mask_head=mask_head, img_size=config.img_size, config=config)
