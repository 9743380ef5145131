"""Data-loading throughput: samples/s of one worker at 448 for the train and eval pipelines.

    python benchmarks/data.py [--samples 200] [--json out.json]

Generates a synthetic REFER set with COCO-sized images (480-640 px), prepares it, then times
``GroundingDataset.__getitem__`` (decode, augment/letterbox, tokenise) in this process, which
is what each DataLoader worker does.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from vglaw.data import GroundingDataset, load_tokenizer, prepare
from vglaw.data.synth import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--img-size", type=int, default=448)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one worker = one core
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, split_sizes={"train": 40, "val": 40}, min_size=480, max_size=640, progress=False)
        prepare(fmt="refer", data_root=tmp, dataset="synthref", image_root=f"{tmp}/images", out=f"{tmp}/p",
                progress=False)
        tokenizer = load_tokenizer()
        results = {}
        for split, train in (("train", True), ("val", False)):
            ds = GroundingDataset(f"{tmp}/p", split, tokenizer=tokenizer, img_size=args.img_size, train=train)
            ds[0]
            start = time.perf_counter()
            for i in range(args.samples):
                ds[i % len(ds)]
            results["train" if train else "eval"] = args.samples / (time.perf_counter() - start)
    print(f"| pipeline | samples/s per worker ({args.img_size}, 1 thread) |")
    print("|---|---:|")
    for name, rate in results.items():
        print(f"| {name} | {rate:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
