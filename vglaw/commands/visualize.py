"""``vglaw visualize``: ground truth against prediction panels for samples of a prepared split."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..fileio import json_text
from ..hub import checkpoint_or_demo
from .checks import input_checkpoint, input_folder, output_folder
from .options import DEMO_HELP, add_answer_options, add_runtime_options


def visualize(checkpoint, prepared, split: str, indexes: list[int], out_dir, *, law: bool = False,
              device="auto", mask_threshold=None) -> list[dict]:
    """``vglaw visualize``: a ground truth vs prediction panel per sample (and with ``law``, a
    LAW on/off panel for each sample's image and its expression beside another one)."""
    from ..data.prepare import load_split
    from ..inference.pictures import law_panel, record_panel
    from ..inference.predictor import Grounder, as_rgb

    grounder = Grounder.from_pretrained(checkpoint_or_demo(checkpoint), device=device, mask_threshold=mask_threshold)
    meta, records = load_split(prepared, split)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in indexes:
        if not 0 <= index < len(records):
            raise InputError(f"index {index} is outside split {split!r} (0..{len(records) - 1})")
        record = records[index]
        image = as_rgb(Path(meta["image_root"]) / record["image"])
        panel, ious = record_panel(grounder, image, record)
        path = out_dir / f"{split}_{index:05d}.png"
        panel.save(path)
        entry = {"index": index, "text": record["sentence"], "png": str(path), **ious}
        if law:
            others = [r["sentence"] for r in records if r["image"] == record["image"]
                      and r["sentence"] != record["sentence"]]
            texts = [record["sentence"]] + others[:1]
            law_path = out_dir / f"{split}_{index:05d}_law.png"
            law_panel(grounder, image, texts).save(law_path)
            entry["law_png"] = str(law_path)
        written.append(entry)
    (out_dir / "visualize.json").write_text(json_text(written, indent=2) + "\n")
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help=DEMO_HELP)
    parser.add_argument("--data", required=True, help="prepared dataset folder")
    parser.add_argument("--split", default="val", help="the split the indexes refer to")
    parser.add_argument("--index", type=int, nargs="+", required=True, help="sample indexes in the split")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--law", action="store_true", help="also show LAW on/off feature maps for each image")
    add_runtime_options(parser, precision=False)
    add_answer_options(parser, min_score=False, min_exists=False)


def run(args: argparse.Namespace) -> None:
    input_checkpoint(args.checkpoint)
    input_folder("--data", args.data, "a prepared dataset folder")
    output_folder("--out", args.out)
    for entry in visualize(args.checkpoint, args.data, args.split, args.index, args.out, law=args.law,
                           device=args.device, mask_threshold=args.mask_threshold):
        ious = "  ".join(f"{k} {v:.3f}" for k, v in entry.items() if k.endswith("iou"))
        print(f"{entry['index']}: \"{entry['text']}\"  {ious}  -> {entry['png']}")
