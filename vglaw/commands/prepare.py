"""``vglaw prepare``: check a dataset and write vglaw's prepared form."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..config import DATA_FORMATS, OWN_FORMATS
from ..errors import InputError
from .checks import input_file, input_folder, output_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=DATA_FORMATS, default="refer",
                        help="the annotation format of --data-root (jsonl, csv, parquet: your own file, one record "
                             "per expression: image, text, box_xyxy or boxes, optional mask_rle or polygon, "
                             "no_target, split, id; own: the same, the table's kind from the file's suffix)")
    parser.add_argument("--data-root", required=True,
                        help="refer: folder with <dataset>/refs(<splitBy>).p; grefcoco: folder with "
                             "<dataset>/grefs(<splitBy>).json (or .p) and instances.json; transvg: folder with "
                             "<dataset>/<dataset>_<split>.pth; seqtr: the instances.json file or the folder with "
                             "<dataset>/instances.json; hf-parquet: the Hub dataset folder (its .parquet files); "
                             "jsonl/csv/parquet/own: the annotation file")
    parser.add_argument("--dataset", default=None,
                        help="refcoco, refcoco+, refcocog, refclef, grefcoco, synthref, ... (your own file: default "
                             "its name)")
    parser.add_argument("--exif", choices=["displayed", "stored"], default=None,
                        help="own: the frame of the boxes and masks of images with an EXIF orientation tag other "
                             "than 1: displayed (as viewers show them) or stored (the pixels as stored); needed "
                             "when there are such images")
    parser.add_argument("--split-by", default="unc", help="REFER splitBy: unc, google, umd, berkeley")
    parser.add_argument("--images", default=None,
                        help="folder of the image files (not needed for parquet files that embed them)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--skip-bad", action="store_true", help="drop bad records (listed in dropped.json)")


def run(args: argparse.Namespace) -> None:
    if args.format == "seqtr" and not os.path.isdir(args.data_root):  # seqtr: the instances.json or its folder
        input_file("--data-root", args.data_root, "an instances.json file")
    elif args.format in OWN_FORMATS:
        input_file("--data-root", args.data_root, "a JSONL, CSV or parquet file of your annotations")
    else:
        input_folder("--data-root", args.data_root, f"a {args.format} dataset folder")
    input_folder("--images", args.images, "a folder of images")
    output_folder("--out", args.out)
    if args.exif is not None and args.format not in OWN_FORMATS:
        raise InputError(f"--exif is for your own annotations (--format jsonl, csv, parquet or own); {args.format} "
                         "files say nothing of EXIF frames")
    if args.dataset is None and args.format not in OWN_FORMATS:
        raise InputError(f"--dataset is required for the {args.format} format (refcoco, refcoco+, ...)")
    from ..data.prepare import prepare

    meta = prepare(fmt=args.format, data_root=args.data_root, dataset=args.dataset or Path(args.data_root).stem,
                   image_root=args.images, out=args.out, split_by=args.split_by, skip_bad=args.skip_bad,
                   exif=args.exif)
    print(f"wrote {args.out}: " + ", ".join(f"{split} {n}" for split, n in meta["splits"].items()))
    for split, counts in meta.get("targets", {}).items():
        print(f"  {split}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    for split, check in meta.get("split_check", {}).items():
        print(f"  {split}: {check['refs']} refs (REFER: {check['refer_refs'] or 'unknown'})"
              + (f"; {check['note']}" if "note" in check else ""))
