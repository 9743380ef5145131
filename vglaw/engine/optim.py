"""AdamW with VG-LAW's three parameter groups, and the warmup + step-decay schedule."""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


def param_groups(model: torch.nn.Module, *, lr: float, lr_backbone: float, lr_text: float) -> list[dict]:
    """visual backbone (lr_backbone), text encoder (lr_text), everything else (lr): the
    generator, S, D and the heads. Frozen parameters are left out; empty groups dropped."""
    groups = {"backbone": [], "text_encoder": [], "rest": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = name.split(".", 1)[0]
        groups[part if part in ("backbone", "text_encoder") else "rest"].append(p)
    lrs = {"backbone": lr_backbone, "text_encoder": lr_text, "rest": lr}
    return [{"name": k, "params": v, "lr": lrs[k]} for k, v in groups.items() if v]


def build_optimizer(model: torch.nn.Module, optim) -> torch.optim.AdamW:
    groups = param_groups(model, lr=optim.lr, lr_backbone=optim.lr_backbone, lr_text=optim.lr_text)
    return torch.optim.AdamW(groups, weight_decay=optim.weight_decay)


def lr_factor(step: int, *, warmup_steps: int, warmup_factor: float, drop_steps: list[int],
              drop_factor: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): linear warmup from
    ``warmup_factor`` to 1, then x ``drop_factor`` at each drop step."""
    factor = drop_factor ** sum(step >= d for d in drop_steps)
    if step < warmup_steps:
        factor *= warmup_factor + (1 - warmup_factor) * step / warmup_steps
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, optim, steps_per_epoch: int) -> LambdaLR:
    """Per-iteration schedule; epochs in the config become optimizer steps."""
    warmup = int(round(optim.warmup_epochs * steps_per_epoch))
    drops = [d * steps_per_epoch for d in optim.drop_epochs]

    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps=warmup, warmup_factor=optim.warmup_factor, drop_steps=drops,
                         drop_factor=optim.drop_factor)

    return LambdaLR(optimizer, factor)
