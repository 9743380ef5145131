"""Training throughput of `vitb` at 448 in bf16 on one GPU: images/s and MFU.

    python benchmarks/gpu_train.py [--batch 32] [--steps 20] [--peak-tflops 989] [--compile]
                                   [--law-type none] [--attention fold] [--profile]

MFU = (FLOPs of one training step, counted with torch's FLOP counter) x steps/s / peak;
the default peak is an H100 SXM's dense bf16 (989 TFLOP/s): pass your GPU's.
``--law-type none`` times the static backbone (LAW's cost); ``--attention fold`` the rel-pos
folded into q/k (no attention bias, so fused kernels apply); ``--profile`` prints the kernels
and labelled regions (``law.low_rank``) that took the most GPU time over 5 steps.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vglaw import build_model
from vglaw.engine.losses import grounding_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--law-type", default="svd")
    parser.add_argument("--attention", default=None, help="bias (the reference) or fold; default: the model's")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for a GPU")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    extra = {} if args.attention is None else {"attention": args.attention}
    model = build_model("vitb", law_type=args.law_type, **extra).train().to(device)
    step_model = torch.compile(model) if args.compile else model
    B = args.batch
    images = torch.randn(B, 3, 448, 448, device=device)
    ids = torch.randint(1000, 29000, (B, 40), device=device)
    mask = torch.ones(B, 40, dtype=torch.long, device=device)
    target = {"box": torch.rand(B, 4, device=device) * 0.5 + 0.25,
              "mask": (torch.rand(B, 448, 448, device=device) > 0.5).to(torch.uint8),
              "has_mask": torch.ones(B, dtype=torch.bool, device=device)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    weights = argparse.Namespace(l1=1.0, giou=1.0, focal=1.0, dice=1.0)

    def step(m):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(images, ids, mask)
        grounding_loss(out, target, weights)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    counter = FlopCounterMode(display=False)
    with counter:
        step(model)
    flops = counter.get_total_flops()
    for _ in range(3):
        step(step_model)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(step_model)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step(step_model)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=25))
    result = {"gpu": torch.cuda.get_device_name(), "batch": B, "compile": args.compile, "law_type": args.law_type, "attention": args.attention,
              "images_s": B / seconds, "step_ms": seconds * 1000, "tflop_per_step": flops / 1e12,
              "mfu": flops / seconds / (args.peak_tflops * 1e12),
              "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
