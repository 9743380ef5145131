"""How likely an answer is to be right: signals the model computes anyway, and a calibrator that
maps them to a probability.

VG-LAW answers one question twice: the box head pools the features where the expression
points, the mask head scores every pixel against the expression. Where the two agree and are
sure, the box is usually right; where they disagree, usually wrong. :func:`confidence_features`
measures that on the canvas (inside the image, never the padding) from the forward pass's
outputs alone, so a PyTorch model and its ONNX export give the same features.
:class:`Calibrator` is a logistic regression over them, fitted on a labelled split (``vglaw
calibrate``): its output is the probability that the box's IoU with the truth is at least 0.5.
Each feature is clipped to the range it took on the fitting split, so that an answer unlike any
it was fitted on (an empty mask on a blank image) is not extrapolated linearly to any score.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_convert

from ..checkpoint_names import CALIBRATION_NAME
from ..errors import InputError
from ..fileio import atomic_write, json_text

log = logging.getLogger(__name__)

FG = 0.5  # a mask pixel counts as the object where its probability is above this (fixed: the
#           features do not move with a user's --mask-threshold)

FEATURES = {
    "box_mask_iou": "IoU of the box with the bounding box of the mask (pixels with p > 0.5)",
    "mask_confidence": "mean probability of the mask's pixels (p > 0.5); 0 for an empty mask",
    "box_probability": "mean mask probability inside the box",
    "mass_in_box": "share of the mask's probability mass inside the box",
    "mask_peak": "the largest mask probability",
    "mask_logit_peak": "the largest mask logit (the text-pixel agreement, before the sigmoid saturates)",
    "mask_logit_mean": "mean mask logit of the mask's pixels (p > 0.5); 0 for an empty mask",
    "attention_entropy": "entropy of the box head's pooling weights / log(tokens): 0 on one token, 1 uniform",
    "attention_peak": "the largest pooling weight of the box head",
}
# a model with the existence output also gives this one (the calibrator then uses it: the score is
# low where the model says the expression names nothing in the image)
EXISTS_FEATURE = "exists_logit"
KNOWN_FEATURES = {**FEATURES, EXISTS_FEATURE: "the existence output's logit (a model with the existence output)"}


def _in_box(boxes_xyxy: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 4) xyxy canvas pixels -> (B, S, S) bool: pixels whose centre lies in the box."""
    centres = torch.arange(size, device=boxes_xyxy.device, dtype=torch.float32) + 0.5
    x0, y0, x1, y1 = boxes_xyxy.unbind(1)
    in_x = (centres >= x0[:, None]) & (centres <= x1[:, None])
    in_y = (centres >= y0[:, None]) & (centres <= y1[:, None])
    return in_y[:, :, None] & in_x[:, None, :]


def _diag_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of row i of ``a`` with row i of ``b``, (B, 4) xyxy each."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-6)


@torch.no_grad()
def confidence_features(boxes: torch.Tensor, mask_logits: torch.Tensor, box_attention: torch.Tensor,
                        inside: torch.Tensor, exists_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """
    Args:
        boxes: (B, 4) normalised (cx, cy, w, h) on the canvas; mask_logits: (B, 1, S, S);
        box_attention: (B, h, w) the box head's pooling weights; inside: (B, S, S) bool, the
        image's pixels on each canvas (``vglaw.data.transforms.image_region``); exists_logits:
        (B,), a model with the existence output's.
    Returns:
        {name: (B,) float32} for every name of :data:`FEATURES`, in that order, and
        :data:`EXISTS_FEATURE` last when ``exists_logits`` is given.
    """
    logits = mask_logits[:, 0].float()
    B, S, _ = logits.shape
    inside = inside.to(logits.device)
    prob = logits.sigmoid() * inside
    box = box_convert(boxes.float(), "cxcywh", "xyxy") * S
    fg = (prob > FG)
    n_fg = fg.flatten(1).sum(1)
    # the mask's bounding box, in canvas pixels (x1, y1 exclusive); a zero box for an empty mask
    pixels = torch.arange(S, device=logits.device)
    cols, rows = fg.any(1), fg.any(2)  # (B, S) each
    big = torch.full_like(cols, S, dtype=torch.long)
    x0 = torch.where(cols, pixels, big).amin(1)
    x1 = torch.where(cols, pixels + 1, 0 * big).amax(1)
    y0 = torch.where(rows, pixels, big).amin(1)
    y1 = torch.where(rows, pixels + 1, 0 * big).amax(1)
    mask_box = torch.stack([x0, y0, x1, y1], 1).float() * (n_fg > 0)[:, None]
    in_box = _in_box(box, S) & inside
    attention = box_attention.float().flatten(1)  # (B, hw), each row sums to 1
    entropy = -(attention * attention.clamp(min=1e-12).log()).sum(1) / math.log(attention.shape[1])
    mass = prob.flatten(1).sum(1)
    return {
        "box_mask_iou": _diag_iou(box, mask_box),
        "mask_confidence": (prob * fg).flatten(1).sum(1) / n_fg.clamp(min=1),
        "box_probability": (prob * in_box).flatten(1).sum(1) / in_box.flatten(1).sum(1).clamp(min=1),
        "mass_in_box": (prob * in_box).flatten(1).sum(1) / mass.clamp(min=1e-6),
        "mask_peak": prob.flatten(1).amax(1),
        "mask_logit_peak": logits.masked_fill(~inside, -1e4).flatten(1).amax(1),
        "mask_logit_mean": (logits * fg).flatten(1).sum(1) / n_fg.clamp(min=1),
        "attention_entropy": entropy,
        "attention_peak": attention.amax(1),
    } | ({} if exists_logits is None else {EXISTS_FEATURE: exists_logits.float().to(logits.device)})


OLD_FILE_RANGE = 5.0  # a calibrator saved without its features' ranges clips each to mean +- this many scales


@dataclass(frozen=True)
class Calibrator:
    """A logistic regression over named confidence features: ``score = sigmoid(intercept +
    sum_i coef_i * (clip(x_i, low_i, high_i) - mean_i) / scale_i)``, the probability that the box
    is right (IoU >= 0.5).

    ``low``/``high`` are each feature's smallest and largest value on the fitting data, so the
    clip changes nothing there; outside it, the line fitted inside would be extrapolated without
    bound. (It was: in the bundled demo calibrator ``mask_peak`` spans 0.980 to 1.000 on all 1798
    fitting answers, so its scale is 0.0011 and its weight a small -0.0155; on the empty mask of
    a blank image it is near 0, some 900 scales below its mean, and alone added +14 to the logit:
    the answer scored 1.00.) A calibrator saved without the ranges (an older vglaw) clips each
    feature to its mean +- 5 scales instead.

    Each coefficient is stored with its feature's name and is applied to that feature by name, so
    the order of features in a file or a dict never matters; a name this version of vglaw does not
    compute is an error, never a silent zero."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    fitted_on: dict = field(default_factory=dict)  # checkpoint, data, split, samples
    metrics: dict = field(default_factory=dict)  # of the fit: AUROC, ECE, ...
    low: tuple[float, ...] = ()  # each feature's range on the fitting data; () when the file had none
    high: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in KNOWN_FEATURES]
        if unknown:
            raise InputError(f"the calibrator uses features this vglaw does not compute: {unknown} "
                             f"(known: {', '.join(KNOWN_FEATURES)}); refit it with vglaw calibrate")
        lengths = {len(self.features), len(self.mean), len(self.scale), len(self.coef)}
        if len(lengths) != 1 or len(set(self.features)) != len(self.features):
            raise InputError("a calibrator needs one mean, scale and coefficient per feature, each feature once")
        if (self.low or self.high) and not len(self.low) == len(self.high) == len(self.features):
            raise InputError("a calibrator's fitted ranges need one low and one high per feature")

    def ranges(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(low, high) per feature: the fitted ranges, or mean +- 5 scales where none were saved."""
        if self.low:
            return self.low, self.high
        return (tuple(m - OLD_FILE_RANGE * s for m, s in zip(self.mean, self.scale)),
                tuple(m + OLD_FILE_RANGE * s for m, s in zip(self.mean, self.scale)))

    def __call__(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """{name: (B,)} -> (B,) float32 probabilities in [0, 1]."""
        missing = [f for f in self.features if f not in features]
        if missing:
            also = (" (a calibrator fitted on a model with the existence output scores only such a model)"
                    if EXISTS_FEATURE in missing else "")
            raise InputError(f"features {missing} are missing (given: {sorted(features)}){also}")
        z = torch.full_like(features[self.features[0]], self.intercept, dtype=torch.float64)
        for name, mean, scale, coef, low, high in zip(self.features, self.mean, self.scale, self.coef, *self.ranges()):
            z = z + coef * (features[name].double().clamp(low, high) - mean) / scale
        return z.sigmoid().float()

    def fitted_on_words(self) -> str:
        """Where it was fitted, in words: "N expressions of DATA (SPLIT)"."""
        info = self.fitted_on
        return f"{info.get('samples', '?')} expressions of {info.get('data', 'an unnamed set')} ({info.get('split', '?')})"

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        d = asdict(self)
        per_feature = [{"name": n, "mean": m, "scale": s, "coef": c}
                       for n, m, s, c in zip(d.pop("features"), d.pop("mean"), d.pop("scale"), d.pop("coef"))]
        for row, low, high in zip(per_feature, d.pop("low"), d.pop("high")):
            row.update(low=low, high=high)
        return {"model": "logistic regression on standardised features, each clipped to its range on the fitting "
                         "data [low, high]; score = P(box IoU >= 0.5)",
                "intercept": d.pop("intercept"), "features": per_feature, **d}

    @classmethod
    def from_dict(cls, d: dict, source: str = "calibrator") -> "Calibrator":
        try:
            rows = d["features"]
            column = lambda key: tuple(float(r[key]) for r in rows)  # noqa: E731
            ranged = any("low" in r or "high" in r for r in rows)  # then every row needs both
            calibrator = cls(tuple(r["name"] for r in rows), column("mean"), column("scale"), column("coef"),
                             float(d["intercept"]), dict(d.get("fitted_on", {})), dict(d.get("metrics", {})),
                             column("low") if ranged else (), column("high") if ranged else ())
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{source} is not a vglaw calibrator ({type(e).__name__}: {e})") from None
        if not ranged:
            log.warning("note: %s has no fitted feature ranges (an older vglaw wrote it), so each feature is "
                        "clipped to its mean +- %g scales; refit it with vglaw calibrate to store them",
                        source, OLD_FILE_RANGE)
        return calibrator

    def save(self, path: str | os.PathLike) -> None:
        atomic_write(Path(path), lambda p: p.write_text(json_text(self.to_dict(), indent=2) + "\n"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibrator":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(d, str(path))


def calibration_path(checkpoint: str | os.PathLike) -> Path:
    """Where a checkpoint's calibrator lives: ``calibration.json`` in a checkpoint directory,
    ``<file>.calibration.json`` beside a training checkpoint file."""
    checkpoint = Path(checkpoint)
    return checkpoint / CALIBRATION_NAME if checkpoint.is_dir() else checkpoint.with_name(
        checkpoint.name + "." + CALIBRATION_NAME)


ECE_BINS = 10  # equal-width score bins of the reliability diagram and of the ECE


def reliability_bins(scores: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Scores in ``bins`` equal-width bins of [0, 1]: per bin its count, mean score and the share
    of right answers (the reliability diagram's bars)."""
    index = np.minimum((scores * bins).astype(int), bins - 1)
    return [{"low": b / bins, "high": (b + 1) / bins, "count": int((index == b).sum()),
             "mean_score": float(scores[index == b].mean()) if (index == b).any() else None,
             "accuracy": float(correct[index == b].mean()) if (index == b).any() else None} for b in range(bins)]


def coverage_curve(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Prec@0.5 of the k most confident answers, k = 1..n (ties kept in input order)."""
    order = np.argsort(-scores, kind="stable")
    return np.cumsum(correct[order]) / np.arange(1, len(scores) + 1)
