"""``vglaw synth``: a synthetic referring dataset in the REFER layout (or gRefCOCO's)."""
from __future__ import annotations

import argparse

from .checks import output_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (gets <name>/ and images/)")
    parser.add_argument("--name", default="synthref", help="dataset name")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the images and expressions")
    for split, n in (("train", 800), ("val", 100), ("testA", 100), ("testB", 100)):
        parser.add_argument(f"--{split}", type=int, default=n, help=f"images in {split}")
    parser.add_argument("--min-size", type=int, default=176, help="smallest image side in pixels")
    parser.add_argument("--max-size", type=int, default=224, help="largest image side in pixels")
    parser.add_argument("--no-target", type=float, default=0.0,
                        help="share of the refs naming nothing in the image (with --multi-target: gRefCOCO's "
                             "layout, <out>/grefcoco/grefs(unc).json + instances.json)")
    parser.add_argument("--multi-target", type=float, default=0.0,
                        help="share of the refs naming every shape that fits a description (\"all the red shapes\")")
    parser.add_argument("--empty-images", type=float, default=0.0,
                        help="share of the images with no shape at all, every expression on them naming nothing "
                             "(with --no-target or --multi-target)")


def run(args: argparse.Namespace) -> None:
    output_folder("--out", args.out)
    from ..data.synth import generate

    sizes = {"train": args.train, "val": args.val, "testA": args.testA, "testB": args.testB}
    folder = generate(args.out, name=args.name, seed=args.seed, split_sizes=sizes, min_size=args.min_size,
                      max_size=args.max_size, no_target=args.no_target, multi_target=args.multi_target,
                      empty_images=args.empty_images)
    refs = "grefs(unc).json" if args.no_target or args.multi_target else "refs(unc).p"
    print(f"wrote {folder}/{refs}, {folder}/instances.json and images in {args.out}/images")
