"""The model config: every field with the values it allows, the bounds of the model's sizes, and
the named variants (a variant is a few field values over the defaults)."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import MASK_THRESHOLD, build_dataclass, check_allowed, setting, type_matches
from ..errors import InputError, InputTypeError
from .law import LAW_TYPES
from .vit import ATTENTION_PATHS

# bert-base-uncased: the paper's text encoder, used with random weights when no
# pretrained directory is given
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)


# upper bounds of the model's sizes: far above any VG-LAW (ViT-B: 768 wide, 12 blocks, 448 px), low
# enough that a mistyped size is refused in one line instead of allocating gigabytes
MAX_WIDTH = 8192  # embed_dim and every hidden width
MAX_DEPTH = 128  # blocks and text layers
MAX_HEADS = 128
MAX_IMAGE = 4096  # img_size and pretrain_img_size, in pixels
MAX_VOCAB = 1_000_000
POS_RESIZE = ("bicubic", "tf_bicubic")
POS_INIT = ("trunc_normal", "sincos")
# text_config's sizes (a BertConfig dict): each a positive int up to its bound
TEXT_SIZES = {"vocab_size": MAX_VOCAB, "hidden_size": MAX_WIDTH, "num_hidden_layers": MAX_DEPTH,
              "num_attention_heads": MAX_HEADS, "intermediate_size": 4 * MAX_WIDTH,
              "max_position_embeddings": 65536, "type_vocab_size": 1024}


@dataclass
class VGLAWConfig:
    """Everything needed to rebuild a VG-LAW model (saved into every checkpoint). Each field
    declares the values it allows; :func:`model_config_from_dict` checks them, and the rules
    between fields are checked on construction, all before any tensor is allocated."""

    # canvas and ViTDet backbone
    img_size: int = setting(448, at_least=1, at_most=MAX_IMAGE)
    patch_size: int = setting(16, at_least=1, at_most=MAX_IMAGE)
    embed_dim: int = setting(768, at_least=1, at_most=MAX_WIDTH)
    depth: int = setting(12, at_least=1, at_most=MAX_DEPTH)
    num_heads: int = setting(12, at_least=1, at_most=MAX_HEADS)
    mlp_ratio: float = setting(4.0, above=0, at_most=16)
    window_size: int = setting(14, at_least=0, at_most=MAX_IMAGE)  # 0: every block global
    global_blocks: tuple[int, ...] = setting((2, 5, 8, 11), at_least=0, at_most=MAX_DEPTH - 1)
    drop_path_rate: float = setting(0.1, at_least=0, at_most=1)
    vit_ln_eps: float = setting(1e-6, above=0, at_most=1)
    pretrain_img_size: int = setting(224, at_least=1, at_most=MAX_IMAGE)
    pos_resize: str = setting("bicubic", one_of=POS_RESIZE)
    pos_init: str = setting("trunc_normal", one_of=POS_INIT)
    attention: str = setting("bias", one_of=ATTENTION_PATHS)  # how rel-pos enters attention: "bias" (ViTDet's) or "fold" (same logits, no bias)
    # language adaptive weights
    law_type: str = setting("svd", one_of=LAW_TYPES)
    law_rank: int = setting(32, at_least=1, at_most=MAX_WIDTH)
    law_groups: int = setting(1, one_of=(1, 2, 3))
    generator_heads: int = setting(12, at_least=1, at_most=MAX_HEADS)
    generator_reduction: int = setting(16, at_least=1, at_most=MAX_WIDTH)
    generator_ln_eps: float = setting(1e-5, above=0, at_most=1)
    # text encoder: a local Hugging Face BERT directory (or hub id), else random weights
    # from text_config (bert-base-uncased's shape when None)
    text_encoder: str | None = None
    text_layers: int = setting(6, at_least=1, at_most=MAX_DEPTH)
    text_config: dict | None = None  # its sizes: TEXT_SIZES
    max_len: int = setting(40, at_least=2, at_most=65536)  # tokens, [CLS] and [SEP] included
    # heads
    box_attn_dim: int = setting(64, at_least=1, at_most=MAX_WIDTH)
    box_hidden_dim: int = setting(256, at_least=1, at_most=MAX_WIDTH)
    mask_hidden_dim: int = setting(256, at_least=1, at_most=MAX_WIDTH)
    mask_ln_eps: float = setting(1e-6, above=0, at_most=1)
    # a mask pixel is the object where sigmoid(logit) > this (the authors' value); checkpoints and
    # ONNX files carry it, and the predictor, evaluation and export read it from here
    mask_threshold: float = setting(MASK_THRESHOLD, at_least=0, at_most=1)
    # not in the paper: an existence output (whether the expression names anything in the image),
    # an MLP of width box_hidden_dim on the box head's pooled feature and the text [CLS] feature
    existence: bool = False

    def __post_init__(self) -> None:
        """The rules between fields (each field's own range is checked by model_config_from_dict)."""
        self.global_blocks = tuple(self.global_blocks)
        if self.img_size % self.patch_size:
            raise InputError(f"config key 'img_size' must be a multiple of patch_size {self.patch_size}, "
                             f"got {self.img_size}")
        if self.embed_dim % self.num_heads:
            raise InputError(f"config key 'embed_dim' must be a multiple of num_heads {self.num_heads}, "
                             f"got {self.embed_dim}")
        outside = [b for b in self.global_blocks if b >= self.depth]
        if outside:
            raise InputError(f"config key 'global_blocks' must be block indexes below depth {self.depth}, "
                             f"got {list(self.global_blocks)}")
        text = self.text_config if self.text_config is not None else None if self.text_encoder else BERT_BASE
        if text is None:  # a pretrained text encoder's sizes are checked when it is loaded
            return
        for name, bound in TEXT_SIZES.items():
            value = text.get(name)
            if value is not None and not type_matches(value, int):
                raise InputTypeError(f"config key 'text_config.{name}' must be int, got {value!r}")
            check_allowed(f"text_config.{name}", value, {"at_least": 1, "at_most": bound})
        hidden = text.get("hidden_size", BERT_BASE["hidden_size"])
        for key, heads in (("text_config.num_attention_heads", text.get("num_attention_heads", 12)),
                           ("generator_heads", self.generator_heads if self.law_type != "none" else 1)):
            if hidden % heads:
                raise InputError(f"config key '{key}' must divide text_config.hidden_size {hidden}, got {heads}")
        positions = text.get("max_position_embeddings", BERT_BASE["max_position_embeddings"])
        if self.max_len > positions:
            raise InputError(f"config key 'max_len' must be at most text_config.max_position_embeddings "
                             f"{positions}, got {self.max_len}")


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
    """A VGLAWConfig from a dict (a saved config.json), rejecting unknown keys, wrong types and
    values outside each field's range (before any tensor is allocated), with the key named."""
    return build_dataclass(VGLAWConfig, values)


def check_model_section(model) -> VGLAWConfig:
    """The VGLAWConfig that a run config's model section (``model.name`` with ``model.overrides``)
    builds, every value checked before anything is built; keys named as in the run config."""
    if model.name not in VARIANTS:
        raise InputError(f"config key 'model.name' must be one of {sorted(VARIANTS)}, got {model.name!r}")
    return build_dataclass(VGLAWConfig, {**VARIANTS[model.name], **model.overrides}, "model.overrides.")
