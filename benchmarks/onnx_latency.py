"""onnxruntime against PyTorch on the CPU: forward latency of the exported model.

    python benchmarks/onnx_latency.py [--json benchmarks/results_onnx.json] [--repeats 5]

Exports `vitb` (448, random weights: latency does not depend on them) and the bundled demo
checkpoint with `vglaw export`, then times one forward of each at batch 1 and 4 (two
expressions' worth of tokens, 12 each) in PyTorch (fp32, inference mode) and in onnxruntime
(CPU provider), median of the repeats after a warm-up, in one process.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

from vglaw import build_model
from vglaw.hub import DEMO_CHECKPOINT
from vglaw.inference.export import OnnxModel, export_onnx
from vglaw.model.io import from_pretrained


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    build_model("vitb").save_pretrained(work / "vitb")
    models = {"vitb": work / "vitb", "demo": DEMO_CHECKPOINT}
    result = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "runs": []}
    for name, checkpoint in models.items():
        start = time.perf_counter()
        path = export_onnx(checkpoint, work / f"{name}.onnx")
        export_s = round(time.perf_counter() - start, 1)
        model, ort = from_pretrained(checkpoint).eval(), OnnxModel(path)
        size = model.img_size
        for batch in (1, 4):
            images = torch.randn(batch, 3, size, size)
            ids = torch.randint(1000, 20000, (batch, 12))
            ids[:, 0], ids[:, -1] = 101, 102
            mask = torch.ones(batch, 12, dtype=torch.long)

            def run_torch():
                with torch.inference_mode():
                    model(images, ids, mask)

            result["runs"].append({"model": name, "img_size": size, "batch": batch, "export_s": export_s,
                                   "onnx_mb": round(path.stat().st_size / 2**20, 1),
                                   "pytorch_ms": median_ms(run_torch, args.repeats),
                                   "onnxruntime_ms": median_ms(lambda: ort(images, ids, mask), args.repeats)})
            print(result["runs"][-1], flush=True)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
