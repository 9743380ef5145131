"""``vglaw eval``: REC and RES metrics of a checkpoint on prepared splits."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from .. import distributed as dist
from ..data import GroundingDataset, load_tokenizer
from ..engine.loop import eval_loader, evaluate
from ..engine.metrics import MASK_THRESHOLDS
from ..model import VGLAW

log = logging.getLogger(__name__)

# (metric, column title, format): REC is the box's Prec@0.5; RES the mask's IoUs and Prec@t
COLUMNS = [("samples", "expressions", "{:d}"), ("prec@0.5", "box P@0.5", "{:.4f}"), ("mIoU", "mask mIoU", "{:.4f}"),
           ("oIoU", "mask oIoU", "{:.4f}")] + [(f"mask_prec@{t}", f"mask P@{t}", "{:.4f}") for t in MASK_THRESHOLDS]


def format_table(results: dict) -> str:
    lines = ["| split | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for split, m in results.items():
        cells = [fmt.format(m[key]) if key in m else "-" for key, _, fmt in COLUMNS]
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_eval(checkpoint: str | os.PathLike, prepared: str | os.PathLike, splits: list[str], *,
             mask_threshold: float | None = None, batch_size: int = 16, device: str = "auto", precision: str = "fp32",
             num_workers: int = 2, tokenizer: str | None = None) -> dict:
    """Metrics per split (with the mask threshold used: by default the checkpoint's); runs
    distributed when launched with torchrun (each sample once)."""
    device = dist.init(device)
    model = VGLAW.from_pretrained(checkpoint, device=device).eval()
    if mask_threshold is None:
        mask_threshold = model.spec.mask_threshold
    tok = load_tokenizer(tokenizer or model.spec.tokenizer)
    results = {}
    for split in splits:
        ds = GroundingDataset(prepared, split, tokenizer=tok, img_size=model.spec.img_size,
                              max_len=model.spec.max_len)
        with torch.inference_mode():
            results[split] = evaluate(model, eval_loader(ds, batch_size, num_workers), ds, device=device,
                                      precision=precision, mask_threshold=mask_threshold, desc=f"eval {split}")
        results[split]["mask_threshold"] = mask_threshold
        if dist.is_main():
            log.info("%s: %d expressions, box P@0.5 %.4f", split, results[split]["samples"],
                     results[split]["prec@0.5"])
    return results


def write_results(results: dict, path: str | os.PathLike, **info) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**info, "results": results}, indent=2) + "\n")
