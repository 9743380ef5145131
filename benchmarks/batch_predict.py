"""Pairs per second: ``vglaw predict --pairs`` (the batch path) against a loop of
``Grounder.predict`` over the same pairs, one call per pair, in one run, on this machine.

* the bundled demo model (96 px canvas) on 500 pairs of a fresh synthetic set (about 6 pairs
  per image);
* ``vitb`` at 448 (random weights: speed does not depend on them) on 32 pairs (4 per image),
  at batch 1 and 8, and its forward's cost per expression at batch 1, 4 and 8 (the profile that
  says what batching can win).

Both paths write nothing but the batch path's results file; the model is loaded once, before
the clocks start. Results: ``benchmarks/results_batch_predict.json``.

    python benchmarks/batch_predict.py [--device cpu|cuda] [--vitb-pairs 32]

On a GPU: ``python benchmarks/batch_predict.py --device cuda --pairs 5000 --vitb-pairs 2000``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from vglaw import build_model
from vglaw.data import prepare
from vglaw.data.prepare import load_split
from vglaw.data.synth import generate
from vglaw.hub import DEMO_CHECKPOINT
from vglaw.inference.batch import predict_pairs
from vglaw.inference.predictor import Grounder, as_rgb

RESULTS = Path(__file__).with_name("results_batch_predict.json")


def synthetic_pairs(root: Path, pairs: int, per_image: int | None, seed: int = 7) -> Path:
    """A fresh synthetic set's (image, expression) pairs as JSONL beside its images, at most
    ``per_image`` expressions per image (all of them when None)."""
    generate(root, seed=seed, split_sizes={"val": pairs // (per_image or 6) + 1}, progress=False)
    prepare(fmt="refer", data_root=root, dataset="synthref", image_root=root / "images", out=root / "prepared",
            progress=False)
    by_image: dict[str, list[str]] = {}
    for record in load_split(root / "prepared", "val")[1]:
        by_image.setdefault(record["image"], []).append(record["sentence"])
    rows = [{"image": f"images/{image}", "text": text} for image, texts in by_image.items()
            for text in texts[:per_image]][:pairs]
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps({"id": i, **r}) + "\n" for i, r in enumerate(rows)))
    return path


def measure(grounder: Grounder, pairs_path: Path, work: Path, batch_sizes: list[int], workers: list[int]) -> dict:
    pairs = [json.loads(line) for line in pairs_path.read_text().splitlines()]
    root = pairs_path.parent
    grounder.predict(root / pairs[0]["image"], pairs[0]["text"])  # warm up
    start = time.perf_counter()
    for p in pairs:
        grounder.predict(root / p["image"], p["text"])
    loop = len(pairs) / (time.perf_counter() - start)
    result = {"pairs": len(pairs), "images": len({p["image"] for p in pairs}), "loop_pairs_per_s": round(loop, 2)}
    for batch_size in batch_sizes:
        for n in workers:
            out = work / f"out_{batch_size}_{n}.jsonl"
            start = time.perf_counter()
            # a fresh out each time: nothing to resume, so the model's files need not be named
            predict_pairs(grounder, pairs_path, out, model_files=[], batch_size=batch_size, num_workers=n)
            batch = len(pairs) / (time.perf_counter() - start)
            result[f"batch {batch_size}, workers {n}"] = {"pairs_per_s": round(batch, 2), "speedup": round(batch / loop, 2)}
            out.unlink()
    return result


def forward_profile(grounder: Grounder, pairs_path: Path, batches=(1, 4, 8), repeats: int = 2) -> dict:
    """Seconds per expression of the model's forward alone at several batch sizes (expressions of
    one image), and of one ``Grounder.predict`` call around it: what batching can win."""
    pair = json.loads(pairs_path.read_text().splitlines()[0])
    image = pairs_path.parent / pair["image"]
    out = {}
    with torch.inference_mode():
        for b in batches:
            images, ids, mask, _ = grounder.inputs(as_rgb(image), [pair["text"]] * b)
            grounder.forward(images, ids, mask)
            start = time.perf_counter()
            for _ in range(repeats):
                grounder.forward(images, ids, mask)
            out[f"forward s/expression, batch {b}"] = round((time.perf_counter() - start) / repeats / b, 4)
    start = time.perf_counter()
    for _ in range(repeats):
        grounder.predict(image, pair["text"])
    out["Grounder.predict s/pair"] = round((time.perf_counter() - start) / repeats, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--vitb-pairs", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    results = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.backends.cpu.get_cpu_capability()}, "
                   f"{torch.get_num_threads()} threads, torch {torch.__version__}"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = Grounder.from_pretrained(DEMO_CHECKPOINT, device=args.device)
        results["demo (96 px)"] = measure(demo, synthetic_pairs(tmp / "demo", args.pairs, None), tmp, [32],
                                          args.workers)
        print(json.dumps(results["demo (96 px)"]), flush=True)
        build_model("vitb").save_pretrained(tmp / "vitb")
        vitb = Grounder.from_pretrained(tmp / "vitb", device=args.device)
        vitb_pairs = synthetic_pairs(tmp / "vitb_data", args.vitb_pairs, 4)
        results["vitb (448 px)"] = measure(vitb, vitb_pairs, tmp, [1, 8], args.workers)
        print(json.dumps(results["vitb (448 px)"]), flush=True)
        results["vitb (448 px) profile"] = forward_profile(vitb, vitb_pairs)
        print(json.dumps(results["vitb (448 px) profile"]), flush=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
