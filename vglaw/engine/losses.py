"""VG-LAW's training loss: L1 + GIoU on the box, sigmoid focal + dice on the mask; and, not in the
paper, binary cross-entropy on the existence output."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
              reduction: str = "mean") -> torch.Tensor:
    """1 - (2|P.G| + s) / (|P| + |G| + s) per sample; averaged unless ``reduction="none"``.
    logits, target: (B, H, W)."""
    p = logits.sigmoid().flatten(1)
    g = target.flatten(1)
    per_sample = 1 - (2 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)
    return per_sample if reduction == "none" else per_sample.mean()


def grounding_loss(out: dict, batch: dict, weights) -> dict[str, torch.Tensor]:
    """
    Args:
        out: model outputs (``boxes`` (B, 4) cxcywh in [0, 1], ``mask_logits`` (B, 1, S, S)).
        batch: ``box`` (B, 4) target cxcywh in [0, 1], ``mask`` (B, S, S), ``has_mask`` (B,);
            on data with no-target or multi-target samples also ``exists`` (B,) 1/0 and
            ``box_weight`` (B,), 1 where the sample has exactly one object.
        weights: an object with ``l1``, ``giou``, ``focal``, ``dice`` and ``exists`` (the config's
            loss section).
    Returns:
        dict of the weighted total ``loss`` and each unweighted term (``exists`` only for a
        model with the existence output).

    The box terms average over the samples with one object (no-target samples have no box and a
    multi-target one no single box: the mask, the union of its objects, carries them); a
    no-target sample's mask target is empty. Without ``box_weight`` in the batch (single-target
    data) this is exactly the paper's loss.
    """
    pred, target = out["boxes"].float(), batch["box"].float()
    pred_xyxy, target_xyxy = box_convert(pred, "cxcywh", "xyxy"), box_convert(target, "cxcywh", "xyxy")
    if "box_weight" in batch:
        box_weight = batch["box_weight"].float()
        n_boxes = box_weight.sum().clamp(min=1)
        l1 = (F.l1_loss(pred, target, reduction="none").sum(1) * box_weight).sum() / n_boxes
        giou = (generalized_box_iou_loss(pred_xyxy, target_xyxy, reduction="none") * box_weight).sum() / n_boxes
    else:
        l1 = F.l1_loss(pred, target, reduction="none").sum(1).mean()  # summed over coordinates
        giou = generalized_box_iou_loss(pred_xyxy, target_xyxy, reduction="mean")
    # the mask terms average over the samples that have a mask, by weights rather than by
    # selecting rows: a selection would make the host wait for the device to count them
    weight = batch["has_mask"].float()  # (B,)
    logits = out["mask_logits"][:, 0].float()  # (B, S, S)
    gt = batch["mask"].float()
    n_masks = weight.sum().clamp(min=1)
    focal_each = sigmoid_focal_loss(logits, gt, alpha=0.25, gamma=2.0, reduction="none").flatten(1).mean(1)
    focal = (focal_each * weight).sum() / n_masks
    dice = (dice_loss(logits, gt, reduction="none") * weight).sum() / n_masks  # 0 on REC-only data
    total = weights.l1 * l1 + weights.giou * giou + weights.focal * focal + weights.dice * dice
    terms = {"loss": total, "l1": l1, "giou": giou, "focal": focal, "dice": dice}
    if "exists_logits" in out:
        exists = batch["exists"] if "exists" in batch else torch.ones_like(out["exists_logits"])
        terms["exists"] = F.binary_cross_entropy_with_logits(out["exists_logits"].float(), exists.float())
        terms["loss"] = total + weights.exists * terms["exists"]
    return terms
