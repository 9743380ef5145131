"""Metrics for generalized referring expressions (gRefCOCO): an expression may name no object
(no-target) or several (multi-target).

Each definition follows one published evaluator, with its arithmetic:

GRES (masks): henghuiding/ReLA, ``gres_model/evaluation/refer_evaluation.py``
(``ReferEvaluator.evaluate``, commit a389648). Per sample, I = |pred & gt| and U = |pred | gt|
as integer pixel counts, no epsilon, on the masks as given (ReLA scores both masks on the
image resized to 480 x 480; vglaw's eval can pass them in original pixels):

- no-target, predicted no-target (TP): IoU 1, adds nothing to I or U;
- no-target, predicted a target (FN): IoU 0, U += |pred| (I = 0);
- target, predicted no-target (FP): I = 0, U kept, IoU 0;
- target, predicted a target (TN): IoU = I / U (0 when U is 0).

gIoU = 100 x mean per-sample IoU over all samples; cIoU = 100 x sum I / sum U; Pr@t = 100 x the
share of TARGET samples with IoU >= t (t = 0.7, 0.8, 0.9). ``N-acc`` = 100 x TP / (TP + FN) and
``T-acc`` = 100 x TN / (TN + FP), the plain definitions (Dmmm1997/InstanceVG,
``instancevg/evaluations/grefcoco.py`` ``gres_evaluate``). ReLA's code computes instead
``N-acc (ReLA code)`` = 100 x TP / (TP + FN + 1) and, under the name T_acc,
``T-acc (ReLA code)`` = 100 x TP / (TP + FP + 1), which is the precision of the no-target
predictions, not the accuracy on target samples; both are 0 when the split has no no-target
sample. (ReLA's code returns these two as fractions; here every value is a percentage.)

GREC (boxes): henghuiding/gRefCOCO, ``mdetr/datasets/refexp.py`` (``RefExpEvaluator.summarize``).
Per sample, the predicted boxes are sorted by (score, box) descending and those with score
>= 0.7 kept (the comparison is in float64: a float32 score of 0.7 is 0.69999999 and is dropped,
as there). A no-target sample is right when no box remains (TP, else FN). A target sample
counts TN when a box remains, FP when none does, and its boxes are matched greedily one to one:
take the largest generalized IoU (torchvision's ``generalized_box_iou``, the same formula as
mdetr's ``util/box_ops.py``, in float32 as there) among unmatched pairs; stop when it is below
0.5; else it is a match and its row and column are zeroed. With P boxes kept and G annotated,
F1 = 2 TP / (2 TP + (P - TP) + (G - TP)) and the sample is right only when F1 = 1 (every box
matched, nothing left over). ``Precision@(F1=1, IoU>=0.5)`` = 100 x right / samples;
``N-acc`` and ``T-acc`` are the plain definitions above, over these counts, as the evaluator
computes them. mmdetection's ``gRefCOCOMetric`` matches with plain IoU: its numbers are not
comparable.

Usage: score each sample with :func:`gres_score` / :func:`grec_score` (small records), then
summarise the list with :func:`gres_summary` / :func:`grec_summary` (a JSON-able dict). A value
is None where it is undefined on the split (a share of no samples, or cIoU with sum U = 0),
where the reference code divides by zero.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import numpy as np
import torch
from torchvision.ops import generalized_box_iou

from ..data.masks import answer_boxes, mask_intersection_union
from ..errors import InputError

GRES_THRESHOLDS = (0.7, 0.8, 0.9)
GREC_SCORE_THRESHOLD = 0.7
GREC_IOU_THRESHOLD = 0.5


class GresScore(NamedTuple):
    """One GRES sample: ``inter`` / ``union`` as added to the totals, its ``iou``, whether it
    is ``no_target`` (ground truth) and whether it was ``pred_no_target``."""
    inter: int
    union: int
    iou: float
    no_target: bool
    pred_no_target: bool


class GrecScore(NamedTuple):
    """One GREC sample: ``kept`` boxes (score >= 0.7), ``matched`` of them (greedy, GIoU >= 0.5),
    ``annotated`` boxes, whether it is ``no_target`` and whether it is ``right`` (F1 = 1)."""
    kept: int
    matched: int
    annotated: int
    no_target: bool
    right: bool


def _name(sample_id) -> str:
    return "sample" if sample_id is None else f"sample {sample_id!r}"


def gres_score(pred_mask: torch.Tensor | np.ndarray, gt_mask: torch.Tensor | np.ndarray, no_target: bool,
               pred_no_target: bool | None = None, sample_id=None) -> GresScore:
    """Score one GRES sample.

    Args:
        pred_mask: (H, W) bool or {0, 1}, the predicted mask (possibly empty).
        gt_mask: (H, W) bool or {0, 1}, the ground truth: the union of the targets' masks,
            empty for a no-target sample.
        no_target: the expression names no object.
        pred_no_target: the model's no-target decision (an existence output); None: the
            prediction says no-target when ``pred_mask`` is empty.
        sample_id: names the sample in an error.
    """
    if tuple(pred_mask.shape) != tuple(gt_mask.shape) or len(pred_mask.shape) != 2:
        raise InputError(f"{_name(sample_id)}: predicted mask {tuple(pred_mask.shape)} and ground-truth mask "
                         f"{tuple(gt_mask.shape)} must be (H, W) of the same size")
    if no_target and torch.as_tensor(gt_mask).bool().any():
        raise InputError(f"{_name(sample_id)}: a no-target sample has a non-empty ground-truth mask")
    inter, union = mask_intersection_union(pred_mask, gt_mask)
    if pred_no_target is None:
        pred_no_target = not bool(torch.as_tensor(pred_mask).bool().any())
    if no_target:
        # TP: IoU 1, nothing added; FN: IoU 0, U = |pred| (gt is empty)
        return GresScore(0, 0, 1.0, True, True) if pred_no_target else GresScore(0, union, 0.0, True, False)
    if pred_no_target:
        inter = 0  # FP: a target sample the model calls empty scores I = 0, U kept
    return GresScore(inter, union, inter / union if union else 0.0, False, bool(pred_no_target))


def gres_summary(scores: Iterable[GresScore]) -> dict:
    """The GRES metrics of a split (see the module docstring): ``gIoU``, ``cIoU``, ``Pr@0.7``,
    ``Pr@0.8``, ``Pr@0.9``, ``N-acc``, ``T-acc``, ``N-acc (ReLA code)``, ``T-acc (ReLA code)``
    (percentages), and the counts: ``samples``, ``no-target samples``, ``target samples``,
    ``TP`` no-target predicted no-target, ``FN`` no-target predicted a target, ``TN`` target
    predicted a target, ``FP`` target predicted no-target, ``I`` and ``U`` the pixel totals."""
    scores = list(scores)
    if not scores:
        raise InputError("no samples to score")
    targets = [s for s in scores if not s.no_target]
    tp = sum(s.pred_no_target for s in scores if s.no_target)
    fn = len(scores) - len(targets) - tp
    fp = sum(s.pred_no_target for s in targets)
    tn = len(targets) - fp
    inter, union = sum(s.inter for s in scores), sum(s.union for s in scores)
    out = {
        "samples": len(scores), "no-target samples": len(scores) - len(targets), "target samples": len(targets),
        "gIoU": 100.0 * (sum(s.iou for s in scores) / len(scores)),
        "cIoU": inter * 100.0 / union if union else None,
    }
    for t in GRES_THRESHOLDS:
        out[f"Pr@{t}"] = sum(s.iou >= t for s in targets) * 100.0 / len(targets) if targets else None
    out.update(_existence(tp, fn, tn, fp))
    nt = tp + fn > 0  # ReLA's code reports 0 for both when the split has no no-target sample
    out["N-acc (ReLA code)"] = 100.0 * (tp / (tp + fn + 1)) if nt else 0.0
    out["T-acc (ReLA code)"] = 100.0 * (tp / (tp + fp + 1)) if nt else 0.0
    out.update({"TP": tp, "FN": fn, "TN": tn, "FP": fp, "I": inter, "U": union})
    return out


def _existence(tp: int, fn: int, tn: int, fp: int) -> dict:
    """Plain N-acc (no-target samples called no-target) and T-acc (target samples called
    target), percentages; None over no samples."""
    return {"N-acc": 100.0 * tp / (tp + fn) if tp + fn else None,
            "T-acc": 100.0 * tn / (tn + fp) if tn + fp else None}


def _boxes(boxes, what: str, sample_id) -> torch.Tensor:
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4) if len(boxes) else torch.zeros(0, 4)
    if not torch.isfinite(b).all() or (b[:, 2:] < b[:, :2]).any():
        raise InputError(f"{_name(sample_id)}: {what} must be finite (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1, "
                         f"got {b.tolist()}")
    return b


def grec_score(pred_boxes, pred_scores, gt_boxes, no_target: bool, sample_id=None) -> GrecScore:
    """Score one GREC sample.

    Args:
        pred_boxes: (N, 4) predicted boxes, x1 y1 x2 y2 pixels (N may be 0).
        pred_scores: (N,) their scores.
        gt_boxes: (M, 4) annotated boxes, x1 y1 x2 y2 pixels; M = 0 for a no-target sample.
        no_target: the expression names no object.
        sample_id: names the sample in an error.
    """
    boxes, gts = _boxes(pred_boxes, "predicted boxes", sample_id), _boxes(gt_boxes, "annotated boxes", sample_id)
    scores = torch.as_tensor(pred_scores, dtype=torch.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise InputError(f"{_name(sample_id)}: {len(boxes)} predicted boxes but {len(scores)} scores")
    if no_target == bool(len(gts)):
        raise InputError(f"{_name(sample_id)}: " + ("a no-target sample has annotated boxes" if no_target
                                                    else "a target sample has no annotated box"))
    order = sorted(range(len(scores)), key=lambda i: (scores[i].item(), boxes[i].tolist()), reverse=True)
    kept = boxes[[i for i in order if scores[i] >= GREC_SCORE_THRESHOLD]]
    if no_target:
        return GrecScore(len(kept), 0, 0, True, len(kept) == 0)
    giou = generalized_box_iou(kept, gts)  # (P, G)
    matched = 0
    for _ in range(min(len(kept), len(gts))):
        best = int(giou.argmax())  # the first largest, in (score, box) descending row order
        if giou.flatten()[best] < GREC_IOU_THRESHOLD:
            break
        matched += 1
        giou[best // len(gts), :] = 0.0
        giou[:, best % len(gts)] = 0.0
    f1 = 2 * matched / (2 * matched + (len(kept) - matched) + (len(gts) - matched))
    return GrecScore(len(kept), matched, len(gts), False, f1 >= 1.0)


def grec_summary(scores: Iterable[GrecScore]) -> dict:
    """The GREC metrics of a split (see the module docstring): ``Precision@(F1=1, IoU>=0.5)``,
    ``N-acc``, ``T-acc`` (percentages), and the counts: ``samples``, ``no-target samples``,
    ``target samples``, ``TP`` no-target with no box kept, ``FN`` no-target with a box kept,
    ``TN`` target with a box kept, ``FP`` target with none, ``right`` samples with F1 = 1."""
    scores = list(scores)
    if not scores:
        raise InputError("no samples to score")
    tp = sum(s.no_target and s.kept == 0 for s in scores)
    fn = sum(s.no_target and s.kept > 0 for s in scores)
    tn = sum(not s.no_target and s.kept > 0 for s in scores)
    fp = sum(not s.no_target and s.kept == 0 for s in scores)
    right = sum(s.right for s in scores)
    return {"samples": len(scores), "no-target samples": tp + fn, "target samples": tn + fp,
            "Precision@(F1=1, IoU>=0.5)": 100.0 * right / len(scores), **_existence(tp, fn, tn, fp),
            "TP": tp, "FN": fn, "TN": tn, "FP": fp, "right": right}


# one sample's scores as a row of numbers (summed over processes by ``evaluate``)
GREF_ROWS = GresScore._fields + tuple(f"grec_{name}" for name in GrecScore._fields)


def gref_row(pred_mask, pred_box, gt_mask, gt_boxes, no_target: bool, pred_no_target: bool | None, exists: float,
             sample_id=None) -> list[float]:
    """One answer's GRES and GREC scores as the numbers of :data:`GREF_ROWS`: its mask, its
    no-target decision (None: an empty mask says no target) and, for GREC, its boxes as
    predictions give them (:func:`~vglaw.data.masks.answer_boxes`: one per part of a mask of
    several parts, else ``pred_box``; none when it says no target), each scored ``exists``;
    ``gt_boxes`` (M, 4) xyxy."""
    gres = gres_score(pred_mask, gt_mask, no_target, pred_no_target, sample_id)
    boxes = [] if gres.pred_no_target else answer_boxes(np.asarray(pred_mask), pred_box)
    grec = grec_score(boxes, [exists] * len(boxes), gt_boxes, no_target, sample_id)
    return [float(v) for v in (*gres, *grec)]


def gref_summaries(rows: torch.Tensor) -> dict:
    """The generalized metrics of a split from its (len(GREF_ROWS), N) rows: the GRES ones at the
    top (``gIoU``, ``cIoU``, ``N-acc``, ``T-acc``, ``Pr@0.7`` ...), and the whole GRES and GREC
    summaries under ``gres`` and ``grec``."""
    n = len(GresScore._fields)
    gres = [GresScore(int(r[0]), int(r[1]), float(r[2]), bool(r[3]), bool(r[4])) for r in rows[:n].T.tolist()]
    grec = [GrecScore(int(r[0]), int(r[1]), int(r[2]), bool(r[3]), bool(r[4])) for r in rows[n:].T.tolist()]
    gres_metrics = gres_summary(gres)
    top = {k: gres_metrics[k] for k in ("gIoU", "cIoU", "N-acc", "T-acc", *(f"Pr@{t}" for t in GRES_THRESHOLDS))}
    return {**top, "gres": gres_metrics, "grec": grec_summary(grec)}
