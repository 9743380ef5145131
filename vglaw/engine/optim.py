"""The optimizers (MindSpore's AdamWeightDecay, as the authors train, or torch's AdamW) with
VG-LAW's three parameter groups, and the warmup + step-decay schedule."""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..config import OPTIMIZERS
from ..errors import InputError


class AdamWeightDecay(torch.optim.Optimizer):
    """MindSpore's ``nn.AdamWeightDecay``, the optimizer of the authors' training code.

    Per parameter w with gradient g, on every step::

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        update = m / (sqrt(v) + eps) + weight_decay * w     (the decay term only if weight_decay > 0)
        w = w - lr * update

    Unlike ``torch.optim.AdamW`` neither moment is bias-corrected, so the first updates are
    larger (about 3.2 x lr at step 1 for a steady gradient), and eps defaults to 1e-6.
    The decay is decoupled, as in AdamW. MindSpore's rule for grouped parameters, which the
    authors use: every parameter of a group is decayed with the group's weight decay (the
    optimizer's when the group names none); the filter that spares LayerNorm weights and biases
    ("beta"/"gamma" in the name) applies only to ungrouped parameters.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss


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


def build_optimizer(model: torch.nn.Module, optim) -> torch.optim.Optimizer:
    """The config's optimizer over the three groups, every parameter decayed by
    ``optim.weight_decay`` (as both the authors' grouped AdamWeightDecay and vglaw's AdamW do)."""
    groups = param_groups(model, lr=optim.lr, lr_backbone=optim.lr_backbone, lr_text=optim.lr_text)
    if optim.optimizer == "adam_weight_decay":
        return AdamWeightDecay(groups, eps=optim.eps, weight_decay=optim.weight_decay)
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(groups, eps=optim.eps, weight_decay=optim.weight_decay)
    raise InputError(f"config key optim.optimizer must be one of {list(OPTIMIZERS)}, got {optim.optimizer!r}")


def lr_factor(step: int, *, warmup_steps: int, warmup_factor: float, drop_steps: list[int],
              drop_factor: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): linear warmup from
    ``warmup_factor`` to 1, then x ``drop_factor`` at each drop step."""
    factor = drop_factor ** sum(step >= d for d in drop_steps)
    if step < warmup_steps:
        factor *= warmup_factor + (1 - warmup_factor) * step / warmup_steps
    return factor


def warmup_steps(optim, steps_per_epoch: int) -> int:
    """The warmup in optimizer steps: ``optim.warmup_epochs`` when set, else ``optim.warmup_steps``."""
    if optim.warmup_epochs is not None:
        return int(round(optim.warmup_epochs * steps_per_epoch))
    return optim.warmup_steps


def build_scheduler(optimizer: torch.optim.Optimizer, optim, steps_per_epoch: int) -> LambdaLR:
    """Per-iteration schedule; epochs in the config become optimizer steps."""
    warmup = warmup_steps(optim, steps_per_epoch)
    drops = [d * steps_per_epoch for d in optim.drop_epochs]

    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps=warmup, warmup_factor=optim.warmup_factor, drop_steps=drops,
                         drop_factor=optim.drop_factor)

    return LambdaLR(optimizer, factor)
