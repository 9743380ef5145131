"""The ``vglaw`` command line: ``vglaw <command> --help`` for each command."""
from __future__ import annotations

import argparse
import logging
import sys


def _convert(args: argparse.Namespace) -> None:
    from .convert.mindspore import convert_mindspore_checkpoint

    report = convert_mindspore_checkpoint(args.checkpoint, args.out)
    print(report)
    print(f"wrote {args.out}/config.json and {args.out}/model.safetensors")


def _synth(args: argparse.Namespace) -> None:
    from .data.synth import generate

    sizes = {"train": args.train, "val": args.val, "testA": args.testA, "testB": args.testB}
    folder = generate(args.out, name=args.name, seed=args.seed, split_sizes=sizes, min_size=args.min_size,
                      max_size=args.max_size)
    print(f"wrote {folder}/refs(unc).p, {folder}/instances.json and images in {args.out}/images")


def _prepare(args: argparse.Namespace) -> None:
    from .data.prepare import prepare

    meta = prepare(fmt=args.format, data_root=args.data_root, dataset=args.dataset, image_root=args.images,
                   out=args.out, split_by=args.split_by, skip_bad=args.skip_bad)
    print(f"wrote {args.out}: " + ", ".join(f"{split} {n}" for split, n in meta["splits"].items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vglaw", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("convert", help="convert another implementation's checkpoint to vglaw's format")
    p.add_argument("--from", dest="source", choices=["mindspore"], required=True,
                   help="format of CHECKPOINT (the authors' MindSpore .ckpt)")
    p.add_argument("checkpoint", help="the checkpoint file")
    p.add_argument("--out", required=True, help="output vglaw checkpoint directory")
    p.set_defaults(run=_convert)

    p = commands.add_parser("synth", help="generate a synthetic referring dataset in the REFER layout")
    p.add_argument("--out", required=True, help="output folder (gets <name>/ and images/)")
    p.add_argument("--name", default="synthref", help="dataset name (default synthref)")
    p.add_argument("--seed", type=int, default=0)
    for split, n in (("train", 800), ("val", 100), ("testA", 100), ("testB", 100)):
        p.add_argument(f"--{split}", type=int, default=n, help=f"images in {split} (default {n})")
    p.add_argument("--min-size", type=int, default=160, help="smallest image side in pixels")
    p.add_argument("--max-size", type=int, default=256, help="largest image side in pixels")
    p.set_defaults(run=_synth)

    p = commands.add_parser("prepare", help="check a dataset and write vglaw's prepared form")
    p.add_argument("--format", choices=["refer", "transvg", "seqtr"], default="refer")
    p.add_argument("--data-root", required=True,
                   help="refer: folder with <dataset>/refs(<splitBy>).p; transvg: folder with "
                        "<dataset>/<dataset>_<split>.pth; seqtr: the instances.json file")
    p.add_argument("--dataset", required=True, help="refcoco, refcoco+, refcocog, refclef, synthref, ...")
    p.add_argument("--split-by", default="unc", help="REFER splitBy: unc, google, umd, berkeley")
    p.add_argument("--images", required=True, help="folder of the image files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--skip-bad", action="store_true", help="drop bad records (listed in dropped.json)")
    p.set_defaults(run=_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FileNotFoundError, ValueError, KeyError, TypeError, OSError, ImportError) as e:
        print(f"vglaw {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
