"""The papers' metrics, computed in original image pixels.

REC: Prec@0.5 of box IoU. RES: the canvas mask (sigmoid > threshold) is un-padded and
resized back to the original image; mIoU = mean per-sample IoU, oIoU = total intersection /
total union, and Prec@{0.5, ..., 0.9} of mask IoU. A sample whose predicted and true masks
are both empty has IoU 1.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

from .. import distributed as dist
from ..data.masks import iou_of_counts, mask_intersection_union

MASK_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


class GroundingMeter:
    """Accumulates per-sample results; ``summary`` all-reduces them over processes."""

    def __init__(self) -> None:
        # n, box hits, n with mask, IoU sum, I total, U total, hits at each mask threshold
        self.sums = torch.zeros(6 + len(MASK_THRESHOLDS), dtype=torch.float64)

    def add(self, pred_box_xyxy: torch.Tensor, gt_box_xyxy: torch.Tensor,
            pred_mask: torch.Tensor | None = None, gt_mask: torch.Tensor | np.ndarray | None = None) -> float:
        """One sample, everything in original pixels; masks (H, W) bool or {0, 1}. Returns the box IoU."""
        box_score = box_iou(pred_box_xyxy[None].double(), gt_box_xyxy[None].double())[0, 0].item()
        self.sums[0] += 1
        self.sums[1] += box_score >= 0.5
        if pred_mask is None or gt_mask is None:
            return box_score
        inter, union = mask_intersection_union(pred_mask, gt_mask)
        mask_score = iou_of_counts(inter, union)
        self.sums[2] += 1
        self.sums[3] += mask_score
        self.sums[4] += inter
        self.sums[5] += union
        for k, t in enumerate(MASK_THRESHOLDS):
            self.sums[6 + k] += mask_score >= t
        return box_score

    def summary(self, device: torch.device | str = "cpu") -> dict[str, float]:
        """The metrics over every process; ``device`` is the one the process group reduces on
        (the training device: CUDA under NCCL)."""
        s = dist.all_reduce_sum(self.sums.to(device, copy=True)).cpu()
        n, n_mask = int(s[0]), int(s[2])
        out = {"samples": n, "prec@0.5": float(s[1] / n) if n else 0.0}
        if n_mask:
            out.update({"mIoU": float(s[3] / n_mask), "oIoU": float(s[4] / s[5]) if s[5] else 1.0,
                        "mask_samples": n_mask})
            out.update({f"mask_prec@{t}": float(s[6 + k] / n_mask) for k, t in enumerate(MASK_THRESHOLDS)})
        return out

