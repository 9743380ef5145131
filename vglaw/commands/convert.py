"""``vglaw convert``: another implementation's checkpoint (the authors' MindSpore .ckpt) in vglaw's format."""
from __future__ import annotations

import argparse

from .checks import input_file, output_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", choices=["mindspore"], required=True,
                        help="format of CHECKPOINT (the authors' MindSpore .ckpt)")
    parser.add_argument("checkpoint", help="the checkpoint file")
    parser.add_argument("--out", required=True, help="output vglaw checkpoint directory")


def run(args: argparse.Namespace) -> None:
    input_file("CHECKPOINT", args.checkpoint, "a MindSpore .ckpt file")
    output_folder("--out", args.out)
    from ..weights.mindspore import convert_mindspore_checkpoint

    report = convert_mindspore_checkpoint(args.checkpoint, args.out)
    print(report)
    print(f"wrote {args.out}/config.json and {args.out}/model.safetensors")
