"""Where a `vitb` training step's tensor copies come from, traced on the CPU.

    python benchmarks/trace_copies.py [--img-size 224]

The H100 profile in BENCHMARKS.md puts a quarter of the GPU time in ``aten::copy_``. This runs one
forward + backward under bf16 autocast, batch 1, on the CPU (no GPU needed; the CPU's attention
takes the math path, so its copies there are CPU-only), and counts each ``aten::copy_`` by the
chain of ops that called it and the copied shape.
"""
from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

from vglaw import build_model
from vglaw.engine.losses import grounding_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    torch.manual_seed(0)
    S = args.img_size
    model = build_model("vitb", load_text_weights=False, img_size=S).train()
    images, ids, mask = torch.randn(1, 3, S, S), torch.randint(1000, 29000, (1, 40)), torch.ones(1, 40, dtype=torch.long)
    target = {"box": torch.tensor([[0.5, 0.5, 0.3, 0.3]]), "mask": (torch.rand(1, S, S) > 0.5).to(torch.uint8),
              "has_mask": torch.ones(1, dtype=torch.bool)}
    weights = argparse.Namespace(l1=1.0, giou=1.0, focal=1.0, dice=1.0)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(images, ids, mask)
        grounding_loss(out, target, weights)["loss"].backward()
    copies = [e for e in prof.events() if e.name == "aten::copy_"]
    sites = collections.Counter()
    for event in copies:
        chain, parent = [], event
        while parent.cpu_parent is not None:
            parent = parent.cpu_parent
            chain.append(parent.name)
        sites[(" < ".join(chain[:3]), str(event.input_shapes[0]))] += 1
    print(f"{len(copies)} aten::copy_ calls in one step\n\n| calls | called by | shape |\n|---:|---|---|")
    for (chain, shape), n in sites.most_common(args.rows):
        print(f"| {n} | {chain} | {shape} |")


if __name__ == "__main__":
    main()
