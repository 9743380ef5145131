"""vglaw's cost next to a bare ViTDet-B backbone, in one process on one machine.

    python benchmarks/bench.py [--repeats 3] [--json benchmarks/results.json]

Prints markdown tables (and writes JSON) of:
* the machine's measured matmul peak (fp32, bf16);
* forward latency / throughput of `vitb` at 448, batch 1 and 4, fp32 and bf16 autocast, with
  law_type svd and none, next to timm's bare ``samvit_base_patch16`` configured as ViTDet-B
  (window 14, global blocks 2, 5, 8, 11, no neck);
* the share of the forward in text encoder, generator, backbone and heads;
* LAW's own cost: svd vs none timed in interleaved pairs (so that the machine's drift hits
  both alike), and the profiler's time in LAW's low-rank ops (``law.low_rank``) and the generator;
* achieved GFLOP/s (torch's FLOP counter) against the measured peak;
* one training step (forward + backward + AdamW) of `tiny` and `vitb`;
* peak memory (max RSS of this process after each part, or CUDA peak on a GPU).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from functools import partial

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from vglaw import build_model
from vglaw.engine.losses import grounding_loss


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, 3)
    return 2 * n**3 / seconds / 1e9


def timm_backbone():
    import timm

    model = timm.create_model("samvit_base_patch16", pretrained=False, img_size=448, neck_chans=0, num_classes=0,
                              norm_layer=partial(nn.LayerNorm, eps=1e-6))
    model.neck = nn.Identity()
    return model.eval()


def autocast(device, precision):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def inputs(batch: int, device, size: int = 448, length: int = 40):
    """Random images and token ids with an all-ones attention mask."""
    images = torch.randn(batch, 3, size, size, device=device)
    ids = torch.randint(1000, 29000, (batch, length), device=device)
    return images, ids, torch.ones(batch, length, dtype=torch.long, device=device)


def forward_table(args, device) -> list[dict]:
    models = {"timm ViTDet-B backbone": timm_backbone().to(device),
              "vglaw vitb, law_type=none": build_model("vitb", law_type="none").eval().to(device),
              "vglaw vitb, law_type=svd": build_model("vitb").eval().to(device)}
    rows = []
    for precision in ("fp32", "bf16"):
        for batch in (1, 4):
            images, ids, mask = inputs(batch, device)
            for name, model in models.items():
                def run(model=model, name=name):
                    with torch.inference_mode(), autocast(device, precision):
                        return model.forward_features(images) if name.startswith("timm") else model(images, ids, mask)
                # bf16 without AVX-512 BF16 / AMX is emulated and slow: one timed run after none
                # of warm-up is enough there
                fast = precision == "fp32" or device.type == "cuda" or "AVX512" in torch.backends.cpu.get_cpu_capability()
                seconds = timed(run, args.repeats if fast else 1, warmup=1 if fast else 0)
                rows.append({"model": name, "precision": precision, "batch": batch, "ms": seconds * 1000,
                             "images_s": batch / seconds, "peak_mb": peak_memory_mb(device)})
                print(f"  {name} {precision} batch {batch}: {seconds * 1000:.0f} ms", flush=True)
    return rows


def parts_table(args, device) -> dict:
    """Seconds of each part of the `vitb` forward, batch 1 fp32, and the whole forward's FLOPs."""
    model = build_model("vitb").eval().to(device)
    images, ids, mask = inputs(1, device)
    with torch.inference_mode():
        text = model.text_encoder(ids, mask)
        law = model.generator(text, mask)
        features = model.backbone(images, law)
        parts = {
            "text encoder": timed(lambda: model.text_encoder(ids, mask), args.repeats),
            "generator": timed(lambda: model.generator(text, mask), args.repeats),
            "backbone (with LAW)": timed(lambda: model.backbone(images, law), args.repeats),
            "heads": timed(lambda: (model.box_head(features, text[:, 0]),
                                    model.mask_head(features, text[:, 0], 448)), args.repeats),
        }
        whole = timed(lambda: model(images, ids, mask), args.repeats)
        counter = FlopCounterMode(display=False)
        with counter:
            model(images, ids, mask)
    return {"seconds": parts, "whole_seconds": whole, "gflop": counter.get_total_flops() / 1e9}


def law_table(args, device) -> dict:
    """LAW's cost in the `vitb` forward (fp32): the median ratio of svd to none over interleaved
    pairs of runs, and torch.profiler's share of the forward spent in LAW's own work."""
    svd, none = build_model("vitb").eval().to(device), build_model("vitb", law_type="none").eval().to(device)
    pairs = {}
    for batch in (1, 4):
        images, ids, mask = inputs(batch, device)
        ratios = []
        with torch.inference_mode():
            for model in (svd, none):
                model(images, ids, mask)  # warm-up
            for _ in range(args.repeats + 2):
                t_none = timed(lambda: none(images, ids, mask), 1, warmup=0)
                t_svd = timed(lambda: svd(images, ids, mask), 1, warmup=0)
                ratios.append(t_svd / t_none)
        pairs[batch] = {"ratios": ratios, "median_cost_pct": (statistics.median(ratios) - 1) * 100}
        print(f"  LAW pairs batch {batch}: {pairs[batch]['median_cost_pct']:+.1f} %", flush=True)
    images, ids, mask = inputs(1, device)
    with torch.inference_mode():
        text = svd.text_encoder(ids, mask)
        with torch.profiler.profile() as prof:
            with torch.profiler.record_function("law.generator"):
                svd.generator(text, mask)
            with torch.profiler.record_function("forward"):
                svd(images, ids, mask)
    totals = {e.key: e.cpu_time_total for e in prof.key_averages() if e.key.startswith(("law.", "forward"))}
    # the forward runs the generator once more inside; count the standalone call's time for it
    share = {k: totals[k] / totals["forward"] * 100 for k in ("law.low_rank", "law.generator")}
    print(f"  LAW profiler share: {share}", flush=True)
    return {"pairs": pairs, "profiler_share_pct": share}


def train_step_table(args, device) -> list[dict]:
    rows = []
    for name, batch in (("tiny", 8), ("vitb", 1)):
        model = build_model(name).train().to(device)
        size, length = model.img_size, model.config.max_len
        images, ids, mask = inputs(batch, device, size, length)
        target = {"box": torch.rand(batch, 4, device=device) * 0.5 + 0.25,
                  "mask": (torch.rand(batch, size, size, device=device) > 0.5).to(torch.uint8),
                  "has_mask": torch.ones(batch, dtype=torch.bool, device=device)}
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        weights = argparse.Namespace(l1=1.0, giou=1.0, focal=1.0, dice=1.0)

        def step(model=model, optimizer=optimizer, images=images, ids=ids, mask=mask, target=target):
            loss = grounding_loss(model(images, ids, mask), target, weights)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        seconds = timed(step, max(1, args.repeats - 1))
        rows.append({"model": name, "batch": batch, "img_size": size, "ms": seconds * 1000,
                     "images_s": batch / seconds, "peak_mb": peak_memory_mb(device)})
        print(f"  train step {name} batch {batch}: {seconds * 1000:.0f} ms", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    info = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {platform.processor()}".strip(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": str(device)}
    print("matmul peak ...", flush=True)
    peak = {"fp32": matmul_peak(torch.float32, device), "bf16": matmul_peak(torch.bfloat16, device)}
    print("forward ...", flush=True)
    forward = forward_table(args, device)
    print("parts ...", flush=True)
    parts = parts_table(args, device)
    print("LAW cost ...", flush=True)
    law = law_table(args, device)
    print("training step ...", flush=True)
    train = train_step_table(args, device)
    results = {"info": info, "matmul_peak_gflops": peak, "forward": forward, "parts": parts, "law": law,
               "train_step": train}
    print_tables(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def print_tables(r: dict) -> None:
    info, peak = r["info"], r["matmul_peak_gflops"]
    print(f"\n{info['date']}, {info['machine']}, torch {info['torch']} ({info['cpu_capability']}), "
          f"{info['threads']} threads, device {info['device']}\n")
    print(f"Measured matmul peak (2048^3): fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s\n")
    print("| model | precision | batch | ms / batch | images/s | vs timm | peak MB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    base = {(x["precision"], x["batch"]): x["ms"] for x in r["forward"] if x["model"].startswith("timm")}
    for x in r["forward"]:
        print(f"| {x['model']} | {x['precision']} | {x['batch']} | {x['ms']:.0f} | {x['images_s']:.2f} | "
              f"{x['ms'] / base[(x['precision'], x['batch'])]:.2f}x | {x['peak_mb']:.0f} |")
    ms = {(x["model"], x["precision"], x["batch"]): x["ms"] for x in r["forward"]}
    svd, none = "vglaw vitb, law_type=svd", "vglaw vitb, law_type=none"
    print("\n| batch | bf16 speed-up (svd) | LAW cost: svd vs none (fp32) |")
    print("|---:|---:|---:|")
    for b in (1, 4):
        print(f"| {b} | {ms[(svd, 'fp32', b)] / ms[(svd, 'bf16', b)]:.2f}x | "
              f"{(ms[(svd, 'fp32', b)] / ms[(none, 'fp32', b)] - 1) * 100:+.1f} % |")
    law = r["law"]
    print("\nLAW's own cost in the fp32 forward (svd vs none, median of interleaved pairs; profiler, batch 1):\n")
    print("| batch | svd / none - 1 | pairs |")
    print("|---:|---:|---:|")
    for b, x in law["pairs"].items():
        print(f"| {b} | {x['median_cost_pct']:+.1f} % | {len(x['ratios'])} |")
    share = law["profiler_share_pct"]
    print(f"\nProfiler: LAW's low-rank ops (D x, Phi, S accumulated into the qkv GEMM) "
          f"{share['law.low_rank']:.2f} % of the forward, the generator {share['law.generator']:.2f} %, "
          f"together {sum(share.values()):.2f} %.")
    p = r["parts"]
    total = sum(p["seconds"].values())
    print(f"\n`vitb` forward, batch 1, fp32: {p['whole_seconds'] * 1000:.0f} ms, {p['gflop']:.1f} GFLOP, "
          f"{p['gflop'] / p['whole_seconds']:.0f} GFLOP/s achieved = "
          f"{p['gflop'] / p['whole_seconds'] / peak['fp32'] * 100:.0f} % of the measured fp32 peak\n")
    print("| part | ms | share |")
    print("|---|---:|---:|")
    for name, seconds in p["seconds"].items():
        print(f"| {name} | {seconds * 1000:.1f} | {seconds / total * 100:.1f} % |")
    print("\n| training step (fwd + bwd + AdamW), fp32 | batch | canvas | ms | images/s | peak MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for x in r["train_step"]:
        print(f"| {x['model']} | {x['batch']} | {x['img_size']} | {x['ms']:.0f} | {x['images_s']:.2f} | "
              f"{x['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
