"""VG-LAW's training loss: L1 + GIoU on the box, sigmoid focal + dice on the mask."""
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
        batch: ``box`` (B, 4) target cxcywh in [0, 1], ``mask`` (B, S, S), ``has_mask`` (B,).
        weights: an object with ``l1``, ``giou``, ``focal``, ``dice`` (the config's loss section).
    Returns:
        dict of the weighted total ``loss`` and each unweighted term.
    """
    pred, target = out["boxes"].float(), batch["box"].float()
    l1 = F.l1_loss(pred, target, reduction="none").sum(1).mean()  # summed over coordinates
    giou = generalized_box_iou_loss(box_convert(pred, "cxcywh", "xyxy"), box_convert(target, "cxcywh", "xyxy"),
                                    reduction="mean")
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
    return {"loss": total, "l1": l1, "giou": giou, "focal": focal, "dice": dice}
