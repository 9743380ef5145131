"""VG-LAW's training loss: L1 + GIoU on the box, sigmoid focal + dice on the mask."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - (2|P.G| + s) / (|P| + |G| + s) per sample, averaged. logits, target: (B, H, W)."""
    p = logits.sigmoid().flatten(1)
    g = target.flatten(1)
    return (1 - (2 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)).mean()


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
    has_mask = batch["has_mask"]
    logits = out["mask_logits"][:, 0].float()
    if has_mask.any():
        logits, gt = logits[has_mask], batch["mask"][has_mask].float()
        focal = sigmoid_focal_loss(logits, gt, alpha=0.25, gamma=2.0, reduction="mean")
        dice = dice_loss(logits, gt)
    else:  # REC-only data: keep the graph, add nothing
        focal = dice = logits.sum() * 0.0
    total = weights.l1 * l1 + weights.giou * giou + weights.focal * focal + weights.dice * dice
    return {"loss": total, "l1": l1, "giou": giou, "focal": focal, "dice": dice}
