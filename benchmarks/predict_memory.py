"""Peak memory (RSS) and time of ``vglaw predict`` on one large image, against the number of
expressions: each measurement is a fresh process running the command as a user types it (the
bundled demo model; the picture and the JSON written), its peak RSS read from the kernel's
accounting of that process (``os.wait4``).

    python benchmarks/predict_memory.py [--side 6000] [--expressions 1 5 10] [--code DIR]
                                        [--json benchmarks/results_predict_memory.json]

``--code DIR`` runs the vglaw package found in DIR instead of this checkout's (e.g. an older
commit unpacked with ``git archive <commit> | tar -x -C DIR``), with the same Python.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["the red circle", "the blue square", "the green triangle", "the leftmost shape", "the biggest shape",
         "the small red square", "the shape at the top", "the blue circle on the right", "the green shape",
         "the shape at the bottom"]


def shapes_image(path: Path, side: int, seed: int = 0) -> None:
    """A ``side`` x ``side`` picture of coloured shapes (the demo model's world), as PNG."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (side, side), (230, 225, 210))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = (int(v) for v in rng.integers(0, side * 3 // 4, 2))
        s = int(rng.integers(side // 20, side // 6))
        colour = [(220, 30, 30), (30, 160, 40), (40, 60, 220)][int(rng.integers(0, 3))]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + s, y + s], fill=colour)
    img.save(path)


def measure(code: Path, image: Path, texts: list[str], out: Path) -> dict:
    """One ``vglaw predict`` in a fresh process: its exit status, peak RSS (MB) and seconds."""
    argv = ["predict", "--image", str(image), "--out", str(out)] + [a for t in texts for a in ("--text", t)]
    script = f"import sys; from vglaw.cli import main; sys.exit(main({argv!r}))"
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=out.parent)
    stderr = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    result = {"expressions": len(texts), "exit": proc.returncode, "peak_rss_mb": round(usage.ru_maxrss / 1024),
              "seconds": round(seconds, 1)}
    if proc.returncode:
        result["stderr"] = stderr.strip().splitlines()[-1:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=6000, help="the image's width and height")
    parser.add_argument("--expressions", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--code", type=Path, default=ROOT, help="the folder holding the vglaw package to run")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / f"shapes_{args.side}.png"
        shapes_image(image, args.side)
        rows = [measure(args.code.resolve(), image, TEXTS[:n], Path(tmp) / "out.png") for n in args.expressions]
    commit = subprocess.run(["git", "-C", str(args.code), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    results = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
               "machine": f"{platform.machine()}, {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} CPUs, "
                          f"torch {torch.__version__}", "load_average": [round(v, 2) for v in os.getloadavg()],
               "code": str(args.code), "commit": commit or None, "image": f"{args.side}x{args.side} PNG",
               "rows": rows}
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
