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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vglaw", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("convert", help="convert another implementation's checkpoint to vglaw's format")
    p.add_argument("--from", dest="source", choices=["mindspore"], required=True,
                   help="format of CHECKPOINT (the authors' MindSpore .ckpt)")
    p.add_argument("checkpoint", help="the checkpoint file")
    p.add_argument("--out", required=True, help="output vglaw checkpoint directory")
    p.set_defaults(run=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
        print(f"vglaw {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
