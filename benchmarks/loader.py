"""The training loader's work on one core against the floor every pipeline pays.

    python benchmarks/loader.py [--images 40] [--samples 300] [--img-size 448] [--json out.json]

Builds COCO-like data in the REFER layout: 640x480 JPEGs (quality 90) of textured scenes, each
with objects annotated by polygons, two expressions per object. Then, on one core (one thread,
what each DataLoader worker has):

- floor: PIL decode + resize of the longer side to ``--img-size``, as uint8;
- train: ``GroundingDataset.__getitem__`` with augmentation and masks on (decode, EXIF, mask
  decode, resize, the authors' crop, flip, translation, uint8 canvas, tokenisation);
- eval: the same without augmentation;

and the bytes of one sample that cross the worker queue (its tensors, which travel through
shared memory, and its pickled metadata).
"""
from __future__ import annotations

import argparse
import json
import pickle
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from vglaw.data import GroundingDataset, load_tokenizer, prepare


def coco_like(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` 640x480 JPEGs with polygon-annotated objects, as a REFER dataset ``cocolike``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, annotations, refs = [], [], []
    for image_id in range(1, n + 1):
        noise = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)  # low-frequency texture, fine grain on top
        img = Image.fromarray(noise).resize((640, 480), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
        img = Image.fromarray(np.clip(np.asarray(img, np.int16) + rng.integers(-12, 12, (480, 640, 3)), 0, 255)
                              .astype(np.uint8))
        draw = ImageDraw.Draw(img)
        name = f"COCO_train2014_{image_id:012d}.jpg"
        for j in range(3):
            cx, cy, r = rng.integers(80, 560), rng.integers(80, 400), rng.integers(25, 80)
            angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
            poly = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles) * 0.8], 1).round(1)
            draw.polygon([tuple(p) for p in poly], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            ann_id = image_id * 10 + j
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                                "segmentation": [poly.flatten().tolist()], "area": float((x1 - x0) * (y1 - y0))})
            sents = [{"sent_id": ann_id * 10 + t, "sent": s, "raw": s, "tokens": s.split()}
                     for t, s in enumerate((f"the shape number {j} in picture {image_id}",
                                            f"the {['left', 'middle', 'right'][j]} blob"))]
            refs.append({"ref_id": ann_id, "ann_id": ann_id, "image_id": image_id, "split": "train",
                         "category_id": 1, "file_name": f"{name[:-4]}_{j}.jpg", "sentences": sents,
                         "sent_ids": [s["sent_id"] for s in sents]})
        img.save(root / "images" / name, quality=90)
        images.append({"id": image_id, "file_name": name, "width": 640, "height": 480})
    (root / "cocolike").mkdir()
    (root / "cocolike" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (root / "cocolike" / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "shape"}]}))
    prepare(fmt="refer", data_root=root, dataset="cocolike", image_root=root / "images", out=root / "prepared",
            progress=False)
    return root / "prepared"


def rate(fn, n: int) -> float:
    fn(0)  # warm-up
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def queue_bytes(item: dict) -> dict:
    tensors = sum(v.numel() * v.element_size() for v in item.values() if torch.is_tensor(v))
    rest = len(pickle.dumps({k: v for k, v in item.items() if not torch.is_tensor(v)}))
    return {"tensors": tensors, "other": rest, "total": tensors + rest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--img-size", type=int, default=448)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one worker = one core
    size = args.img_size
    with tempfile.TemporaryDirectory() as tmp:
        prepared = coco_like(Path(tmp), args.images)
        train = GroundingDataset(prepared, "train", tokenizer=load_tokenizer(), img_size=size, max_len=40, train=True)
        evaluation = GroundingDataset(prepared, "train", tokenizer=train.tokenizer, img_size=size, max_len=40)
        paths = [train.image_root / r["image"] for r in train.records]

        def floor(i: int) -> np.ndarray:
            with Image.open(paths[i % len(paths)]) as img:
                img = img.convert("RGB")
                scale = size / max(img.size)
                return np.asarray(img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR))

        results = {"floor": rate(floor, args.samples),
                   "train": rate(lambda i: train[i % len(train)], args.samples),
                   "eval": rate(lambda i: evaluation[i % len(evaluation)], args.samples)}
        sample_bytes = queue_bytes(train[0])
    out = {"img_size": size, "samples_s": results, "train_over_floor": results["train"] / results["floor"],
           "bytes_per_sample": sample_bytes, "machine": f"{platform.machine()}, "
           f"{torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, 1 thread",
           "date": time.strftime("%Y-%m-%d")}
    print(f"| work ({size} px, one core) | samples/s | of the floor |")
    print("|---|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r:.1f} | {r / results['floor']:.2f} |")
    print(f"bytes per sample through the worker queue: {sample_bytes['total'] / 1e6:.3f} MB "
          f"(tensors {sample_bytes['tensors']:,}, metadata {sample_bytes['other']:,}); {out['machine']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
