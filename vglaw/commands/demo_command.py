"""``vglaw demo``'s arguments and run. The demo itself is :mod:`vglaw.commands.demo`, which
imports torch when it loads: it is imported only once the paths are checked."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..fileio import check_output_folder
from ..hub import DEMO_MARKER
from .checks import input_checkpoint, output_folder
from .options import at_least


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="vglaw-demo",
                        help="output folder: new or empty, or a previous demo's (only its own files are replaced)")
    parser.add_argument("--checkpoint", default=None, help="another checkpoint to demo")
    parser.add_argument("--images", type=at_least(1), default=100, help="images in the fresh set")
    parser.add_argument("--seed", type=int, default=20261127, help="seed of the fresh set (the model was trained on 0)")
    parser.add_argument("--train", action="store_true",
                        help="retrain the bundled checkpoint instead (from a repo checkout)")
    parser.add_argument("--calibrate", action="store_true",
                        help="refit the bundled checkpoint's confidence calibrator instead (seed 11, 300 images)")
    parser.add_argument("--work", default="data/demo-train", help="with --train or --calibrate: where data and run go")
    parser.add_argument("overrides", nargs="*", help="with --train: config overrides key=value")


def run(args: argparse.Namespace) -> None:
    input_checkpoint(args.checkpoint)
    if args.train or args.calibrate:
        output_folder("--work", args.work)
    else:
        check_output_folder(Path(args.out), DEMO_MARKER, "vglaw demo")  # at once, before the heavy imports
    from .demo import calibrate_demo_checkpoint, run_demo, train_demo_checkpoint

    if args.train:
        print(f"wrote {train_demo_checkpoint(args.work, overrides=args.overrides)}")
    elif args.calibrate:
        calibrate_demo_checkpoint(Path(args.work) / "calibration")
    else:
        run_demo(args.out, checkpoint=args.checkpoint, images=args.images, seed=args.seed)
