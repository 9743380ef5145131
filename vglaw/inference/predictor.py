"""Ground any expression in any image: ``Grounder.from_pretrained(dir).predict(image, text)``."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from textwrap import shorten

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import PRECISIONS
from ..data.dataset import load_tokenizer
from ..data.transforms import Letterbox, image_region, load_image, normalize_canvas
from ..device import autocast, resolve_device
from ..errors import InputError, InputTypeError
from ..model import VGLAW
from ..model.confidence import confidence_features

ImageLike = str | os.PathLike | Image.Image | np.ndarray
log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One expression's result, in original image pixels."""

    text: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    mask: np.ndarray | None  # (H, W) bool (None only where the caller asked for no masks)
    prob: np.ndarray | None  # (H, W) float32, sigmoid of the mask logits
    attention: np.ndarray | None  # (H, W) float32 in [0, 1]: where the box head's pooling looks, / its maximum
    score: float | None = None  # the calibrated probability that the box is right (IoU >= 0.5); None uncalibrated
    found: bool = True  # False where the score is below the grounder's ``min_score``: not drawn, "not found"


def as_rgb(image: ImageLike) -> Image.Image:
    """A path, PIL image or HxWx3 / HxW uint8 array -> RGB PIL image (EXIF orientation applied
    for files)."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise InputError(f"a numpy image must be HxW or HxWxC uint8, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise InputTypeError(f"expected a path, PIL image or numpy array, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


class Grounder:
    """A forward function with its inference contract, tokenizer and letterbox, for inference on
    your own images.

    ``model`` is a :class:`~vglaw.model.VGLAW` or an exported model's runner
    (:class:`~vglaw.inference.onnx_runner.OnnxModel`): a callable ``(images, input_ids,
    attention_mask, *, use_law, box_attention) -> dict`` with a ``spec``
    (:class:`~vglaw.model.InferenceSpec`: canvas size, token limit, tokenizer, mask threshold).
    The expression changes the backbone's weights, so image features cannot be shared across
    expressions: several expressions for one image run as one batch instead.
    """

    def __init__(self, model, tokenizer=None, *, device: str | torch.device = "auto", precision: str = "fp32",
                 mask_threshold: float | None = None, min_score: float | None = None, compile: bool = False) -> None:
        """``tokenizer``: default, the one ``model.spec`` names. ``device``: auto (the GPU when
        there is one), cpu, cuda or cuda:N. ``min_score``: answers scoring below it are marked
        not found (needs a calibrated model). ``compile`` runs the model through
        ``torch.compile`` (first call slower, later faster)."""
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if min_score is not None and not 0.0 <= min_score <= 1.0:
            raise InputError(f"min_score is a probability in [0, 1], got {min_score}")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device).eval()
        elif self.device.type != "cpu":
            raise InputError(f"{type(model).__name__} runs on the CPU (onnxruntime's CPU provider), not {self.device}")
        self.model, self.spec = model, model.spec
        self._forward = torch.compile(model) if compile else model
        self.tokenizer = tokenizer or load_tokenizer(self.spec.tokenizer)
        self.precision = precision
        # a mask pixel is the object where its probability is above this; default: the model's
        self.mask_threshold = self.spec.mask_threshold if mask_threshold is None else mask_threshold
        self.calibrator, self.min_score = self.spec.calibrator, min_score
        if self.calibrator is None:
            if min_score is not None:
                raise InputError("--min-score needs a calibrated checkpoint, and this one has no calibrator: "
                                 "fit one with vglaw calibrate --checkpoint CK --data PREPARED --split val --replace")
            log.warning("note: this model has no confidence calibrator, so every score is None "
                        "(fit one with vglaw calibrate)")

    @classmethod
    def from_pretrained(cls, checkpoint: str | os.PathLike, *, device: str = "auto", precision: str = "fp32",
                        tokenizer: str | None = None, mask_threshold: float | None = None,
                        min_score: float | None = None, compile: bool = False) -> "Grounder":
        """From a vglaw checkpoint directory or a training checkpoint file."""
        device = resolve_device(device)  # a bad device fails before the model loads
        return cls(VGLAW.from_pretrained(checkpoint), tokenizer and load_tokenizer(tokenizer), device=device,
                   precision=precision, mask_threshold=mask_threshold, min_score=min_score, compile=compile)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, *, tokenizer: str | None = None,
                  mask_threshold: float | None = None, min_score: float | None = None) -> "Grounder":
        """From a file written by ``vglaw export``, run by onnxruntime on the CPU (LAW always on)."""
        from .onnx_runner import OnnxModel

        return cls(OnnxModel(path), tokenizer and load_tokenizer(tokenizer), device="cpu",
                   mask_threshold=mask_threshold, min_score=min_score)

    def tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, int]]]:
        """Token ids and mask of ``texts`` on the device (padded to the longest, cut at the
        model's limit), and the expressions that were cut, each with its token count."""
        if not texts:
            raise InputError("no expression given")
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise InputError(f"empty expression {t!r}: say what to find in the image")
        tokens = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.spec.max_len,
                                return_tensors="pt")
        full = self.tokenizer(texts, verbose=False)["input_ids"]
        cut = [(t, len(ids) - 2) for t, ids in zip(texts, full) if len(ids) > self.spec.max_len]
        return tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device), cut

    def inputs(self, rgb: Image.Image, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """The model's inputs for expressions on one RGB image: the letterboxed image repeated
        per expression, token ids and mask on the device, and the :class:`Letterbox`."""
        ids, mask, cut = self.tokens(texts)
        max_len = self.spec.max_len
        for t, n in cut:
            log.warning('warning: the expression "%s" is %d tokens; the model reads its first %d (%d with '
                        "[CLS] and [SEP])", shorten(t, 60, placeholder="..."), n, max_len - 2, max_len)
        letterbox = Letterbox.centred((rgb.height, rgb.width), self.spec.img_size)
        canvas = letterbox.apply_image(rgb)[None].to(self.device)  # uint8, normalised there
        images = normalize_canvas(canvas, torch.tensor([letterbox.extent])).expand(len(texts), -1, -1, -1)
        return images, ids, mask, letterbox

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                use_law: bool = True) -> dict[str, torch.Tensor]:
        """The model on prepared inputs, at the grounder's precision (box attention included)."""
        with autocast(self.device, self.precision):
            return self._forward(images, input_ids, attention_mask, use_law=use_law, box_attention=True)

    @torch.inference_mode()
    def predict(self, image: ImageLike, text: str | list[str], *, use_law: bool = True):
        """
        Args:
            image: a path, a PIL image, or an HxWx3 uint8 numpy array.
            text: one expression, or a list of expressions for the same image (one batch).
            use_law: False runs the static backbone (to see what the language does).
        Returns:
            a :class:`Prediction`, or a list of them for a list of expressions.
        """
        texts = [text] if isinstance(text, str) else list(text)
        rgb = as_rgb(image)
        images, ids, mask, letterbox = self.inputs(rgb, texts)
        results = self.answers(self.forward(images, ids, mask, use_law=use_law), letterbox, texts)
        return results[0] if isinstance(text, str) else results

    def answers(self, out: dict, letterbox: Letterbox, texts: list[str], *, masks: bool = True,
                attention: bool = True) -> list[Prediction]:
        """The model's outputs for the expressions of one image -> its :class:`Prediction` list,
        in original pixels. Without ``masks`` / ``attention`` those maps are left None (and are
        not computed)."""
        boxes = letterbox.boxes_to_original(out["boxes"].float().cpu())
        n = len(texts)
        probs = heats = [None] * n
        if masks:
            probs = letterbox.maps_to_original(out["mask_logits"][:, 0].float().sigmoid().cpu()).numpy()
        if attention:
            # (B, h, w) token weights -> (B, S, S) on the canvas, each map scaled to a maximum of 1
            size = self.spec.img_size
            heat = F.interpolate(out["box_attention"].float()[:, None], size=(size, size), mode="bilinear",
                                 align_corners=False)[:, 0].cpu()
            heats = letterbox.maps_to_original(heat / heat.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]).numpy()
        scores = self.scores(out, letterbox)
        return [Prediction(t, tuple(round(v, 2) for v in box.tolist()),
                           None if prob is None else prob > self.mask_threshold, prob, heat, score,
                           score is None or self.min_score is None or score >= self.min_score)
                for t, box, prob, heat, score in zip(texts, boxes, probs, heats, scores)]

    def scores(self, out: dict, letterbox: Letterbox) -> list[float | None]:
        """Each answer's calibrated probability of being right, from the forward pass's outputs
        (None for every answer of an uncalibrated model)."""
        if self.calibrator is None:
            return [None] * len(out["boxes"])
        inside = image_region(torch.tensor([letterbox.extent] * len(out["boxes"])), self.spec.img_size)
        features = confidence_features(out["boxes"], out["mask_logits"], out["box_attention"], inside)
        return [round(s, 4) for s in self.calibrator(features).cpu().tolist()]
