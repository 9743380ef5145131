"""The assembled VG-LAW model: text encoder -> weight generator -> language-adaptive ViTDet
-> box and mask heads."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from ..fileio import atomic_write, json_text
from ..hub import MINILM
from .card import TRAINING_NAME, model_card
from .confidence import CALIBRATION_NAME, Calibrator
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


CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"


class VGLAW(nn.Module):
    """Language Adaptive Weight Generation for multi-task visual grounding (Su et al., CVPR 2023).

    Build it with :func:`vglaw.build_model`; the parts are given as arguments here.
    """

    def __init__(self, *, text_encoder: TextEncoder, generator: WeightGenerator | None,
                 backbone: ViT, box_head: BoxHead, mask_head: MaskHead, img_size: int,
                 config=None, exists_head: ExistenceHead | None = None) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.generator = generator
        self.backbone = backbone
        self.box_head = box_head
        self.mask_head = mask_head
        if exists_head is not None:  # registered only when present: state dicts without it are unchanged
            self.exists_head = exists_head
        self.img_size = img_size
        self.config = config  # the VGLAWConfig it was built from (for save_pretrained)
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

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, *, device: str | torch.device | None = None,
                        strict: bool = True, **overrides) -> "VGLAW":
        """The model saved in ``source``: a directory written by :meth:`save_pretrained`, a
        training checkpoint file (``last.pt`` / ``best.pt``) or a Hub repo id ``USER/NAME``
        (through the local Hub cache). Every weight is loaded strictly unless ``strict=False``;
        ``overrides`` replace config fields; ``device`` moves it there."""
        from .io import load_pretrained

        model = load_pretrained(source, strict=strict, **overrides)
        return model if device is None else model.to(device)

    def save_pretrained(self, directory: str | os.PathLike, include_text_encoder: bool = True,
                        training: dict | None = None) -> None:
        """Write ``config.json``, ``model.safetensors`` and the model card ``README.md`` into
        ``directory`` (:meth:`from_pretrained` reads them back; ``vglaw push``
        uploads them to the Hugging Face Hub).

        With ``include_text_encoder=False`` the text encoder's weights are left out; loading
        then takes them from ``config.text_encoder`` (a local pretrained directory).
        ``training`` (see :func:`vglaw.model.card.model_card`) is saved as ``training.json`` and
        rendered into the card. A calibrator is saved as ``calibration.json``.
        """
        if self.config is None:
            raise ValueError("this model has no config; build it with vglaw.build_model")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()
                 if include_text_encoder or not k.startswith("text_encoder.")}
        config = {**self.config_dict(), "includes_text_encoder": include_text_encoder}
        atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        atomic_write(directory / CONFIG_NAME, lambda p: p.write_text(json_text(config, indent=2) + "\n"))
        if training is not None:
            atomic_write(directory / TRAINING_NAME, lambda p: p.write_text(json_text(training, indent=2) + "\n"))
        if self.calibrator is not None:
            self.calibrator.save(directory / CALIBRATION_NAME)
        atomic_write(directory / CARD_NAME, lambda p: p.write_text(model_card(config, training)))

    def config_dict(self) -> dict:
        """The JSON-able config that rebuilds this architecture (text encoder shape included)."""
        if self.config is None:
            raise ValueError("this model has no config; build it with vglaw.build_model")
        config = {**asdict(self.config), "text_config": self.text_encoder.bert.config.to_diff_dict()}
        if not config["existence"]:  # a model without it saves the config.json it always did
            del config["existence"]
        return config
