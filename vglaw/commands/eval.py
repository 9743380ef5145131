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
# how well the calibrated score tells right boxes from wrong ones (a calibrated checkpoint only)
SCORE_COLUMNS = [("auroc", "score AUROC", "{:.4f}"), ("ece", "score ECE", "{:.4f}")] + [
    (f"prec@0.5@{c}%", f"box P@0.5 at {c}%", "{:.4f}") for c in (50, 80, 100)]


def format_table(results: dict, columns=None) -> str:
    """The results as a Markdown table, one row per split; ``columns`` default: the box and mask
    metrics (:data:`COLUMNS`)."""
    columns = columns or COLUMNS
    lines = ["| split | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for split, m in results.items():
        cells = [fmt.format(m[key]) if m.get(key) is not None else "-" for key, _, fmt in columns]
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_samples(model, prepared, split: str, *, device, batch_size: int = 16, num_workers: int = 2,
                  precision: str = "fp32", mask_threshold: float | None = None, tokenizer=None) -> tuple[dict, dict]:
    """``(metrics, samples)`` of ``model`` on a prepared split (see :func:`evaluate`); the
    checkpoint's calibrator, when it has one, adds the score's metrics. ``tokenizer``: a loaded
    tokenizer (default: the model's)."""
    if tokenizer is None:
        tokenizer = load_tokenizer(model.spec.tokenizer)
    ds = GroundingDataset(prepared, split, tokenizer=tokenizer, img_size=model.spec.img_size, max_len=model.spec.max_len)
    with torch.inference_mode():
        return evaluate(model, eval_loader(ds, batch_size, num_workers), ds, device=device, precision=precision,
                        mask_threshold=mask_threshold, desc=f"eval {split}", calibrator=model.calibrator,
                        with_samples=True)


def run_eval(checkpoint: str | os.PathLike, prepared: str | os.PathLike, splits: list[str], *,
             mask_threshold: float | None = None, batch_size: int = 16, device: str = "auto", precision: str = "fp32",
             num_workers: int = 2, tokenizer: str | None = None, plot: str | os.PathLike | None = None) -> dict:
    """Metrics per split (with the mask threshold used: by default the checkpoint's; with the
    score's metrics when the checkpoint has a calibrator, drawn into ``plot`` when given); runs
    distributed when launched with torchrun (each sample once)."""
    device = dist.init(device)
    model = VGLAW.from_pretrained(checkpoint, device=device).eval()
    if mask_threshold is None:
        mask_threshold = model.spec.mask_threshold
    tok = load_tokenizer(tokenizer or model.spec.tokenizer)
    results, curves = {}, {}
    for split in splits:
        if model.calibrator is not None and fitted_here(model.calibrator.fitted_on, prepared, split) and dist.is_main():
            log.warning("the calibrator was fitted on %s of %s: its score metrics there are optimistic (evaluate it on "
                        "another split)", split, prepared)
        results[split], samples = split_samples(model, prepared, split, device=device, batch_size=batch_size,
                                                num_workers=num_workers, precision=precision,
                                                mask_threshold=mask_threshold, tokenizer=tok)
        results[split]["mask_threshold"] = mask_threshold
        if model.calibrator is not None:
            curves[split] = (samples["score"].numpy(), (samples["box_iou"] >= 0.5).numpy())
        if dist.is_main():
            log.info("%s: %d expressions, box P@0.5 %.4f", split, results[split]["samples"],
                     results[split]["prec@0.5"])
    if plot is not None and curves and dist.is_main():
        from ..inference.pictures import confidence_plot

        confidence_plot(curves).save(plot)
    return results


def fitted_here(fitted_on: dict, prepared, split: str) -> bool:
    """Was a calibrator fitted on this split of this prepared data?"""
    return fitted_on.get("split") == split and Path(fitted_on.get("data", "")).resolve() == Path(prepared).resolve()


def write_results(results: dict, path: str | os.PathLike, **info) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**info, "results": results}, indent=2) + "\n")
