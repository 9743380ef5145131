"""``vglaw leakage``: how many images of each split a COCO annotation file contains."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..fileio import json_text
from .checks import input_file, input_folder, output_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", required=True,
                        help="prepared dataset folders and/or REFER dataset folders (<root>/refcoco, ...)")
    parser.add_argument("--coco", required=True, help="a COCO annotation file, e.g. instances_train2017.json")
    parser.add_argument("--write-clean", default=None, metavar="OUT.json",
                        help="write the COCO file without the images of any val/test split (for pretraining)")
    parser.add_argument("--json", default=None, help="also write the report as JSON")


def run(args: argparse.Namespace) -> None:
    for folder in args.data:
        input_folder("--data", folder, "a dataset folder")
    input_file("--coco", args.coco, "a COCO annotation file")
    output_file("--write-clean", args.write_clean, "a COCO annotation file")
    output_file("--json", args.json, "a JSON file")
    from ..data.leakage import format_leakage, leakage

    result = leakage(args.data, args.coco, write_clean_to=args.write_clean)
    print(format_leakage(result))
    if args.json:
        Path(args.json).write_text(json_text(result, indent=2) + "\n")
        print(f"wrote {args.json}")
