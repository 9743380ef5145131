"""REC and RES metrics, under two protocols (``vglaw eval --protocol``).

``original`` (vglaw's default) scores in original image pixels. REC: the predicted box, mapped
back from the canvas and clipped to the image, is a hit when its IoU with the annotated box is
>= 0.5. RES: the canvas mask probabilities of the image's region are resized back to the
original image (bilinear) and thresholded (> mask threshold); per sample IoU = I / U (1 when
both masks are empty); mIoU = its mean, oIoU = total intersection / total union, and
Prec@{0.5, ..., 0.9} counts IoU >= t.

``authors`` computes what the authors' MindSpore evaluation computes (``src/eval.py`` with
``box_ious_v2`` and ``mask_iou`` of ``src/utils.py``), on the padded canvas. REC: the box as
the model gives it, normalised (cx, cy, w, h) on the canvas, never clipped (it may cover the
padding), against the annotated box scaled by canvas size / longer image side and shifted by
the centring offset; intersection sides clipped to [0, 10], union to [1e-6, 10]; a hit when
IoU >= 0.5. RES: the whole canvas (padding included) thresholded (sigmoid > mask threshold)
against the ground-truth mask resized (nearest) and zero-padded onto the canvas, then resized
(nearest) to the prediction's size (their code writes a fixed 896 x 896 there, which is the
prediction's size only on an 896 canvas); per sample IoU = (I + 1e-10) / (U + 1e-10); mIoU = its
mean; Prec@t counts IoU > t (strictly). They compute no oIoU, so this protocol reports none.
Both are computed in float32, as their tensors are.

The confidence metrics (:func:`confidence_metrics`, :func:`separation_auroc`) say how well a
calibrator's scores tell right answers from wrong ones: AUROC, expected calibration error and
Prec@0.5 of the most confident answers. They are computed from the score bins and the coverage
curve of :mod:`vglaw.model.confidence`, which the reliability pictures (vglaw.inference, which does
not import the engine) draw.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from .. import distributed as dist
from ..data.masks import iou_of_counts, mask_intersection_union
from ..data.transforms import Letterbox
from ..errors import InputError
from ..model.confidence import coverage_curve, reliability_bins

PROTOCOLS = ("original", "authors")
MASK_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
COVERAGES = (0.5, 0.8, 1.0)  # confidence_metrics' prec@0.5@C%: Prec@0.5 over the C most confident answers


class GroundingMeter:
    """Accumulates per-sample results of the ``original`` protocol; ``summary`` all-reduces
    them over processes."""

    protocol = "original"

    def __init__(self) -> None:
        # n, box hits, n with mask, IoU sum, I total, U total, hits at each mask threshold
        self.sums = torch.zeros(6 + len(MASK_THRESHOLDS), dtype=torch.float64)

    def add(self, pred_box_xyxy: torch.Tensor, gt_box_xyxy: torch.Tensor,
            pred_mask: torch.Tensor | None = None, gt_mask: torch.Tensor | np.ndarray | None = None) -> float:
        """One sample, everything in original pixels; masks (H, W) bool or {0, 1}. Returns the box IoU."""
        box_score = box_iou(pred_box_xyxy[None].double(), gt_box_xyxy[None].double())[0, 0].item()
        if pred_mask is None or gt_mask is None:
            return self._record(box_score)
        inter, union = mask_intersection_union(pred_mask, gt_mask)
        mask_score = iou_of_counts(inter, union)
        return self._record(box_score, inter, union, mask_score, [mask_score >= t for t in MASK_THRESHOLDS])

    def _record(self, box_score: float, inter: int = 0, union: int = 0, mask_score: float | None = None,
                mask_hits=()) -> float:
        self.sums[0] += 1
        self.sums[1] += box_score >= 0.5  # both protocols: IoU >= 0.5
        if mask_score is not None:
            self.sums[2] += 1
            self.sums[3] += mask_score
            self.sums[4] += inter
            self.sums[5] += union
            self.sums[6:] += torch.tensor(mask_hits, dtype=torch.float64)
        return box_score

    def summary(self, device: torch.device | str = "cpu") -> dict[str, float]:
        """The metrics over every process; ``device`` is the one the process group reduces on
        (the training device: CUDA under NCCL)."""
        s = dist.all_reduce_sum(self.sums.to(device, copy=True)).cpu()
        n, n_mask = int(s[0]), int(s[2])
        out = {"samples": n, "prec@0.5": float(s[1] / n) if n else None}
        if n_mask:
            out.update({"mIoU": float(s[3] / n_mask), "mask_samples": n_mask})
            if self.protocol == "original":
                out["oIoU"] = float(s[4] / s[5]) if s[5] else 1.0
            out.update({f"mask_prec@{t}": float(s[6 + k] / n_mask) for k, t in enumerate(MASK_THRESHOLDS)})
        return out


class AuthorsMeter(GroundingMeter):
    """The ``authors`` protocol: boxes and masks on the canvas, as the authors' evaluation scores them."""

    protocol = "authors"

    def add(self, pred_box_cxcywh: torch.Tensor, gt_box_cxcywh: torch.Tensor,
            pred_mask: torch.Tensor | None = None, gt_mask: torch.Tensor | None = None) -> float:
        """One sample on the canvas: boxes (4,) normalised (cx, cy, w, h); ``pred_mask`` (S, S)
        bool over the whole canvas, ``gt_mask`` the canvas ground truth (any square size: it is
        resized to the prediction's, nearest). Returns the box IoU."""
        box_score = authors_box_iou(pred_box_cxcywh, gt_box_cxcywh)
        if pred_mask is None or gt_mask is None:
            return self._record(box_score)
        inter, union = mask_intersection_union(pred_mask, resize_nearest(gt_mask, pred_mask.shape[-1]))
        mask_score = authors_mask_iou(inter, union)
        # their thresholds are float32 (ops.arange(0.5, 1, 0.05)), compared with iou.gt: strictly
        return self._record(box_score, inter, union, mask_score,
                            [mask_score > np.float32(t) for t in MASK_THRESHOLDS])


def make_meter(protocol: str) -> GroundingMeter:
    """The meter of ``protocol`` (one of :data:`PROTOCOLS`)."""
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown evaluation protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    return AuthorsMeter() if protocol == "authors" else GroundingMeter()


def authors_box_iou(pred_cxcywh: torch.Tensor, gt_cxcywh: torch.Tensor) -> float:
    """IoU of two (4,) normalised (cx, cy, w, h) canvas boxes in float32, as the authors'
    ``box_ious_v2`` computes it: the intersection's sides clipped to [0, 10], the union to
    [1e-6, 10]."""
    a, b = torch.as_tensor(pred_cxcywh, dtype=torch.float32), torch.as_tensor(gt_cxcywh, dtype=torch.float32)
    lt = torch.maximum(a[:2] - 0.5 * a[2:], b[:2] - 0.5 * b[2:])
    rb = torch.minimum(a[:2] + 0.5 * a[2:], b[:2] + 0.5 * b[2:])
    inter = (rb - lt).clamp(0, 10).prod()
    union = a[2:].prod() + b[2:].prod() - inter
    return float(inter / union.clamp(1e-6, 10))


def authors_mask_iou(inter: int, union: int) -> float:
    """The authors' ``mask_iou`` from pixel counts, in float32: (I + 1e-10) / (U + 1e-10)."""
    i, u = np.float32(inter), np.float32(union)
    return float((i + np.float32(1e-10)) / (u + np.float32(1e-10)))


def authors_target_box(box_xywh, letterbox: Letterbox) -> torch.Tensor:
    """The annotated box (x, y, w, h original pixels, as the record holds it) -> (4,) normalised
    (cx, cy, w, h) on the canvas the authors' way: scaled by canvas size / longer side (one ratio
    for both axes, not the rounded resized size), shifted by the centring offset, divided by
    the canvas size; computed in float64, then float32."""
    ratio = letterbox.size / max(letterbox.orig_size)
    x, y, w, h = (float(v) for v in box_xywh)
    (dx, dy), size = letterbox.offset, letterbox.size
    cxcywh = [((x + 0.5 * w) * ratio + dx) / size, ((y + 0.5 * h) * ratio + dy) / size, w * ratio / size,
              h * ratio / size]
    return torch.tensor(cxcywh, dtype=torch.float64).float()


def resize_nearest(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A (S, S) mask resized to (size, size), nearest (unchanged when already that size)."""
    mask = torch.as_tensor(mask)
    if mask.shape[-1] == size:
        return mask
    return F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0] > 0


def confidence_metrics(scores, correct) -> dict[str, float]:
    """How well scores in [0, 1] tell right answers (``correct``) from wrong ones:
    ``auroc`` (None when only one kind is present), ``ece`` (expected calibration error over
    10 equal-width bins: sum over bins of count/n * |accuracy - mean score|), ``mean_score``, and
    ``prec@0.5@C%``: Prec@0.5 over the C % most confident answers."""
    from sklearn.metrics import roc_auc_score

    scores, correct = np.asarray(scores, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    n = len(scores)
    bins = reliability_bins(scores, correct)
    ece = sum(b["count"] / n * abs(b["accuracy"] - b["mean_score"]) for b in bins if b["count"])
    curve = coverage_curve(scores, correct)
    out = {"auroc": float(roc_auc_score(correct, scores)) if 0 < correct.sum() < n else None,
           "ece": float(ece), "mean_score": float(scores.mean())}
    out.update({f"prec@0.5@{round(c * 100)}%": float(curve[max(1, math.ceil(c * n)) - 1]) for c in COVERAGES})
    return out


def separation_auroc(positive, negative) -> float:
    """The AUROC of telling the ``positive`` scores from the ``negative`` ones (e.g. right answers
    against wrong answers to expressions that are not in their image)."""
    from sklearn.metrics import roc_auc_score

    positive, negative = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return float(roc_auc_score(labels, np.r_[positive, negative]))
