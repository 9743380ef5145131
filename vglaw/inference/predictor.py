"""Ground any expression in any image: ``Grounder.from_pretrained(dir).predict(image, text)``."""
from __future__ import annotations

import logging
import os
import re
import reprlib
import unicodedata
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import MAX_PIXELS, MIN_EXISTS, PRECISIONS
from ..data.dataset import load_tokenizer
from ..data.masks import answer_boxes, decode_rle, mask_to_rle
from ..data.transforms import Letterbox, check_pixels, image_region, load_image, normalize_canvas
from ..device import autocast, resolve_device
from ..errors import InputError, InputTypeError
from ..model import VGLAW
from ..model.confidence import confidence_features

ImageLike = str | os.PathLike | Image.Image | np.ndarray
log = logging.getLogger(__name__)


ANSI_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]")
UNSEEN = ("Cc", "Cf", "Cs")  # Unicode categories: controls (NUL, ESC, ...), format (zero-width, bidi), lone surrogates


def printable(text: str) -> str:
    """``text`` as it may be echoed to a terminal or a log, or drawn: ANSI escape sequences,
    control characters (NUL included), zero-width and other format characters (U+200B-U+200D,
    U+2060, U+FEFF, bidi marks) and lone surrogates removed, every whitespace character a space.
    Only what is shown is cleaned: results keep the expression as given."""
    return "".join(" " if c.isspace() else c for c in ANSI_SEQUENCE.sub("", text)
                   if c.isspace() or unicodedata.category(c) not in UNSEEN)


def expression_problem(text) -> str | None:
    """Why ``text`` cannot be an expression, in a few words, or None: it is not a string ("text
    must be a string, got int 42"), not valid Unicode (a lone surrogate, which JSON's ``\ud800``
    can make), or it has no visible character ("empty expression": only whitespace, zero-width
    characters, controls, NUL, escape sequences)."""
    if not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__} {reprlib.repr(text)}"
    if any(unicodedata.category(c) == "Cs" for c in text):
        return "text is not valid Unicode (it holds a lone surrogate, U+D800-U+DFFF)"
    return None if printable(text).strip() else "empty expression"


def shown(text: str, width: int = 60) -> str:
    """``text`` as a message quotes it: :func:`printable`, cut to ``width`` characters."""
    text = printable(text)
    return text if len(text) <= width else text[:width - 3] + "..."


def check_expressions(texts: list) -> None:
    """Refuse an empty list, or a text that :func:`expression_problem` finds wrong (one line)."""
    if not texts:
        raise InputError("no expression given")
    for t in texts:
        problem = expression_problem(t)
        if problem is not None and not isinstance(t, str):
            raise InputTypeError(problem)
        if problem == "empty expression":
            raise InputError(f"{problem} {t!r}: say what to find in the image")
        if problem is not None:
            raise InputError(f"{problem}: {t!r}")


class Prediction:
    """One expression's result, in original image pixels.

    ``text``; ``box`` (x0, y0, x1, y1); ``mask`` (H, W) bool (None only where the caller asked
    for no masks), also held as COCO RLE in ``mask_rle``; ``prob`` (H, W) float32, the sigmoid of
    the mask logits (``mask`` is ``prob`` above the grounder's threshold); ``attention`` (H, W)
    float32 in [0, 1], where the box head's pooling looks, divided by its maximum (None where not
    asked for); ``score``, the calibrated probability that the box is right (IoU >= 0.5; None
    uncalibrated; for a model with the existence output, its logit is one of the calibrator's
    features); ``exists``, the
    probability that the expression names something in the image (None for a model without the
    existence output); ``no_target``, True where ``exists`` is below the grounder's ``min_exists``
    (the expression names nothing in the image); ``found``, False where ``no_target`` or the score
    is below the grounder's ``min_score`` (not drawn, "not found"); ``boxes``, one box per part of the
    mask when it has several (derived from the mask, for expressions naming several objects: "all
    the red shapes"), largest first, else ``[box]``, [] when not found; ``box`` stays the box
    head's single box.

    Memory does not grow with the image's size times the expressions: a prediction keeps its mask
    as RLE and its maps at the model's canvas size; ``mask``, ``prob`` and ``attention`` are made
    at the image's size each time they are read (keep the array when you need it twice).
    """

    def __init__(self, text: str, box: tuple[float, float, float, float], mask, prob, attention,
                 score: float | None = None, found: bool = True, exists: float | None = None,
                 no_target: bool = False) -> None:
        """``mask``: an (H, W) bool array or its COCO RLE; ``prob`` and ``attention``: (H, W)
        arrays or functions that make them; each None where it was not computed."""
        self.text, self.box, self.score, self.exists = text, box, score, exists
        self.no_target, self.found = no_target, found and not no_target
        self.mask_rle = mask if mask is None or isinstance(mask, dict) else mask_to_rle(mask)
        self._prob, self._attention = prob, attention

    @property
    def mask(self) -> np.ndarray | None:
        return None if self.mask_rle is None else decode_rle(self.mask_rle).astype(bool)

    @property
    def boxes(self) -> list[tuple[float, float, float, float]]:
        """x0, y0, x1, y1 of each object the answer names: one per part of the mask when it has
        several (:func:`~vglaw.data.masks.component_boxes`, largest first), else ``[box]``; []
        when not found."""
        return answer_boxes(self.mask, self.box) if self.found else []

    @property
    def prob(self) -> np.ndarray | None:
        return self._prob() if callable(self._prob) else self._prob

    @property
    def attention(self) -> np.ndarray | None:
        return self._attention() if callable(self._attention) else self._attention

    def __repr__(self) -> str:
        exists = "" if self.exists is None else f", exists={self.exists}"
        return f"Prediction(text={self.text!r}, box={self.box}, score={self.score}{exists}, found={self.found})"


def full_size(letterbox: Letterbox, canvas_map: torch.Tensor) -> np.ndarray:
    """One (S, S) map on the canvas -> (H, W) float32 on the original image."""
    return letterbox.maps_to_original(canvas_map[None])[0].numpy()


def as_rgb(image: ImageLike, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """A path, PIL image or HxWx3 / HxW uint8 array -> RGB PIL image (EXIF orientation applied
    for files), refused (one line) when it has more than ``max_pixels`` (None: no limit; a file's
    size is read from its header, before decoding)."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, max_pixels)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise InputError(f"a numpy image must be HxW or HxWxC uint8, got {image.dtype} {image.shape}")
        check_pixels(image.shape[1::-1], max_pixels, "the array")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise InputTypeError(f"expected a path, PIL image or numpy array, got {type(image).__name__}")
    check_pixels(image.size, max_pixels, "the image")
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
                 mask_threshold: float | None = None, min_score: float | None = None, compile: bool = False,
                 max_pixels: int | None = MAX_PIXELS, min_exists: float = MIN_EXISTS) -> None:
        """``tokenizer``: default, the one ``model.spec`` names. ``device``: auto (the GPU when
        there is one), cpu, cuda or cuda:N. ``min_score``: answers scoring below it are marked
        not found (needs a calibrated model). ``compile`` runs the model through
        ``torch.compile`` (first call slower, later faster). ``max_pixels``: images with more
        pixels (width x height) are refused before decoding (default 40 million; None: no
        limit): memory and time grow with the image's pixels. ``min_exists``: a model with the
        existence output answers "not found" where the probability that the expression names
        something in the image is below it (default 0.5)."""
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if min_score is not None and not 0.0 <= min_score <= 1.0:
            raise InputError(f"min_score is a probability in [0, 1], got {min_score}")
        if not isinstance(min_exists, (int, float)) or not 0.0 <= min_exists <= 1.0:
            raise InputError(f"min_exists is a probability in [0, 1], got {min_exists!r}")
        self.min_exists = float(min_exists)
        if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 1):
            raise InputError(f"max_pixels must be a positive whole number of pixels (or None), got {max_pixels!r}")
        self.max_pixels = max_pixels
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
                        min_score: float | None = None, compile: bool = False,
                        max_pixels: int | None = MAX_PIXELS, min_exists: float = MIN_EXISTS) -> "Grounder":
        """From a vglaw checkpoint directory or a training checkpoint file."""
        device = resolve_device(device)  # a bad device fails before the model loads
        return cls(VGLAW.from_pretrained(checkpoint), tokenizer and load_tokenizer(tokenizer), device=device,
                   precision=precision, mask_threshold=mask_threshold, min_score=min_score, compile=compile,
                   max_pixels=max_pixels, min_exists=min_exists)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, *, tokenizer: str | None = None,
                  mask_threshold: float | None = None, min_score: float | None = None,
                  max_pixels: int | None = MAX_PIXELS, min_exists: float = MIN_EXISTS) -> "Grounder":
        """From a file written by ``vglaw export``, run by onnxruntime on the CPU (LAW always on)."""
        from .onnx_runner import OnnxModel

        return cls(OnnxModel(path), tokenizer and load_tokenizer(tokenizer), device="cpu",
                   mask_threshold=mask_threshold, min_score=min_score, max_pixels=max_pixels, min_exists=min_exists)

    def tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, int]]]:
        """Token ids and mask of ``texts`` on the device (padded to the longest, cut at the
        model's limit), and the expressions that were cut, each with its token count. A text that
        is not a string or has no visible character is refused (:func:`expression_problem`); one
        that is mostly word pieces the model does not know ([UNK], or letters that are not Latin)
        gets a warning on stderr: the model reads English."""
        check_expressions(texts)
        tokens = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.spec.max_len,
                                return_tensors="pt")
        full = self.tokenizer(texts, verbose=False)["input_ids"]
        for t, ids in zip(texts, full):
            pieces = self.tokenizer.convert_ids_to_tokens(ids[1:-1])  # without [CLS] and [SEP]
            foreign = sum(piece == self.tokenizer.unk_token or any(c.isalpha() and not
                          unicodedata.name(c, "").startswith("LATIN") for c in piece) for piece in pieces)
            if 2 * foreign > len(pieces):
                log.warning('warning: the model reads English, and %d of the %d word pieces of "%s" are unknown to '
                            "its vocabulary or not in Latin letters: expect a poor answer", foreign, len(pieces),
                            shown(t))
        cut = [(t, len(ids) - 2) for t, ids in zip(texts, full) if len(ids) > self.spec.max_len]
        return tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device), cut

    def inputs(self, rgb: Image.Image, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """The model's inputs for expressions on one RGB image: the letterboxed image repeated
        per expression, token ids and mask on the device, and the :class:`Letterbox`."""
        ids, mask, cut = self.tokens(texts)
        max_len = self.spec.max_len
        for t, n in cut:
            log.warning('warning: the expression "%s" is %d tokens; the model reads its first %d (%d with '
                        "[CLS] and [SEP])", shown(t), n, max_len - 2, max_len)
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
            image: a path, a PIL image, or an HxWx3 uint8 numpy array, of at most the grounder's
                ``max_pixels``.
            text: one expression, or a list of expressions for the same image (one batch).
            use_law: False runs the static backbone (to see what the language does).
        Returns:
            a :class:`Prediction`, or a list of them for a list of expressions.
        """
        texts = list(text) if isinstance(text, (list, tuple)) else [text]
        check_expressions(texts)  # before the image is decoded
        rgb = as_rgb(image, self.max_pixels)
        images, ids, mask, letterbox = self.inputs(rgb, texts)
        results = self.answers(self.forward(images, ids, mask, use_law=use_law), letterbox, texts)
        return results if isinstance(text, (list, tuple)) else results[0]

    def answers(self, out: dict, letterbox: Letterbox, texts: list[str], *, masks: bool = True,
                attention: bool = True) -> list[Prediction]:
        """The model's outputs for the expressions of one image -> its :class:`Prediction` list,
        in original pixels. Without ``masks`` / ``attention`` those maps are left None (and are
        not computed). One expression's map at a time is made at the image's size (for its mask,
        kept as RLE), so memory does not grow with the expressions times the image's pixels."""
        boxes = letterbox.boxes_to_original(out["boxes"].float().cpu())
        n = len(texts)
        probs = heats = [None] * n
        if masks:
            probs = out["mask_logits"][:, 0].float().sigmoid().cpu()  # (B, S, S) on the canvas
        if attention:
            # (B, h, w) token weights -> (B, S, S) on the canvas, each map scaled to a maximum of 1
            size = self.spec.img_size
            heat = F.interpolate(out["box_attention"].float()[:, None], size=(size, size), mode="bilinear",
                                 align_corners=False)[:, 0].cpu()
            heats = heat / heat.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
        scores = self.scores(out, letterbox)
        exists = ([None] * n if "exists_logits" not in out else
                  [round(e, 4) for e in out["exists_logits"].float().sigmoid().cpu().tolist()])
        return [Prediction(t, tuple(round(v, 2) for v in box.tolist()),
                           None if prob is None else mask_to_rle(full_size(letterbox, prob) > self.mask_threshold),
                           None if prob is None else partial(full_size, letterbox, prob.clone()),
                           None if heat is None else partial(full_size, letterbox, heat.clone()), score,
                           score is None or self.min_score is None or score >= self.min_score, e,
                           e is not None and e < self.min_exists)
                for t, box, prob, heat, score, e in zip(texts, boxes, probs, heats, scores, exists)]

    def scores(self, out: dict, letterbox: Letterbox) -> list[float | None]:
        """Each answer's calibrated probability of being right, from the forward pass's outputs
        (None for every answer of an uncalibrated model); with the existence output, the
        calibrator also reads its logit."""
        if self.calibrator is None:
            return [None] * len(out["boxes"])
        inside = image_region(torch.tensor([letterbox.extent] * len(out["boxes"])), self.spec.img_size)
        features = confidence_features(out["boxes"], out["mask_logits"], out["box_attention"], inside,
                                       out.get("exists_logits"))
        return [round(s, 4) for s in self.calibrator(features).cpu().tolist()]
