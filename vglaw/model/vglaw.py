"""The assembled VG-LAW model: text encoder -> weight generator -> language-adaptive ViTDet
-> box and mask heads."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..hub import MINILM
from .confidence import Calibrator
from .config import VGLAWConfig
from .heads import BoxHead, ExistenceHead, MaskHead
from .law import LawFactors, WeightGenerator
from .text import TextEncoder
from .vit import ViT


@dataclass(frozen=True)
class InferenceSpec:
    """What inference needs besides the forward pass, as the model and an exported ONNX file
    state it alike: the canvas size, the token limit, the tokenizer's source and the mask
    threshold (a pixel is the object where sigmoid(logit) > it), and the confidence calibrator
    (None when the checkpoint has none)."""

    img_size: int
    max_len: int
    tokenizer: str
    mask_threshold: float
    calibrator: Calibrator | None = None


class VGLAW(nn.Module):
    """Language Adaptive Weight Generation for multi-task visual grounding (Su et al., CVPR 2023).

    Build it with :func:`vglaw.build_model`; the parts are given as arguments here, with the
    ``config`` they were built from (saved with the weights).

    ``VGLAW.from_pretrained`` and ``model.save_pretrained`` are :func:`vglaw.model.io.from_pretrained`
    and :func:`vglaw.model.io.save_pretrained`, set on the class by ``vglaw.model`` (io owns the
    checkpoint format and imports this module; this module imports neither io nor the builder).
    """

    def __init__(self, *, text_encoder: TextEncoder, generator: WeightGenerator | None,
                 backbone: ViT, box_head: BoxHead, mask_head: MaskHead, img_size: int,
                 config: VGLAWConfig, exists_head: ExistenceHead | None = None) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.generator = generator
        self.backbone = backbone
        self.box_head = box_head
        self.mask_head = mask_head
        if exists_head is not None:  # registered only when present: state dicts without it are unchanged
            self.exists_head = exists_head
        self.img_size = img_size
        self.config = config  # the VGLAWConfig it was built from (saved with the weights)
        self.freeze_text = False  # a frozen text encoder stays in eval mode (no dropout) when training
        self.calibrator: Calibrator | None = None  # scores answers (see vglaw.model.confidence)

    def train(self, mode: bool = True) -> "VGLAW":
        super().train(mode)
        if self.freeze_text:
            self.text_encoder.eval()
        return self

    def law_factors(self, text: torch.Tensor, text_mask: torch.Tensor) -> list[LawFactors] | None:
        """Per-block LAW factors for the text features, or None for ``law_type="none"``."""
        return None if self.generator is None else self.generator(text, text_mask)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, use_law: bool = True,
                text: torch.Tensor | None = None, box_attention: bool = False) -> dict[str, torch.Tensor]:
        """
        Args:
            images: (B, 3, S, S) letterboxed, ImageNet-normalised canvas, S = ``img_size``.
            input_ids, attention_mask: (B, L) BERT token ids and mask (1 = token, 0 = padding).
            token_type_ids: (B, L), zeros when None.
            use_law: False runs the static backbone (the generator is skipped), to see what
                the language does to the features.
            text: (B, L, Dt) the text encoder's output for ``input_ids``, when it is already
                known (a frozen encoder's :class:`~vglaw.engine.text_cache.FrozenTextCache`); the encoder
                is then skipped.
            box_attention: also return the box head's pooling weights.
        Returns:
            dict with
              ``boxes`` (B, 4): normalised (cx, cy, w, h) on the canvas, in [0, 1];
              ``box_logits`` (B, 4): the same before the sigmoid;
              ``mask_logits`` (B, 1, S, S): mask logits on the canvas;
              ``features`` (B, C, S/p, S/p): the backbone's last feature map;
              ``exists_logits`` (B,), models with the existence output only: ``sigmoid`` gives the
              probability that the expression names something in the image;
              ``box_attention`` (B, S/p, S/p), with ``box_attention=True``: where the box head's
              language-guided pooling looks (weights summing to 1 per sample).
        """
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"images must be (B, 3, {self.img_size}, {self.img_size}), got {tuple(images.shape)}")
        if text is None:
            text = self.text_encoder(input_ids, attention_mask, token_type_ids)  # (B, L, Dt)
        law = self.law_factors(text, attention_mask) if use_law else None
        features = self.backbone(images, law)  # (B, C, h, w)
        text_cls = text[:, 0]  # (B, Dt)
        pooled = self.box_head.pool(features, text_cls)  # (B, C)
        box_logits = self.box_head.mlp(pooled)
        out = {
            "boxes": box_logits.sigmoid(),
            "box_logits": box_logits,
            "mask_logits": self.mask_head(features, text_cls, self.img_size),
            "features": features,
        }
        if self.has_existence:
            out["exists_logits"] = self.exists_head(pooled, text_cls)
        if box_attention:
            out["box_attention"] = self.box_head.attention(features, text_cls)
        return out

    @property
    def has_existence(self) -> bool:
        """Whether the model has the existence output (``config.existence``)."""
        return hasattr(self, "exists_head")

    @property
    def spec(self) -> InferenceSpec:
        """The inference contract of this model (see :class:`InferenceSpec`)."""
        return InferenceSpec(img_size=self.img_size, max_len=self.config.max_len,
                             tokenizer=str(self.config.text_encoder or MINILM),
                             mask_threshold=self.config.mask_threshold, calibrator=self.calibrator)

    def config_dict(self) -> dict:
        """The JSON-able config that rebuilds this architecture (text encoder shape included)."""
        config = {**asdict(self.config), "text_config": self.text_encoder.bert.config.to_diff_dict()}
        if not config["existence"]:  # a model without it saves the config.json it always did
            del config["existence"]
        return config
