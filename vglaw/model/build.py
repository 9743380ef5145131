"""The one builder that wires the model's parts together from a VGLAWConfig."""
from __future__ import annotations

import dataclasses

from ..errors import InputError
from ..hub import resolve_text_source
# check_model_section lives with the config in .config; also importable from here, as before
from .config import BERT_BASE, VARIANTS, VGLAWConfig, check_model_section, model_config_from_dict  # noqa: F401
from .heads import BoxHead, ExistenceHead, MaskHead
from .law import WeightGenerator
from .text import TextEncoder
from .vglaw import VGLAW
from .vit import ViT


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
    exists_head = None
    if config.existence:
        exists_head = ExistenceHead(embed_dim=config.embed_dim, text_dim=text_dim, hidden_dim=config.box_hidden_dim)
    return VGLAW(text_encoder=text_encoder, generator=generator, backbone=backbone, box_head=box_head,
                 mask_head=mask_head, img_size=config.img_size, config=config, exists_head=exists_head)
