"""The bundled demo checkpoint on a CUDA GPU against the CPU: same images, same expressions.

    python benchmarks/cuda_check.py [--images 30] [--json out.json]

Generates a small synthetic set, then
* evaluates it with ``run_eval`` on cpu/fp32, cuda/fp32 and cuda/bf16 (REC Prec@0.5, mIoU, mask P@0.5);
* runs ``Grounder.predict`` on every val image with all of its expressions in one batch, on the
  cpu and on cuda (fp32, bf16), and reports how far the cuda boxes are from the cpu ones (pixels)
  and the IoU of the cuda masks with the cpu masks.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from vglaw.inference.predictor import Grounder
from vglaw.data import load_split, prepare
from vglaw.data.synth import generate
from vglaw.hub import DEMO_CHECKPOINT
from vglaw.data.masks import mask_iou
from vglaw.commands.eval import run_eval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for a GPU")
    work = Path(tempfile.mkdtemp())
    generate(work, seed=args.seed, split_sizes={"val": args.images})
    prepare(fmt="refer", data_root=work, dataset="synthref", image_root=work / "images", out=work / "prepared")

    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "metrics": {}, "vs_cpu": {}}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "bf16")):
        metrics = run_eval(DEMO_CHECKPOINT, work / "prepared", ["val"], device=device, precision=precision,
                           num_workers=0)["val"]
        result["metrics"][f"{device}/{precision}"] = {k: metrics[k] for k in ("samples", "prec@0.5", "mIoU",
                                                                            "mask_prec@0.5")}

    meta, records = load_split(work / "prepared", "val")
    by_image: dict[str, list[str]] = {}
    for r in records:
        by_image.setdefault(r["image"], []).append(r["sentence"])
    grounders = {"cpu/fp32": Grounder.from_pretrained(DEMO_CHECKPOINT),
                 "cuda/fp32": Grounder.from_pretrained(DEMO_CHECKPOINT, device="cuda"),
                 "cuda/bf16": Grounder.from_pretrained(DEMO_CHECKPOINT, device="cuda", precision="bf16")}
    predictions = {name: [] for name in grounders}
    for image, texts in by_image.items():
        path = Path(meta["image_root"]) / image
        for name, g in grounders.items():
            predictions[name].extend(g.predict(path, texts))
    reference = predictions["cpu/fp32"]
    for name in ("cuda/fp32", "cuda/bf16"):
        box_diff = [np.abs(np.subtract(p.box, r.box)).max() for p, r in zip(predictions[name], reference)]
        ious = [mask_iou(p.mask, r.mask) for p, r in zip(predictions[name], reference)]
        result["vs_cpu"][name] = {"expressions": len(box_diff), "box_max_px": float(np.max(box_diff)),
                                  "box_median_px": float(np.median(box_diff)), "mask_iou_min": min(ious),
                                  "mask_iou_mean": float(np.mean(ious))}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
