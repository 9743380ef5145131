"""Forward latency of the `vitb` model at 448 next to timm's bare ViTDet-B backbone, same process.

    python benchmarks/forward.py [--batch 1] [--repeats 5] [--json out.json]

timm's ``samvit_base_patch16`` is configured as ViTDet-B (img 448, window 14, global blocks
2, 5, 8, 11, no neck). Times are the median of ``--repeats`` runs after one warm-up.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from functools import partial

import torch
import torch.nn as nn

from vglaw import build_model


def median_seconds(fn, repeats: int) -> float:
    with torch.inference_mode():
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import timm

    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, 448, 448)
    ids = torch.randint(1000, 29000, (args.batch, 40))
    mask = torch.ones(args.batch, 40, dtype=torch.long)
    model = build_model("vitb").eval()
    static = build_model("vitb", law_type="none").eval()
    timm_vit = timm.create_model("samvit_base_patch16", pretrained=False, img_size=448, neck_chans=0,
                                 num_classes=0, norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    timm_vit.neck = nn.Identity()
    rows = {
        "timm ViTDet-B backbone": lambda: timm_vit.forward_features(images),
        "vglaw backbone (no LAW)": lambda: model.backbone(images),
        "vglaw vitb, law_type=none": lambda: static(images, ids, mask),
        "vglaw vitb, law_type=svd": lambda: model(images, ids, mask),
    }
    results = {name: median_seconds(fn, args.repeats) for name, fn in rows.items()}
    base = results["timm ViTDet-B backbone"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"batch {args.batch}, fp32, median of {args.repeats}")
    print(f"| {'model':28s} | ms / batch | vs timm |")
    print(f"|{'-' * 30}|-----------:|--------:|")
    for name, seconds in results.items():
        print(f"| {name:28s} | {seconds * 1000:10.0f} | {seconds / base:6.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "seconds": results}, f, indent=2)


if __name__ == "__main__":
    main()
