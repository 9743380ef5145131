"""``vglaw eval``: REC and RES metrics of a checkpoint on prepared splits."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .. import distributed as dist
from ..data import GroundingDataset, load_tokenizer
from .checkpoint import load_model
from .loop import evaluate
from .samplers import ShardSampler

COLUMNS = [("samples", "n", "{:d}"), ("prec@0.5", "REC P@0.5", "{:.4f}"), ("mIoU", "mIoU", "{:.4f}"),
           ("oIoU", "oIoU", "{:.4f}")] + [(f"mask_prec@{t}", f"P@{t}", "{:.4f}") for t in (0.5, 0.6, 0.7, 0.8, 0.9)]


def format_table(results: dict) -> str:
    lines = ["| split | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for split, m in results.items():
        cells = [fmt.format(m[key]) if key in m else "-" for key, _, fmt in COLUMNS]
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_eval(checkpoint: str | os.PathLike, prepared: str | os.PathLike, splits: list[str], *,
             mask_threshold: float = 0.35, batch_size: int = 16, device: str = "auto", precision: str = "fp32",
             num_workers: int = 2, tokenizer: str | None = None) -> dict:
    """Metrics per split; runs distributed when launched with torchrun (each sample once)."""
    import torch
    from torch.utils.data import DataLoader

    from ..data import collate
    from .train import resolve_device

    device = dist.init(resolve_device(device))
    model = load_model(checkpoint).to(device).eval()
    tok = load_tokenizer(tokenizer or model.config.text_encoder)
    results = {}
    for split in splits:
        ds = GroundingDataset(prepared, split, tokenizer=tok, img_size=model.config.img_size,
                              max_len=model.config.max_len)
        loader = DataLoader(ds, batch_size=batch_size, sampler=ShardSampler(len(ds), dist.rank(), dist.world_size()),
                            collate_fn=collate, num_workers=num_workers)
        with torch.inference_mode():
            results[split] = evaluate(model, loader, ds, device=device, precision=precision,
                                      mask_threshold=mask_threshold, desc=f"eval {split}")
    return results


def write_results(results: dict, path: str | os.PathLike, **info) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**info, "results": results}, indent=2) + "\n")
