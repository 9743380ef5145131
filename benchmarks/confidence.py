"""What each confidence feature adds, measured on the bundled demo model.

Fits the calibrator on one fresh synthetic set (seed 11) and measures it on another (seed 12),
300 images each, and on seed 12 with the expressions shuffled across samples (the demo's
control: every such answer is about an expression that is not in its image). Reports each
feature alone, the full set, and the full set with each feature left out, and the full set's
scores on images with nothing on them (with and without clipping each feature to its fitted
range), then writes ``benchmarks/results_confidence.json``.

    python benchmarks/confidence.py [--images 300]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torchvision.ops import box_iou

from vglaw.commands.demo import shuffled
from vglaw.data import GroundingDataset, prepare
from vglaw.data.synth import generate
from vglaw.engine.calibrate import fit_calibrator
from vglaw.engine.loop import eval_loader, evaluate
from vglaw.engine.metrics import confidence_metrics, separation_auroc
from vglaw.hub import DEMO_CHECKPOINT
from vglaw.inference.predictor import Grounder
from vglaw.model.confidence import FEATURES

RESULTS = Path(__file__).with_name("results_confidence.json")


def samples_of(grounder, root: Path, seed: int, images: int, shuffle: bool = False):
    data = root / f"seed{seed}"
    if not (data / "prepared").exists():
        generate(data, seed=seed, split_sizes={"val": images}, progress=False)
        prepare(fmt="refer", data_root=data, dataset="synthref", image_root=data / "images", out=data / "prepared",
                progress=False)
    ds = GroundingDataset(data / "prepared", "val", tokenizer=grounder.tokenizer, img_size=grounder.spec.img_size,
                          max_len=grounder.spec.max_len)
    ds = shuffled(ds) if shuffle else ds
    with torch.inference_mode():
        _, samples = evaluate(grounder.model, eval_loader(ds, 32, 0), ds, device=torch.device("cpu"),
                              desc=f"seed {seed}", with_samples=True)
    return samples, ds


def on_an_object(samples, ds) -> np.ndarray:
    """Per sample: does the predicted box cover (IoU >= 0.5) an annotated object of its image?"""
    by_image: dict[str, list[int]] = {}
    for i, r in enumerate(ds.records):
        by_image.setdefault(r["image"], []).append(i)
    hits = []
    for i, r in enumerate(ds.records):
        objects = torch.stack([ds.gt_box(j) for j in by_image[r["image"]]]).float()
        hits.append(bool((box_iou(samples["boxes"][i:i + 1], objects) >= 0.5).any()))
    return np.array(hits)


BLANK_TEXTS = ["the red square", "the leftmost shape", "the big blue circle", "the topmost shape"]


def blank_scores(grounder, calibrator) -> dict:
    """The scores of answers to BLANK_TEXTS on images with nothing on them: uniform grey, white,
    black and purple, and colour noise; with the calibrator as fitted (each feature clipped to its
    range on the fitting data) and with the clip taken off."""
    rng = np.random.default_rng(0)
    images = {"grey": np.full((150, 200, 3), 128, np.uint8), "white": np.full((300, 120, 3), 255, np.uint8),
              "black": np.zeros((64, 64, 3), np.uint8), "purple": np.full((100, 100, 3), (140, 90, 170), np.uint8),
              "noise": rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)}
    n = len(calibrator.features)
    unclipped = dataclasses.replace(calibrator, low=(-math.inf,) * n, high=(math.inf,) * n)
    result = {}
    for name, c in (("clipped", calibrator), ("unclipped", unclipped)):
        grounder.calibrator = c
        answers = [p for image in images.values() for p in grounder.predict(image, BLANK_TEXTS)]
        scores = np.array([p.score for p in answers])
        empty = np.array([not p.mask.any() for p in answers])
        result[name] = {"answers": len(answers), "empty_masks": int(empty.sum()), "max_score": float(scores.max()),
                        "mean_score": float(scores.mean()),
                        "max_score_empty_mask": float(scores[empty].max()) if empty.any() else None}
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    start = time.time()
    grounder = Grounder.from_pretrained(DEMO_CHECKPOINT, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        fit, _ = samples_of(grounder, Path(tmp), 11, args.images)
        test, _ = samples_of(grounder, Path(tmp), 12, args.images)
        control, control_ds = samples_of(grounder, Path(tmp), 12, args.images, shuffle=True)
        landed = on_an_object(control, control_ds)
    right = test["box_iou"] >= 0.5

    def measure(names) -> dict:
        calibrator = fit_calibrator(fit["features"], fit["box_iou"], names=names)
        scores = calibrator(test["features"]).numpy()
        shuffled_scores = calibrator(control["features"]).numpy()
        wrong_shuffled = (control["box_iou"] < 0.5).numpy()
        return {**confidence_metrics(scores, right.numpy()),
                # right answers to the real expressions against wrong answers to shuffled ones
                "shuffled_auroc": separation_auroc(scores[right.numpy()], shuffled_scores[wrong_shuffled]),
                "shuffled_wrong_mean_score": float(shuffled_scores[wrong_shuffled].mean()),
                "right_mean_score": float(scores[right.numpy()].mean())}

    names = list(FEATURES)
    alone = {n: float(roc_auc_score(right.numpy(), test["features"][n].numpy())) for n in names}
    full = measure(names)
    without = {n: measure([m for m in names if m != n]) for n in names}
    rows = [f"{'features':<28} {'AUROC':>6} {'ECE':>6} {'P@80%':>6} {'P@50%':>6} {'shufAUROC':>9}"]
    fmt = lambda k, m: (f"{k:<28} {m['auroc']:6.3f} {m['ece']:6.3f} {m['prec@0.5@80%']:6.3f} "  # noqa: E731
                        f"{m['prec@0.5@50%']:6.3f} {m['shuffled_auroc']:9.3f}")
    rows.append(fmt("all", full))
    rows += [fmt(f"without {n}", m) for n, m in without.items()]
    print("\n".join(rows))
    print("alone (AUROC of the raw feature):", json.dumps({n: round(v, 3) for n, v in alone.items()}))
    # what limits the shuffled case: wrong answers that still cover a real object of the image
    scores = fit_calibrator(fit["features"], fit["box_iou"])(control["features"]).numpy()
    wrong = (control["box_iou"] < 0.5).numpy()
    limits = {"shuffled_wrong": int(wrong.sum()), "on_another_object": int((wrong & landed).sum()),
              "mean_score_on_another_object": float(scores[wrong & landed].mean()),
              "mean_score_on_no_object": float(scores[wrong & ~landed].mean()) if (wrong & ~landed).any() else None}
    print("shuffled, wrong answers:", json.dumps(limits))
    blank = blank_scores(grounder, fit_calibrator(fit["features"], fit["box_iou"]))
    print("images with nothing on them:", json.dumps(blank))
    result = {"command": "python benchmarks/confidence.py", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}",
              "images_per_set": args.images, "expressions": {"fit": len(fit["box_iou"]), "test": len(right)},
              "prec@0.5": float(right.float().mean()), "all_features": full, "feature_alone_auroc": alone,
              "without_feature": without,
              "shuffled_wrong_answers": limits, "blank_images": blank, "seconds": round(time.time() - start, 1)}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
