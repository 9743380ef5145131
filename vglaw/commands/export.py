"""``vglaw export``: the whole model as one ONNX graph, checked against PyTorch."""
from __future__ import annotations

import argparse

from ..hub import checkpoint_or_demo
from .checks import input_checkpoint, output_file
from .options import DEMO_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help=DEMO_HELP)
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the parity check (by default onnxruntime is checked against PyTorch on one random "
                             "input)")


def run(args: argparse.Namespace) -> None:
    input_checkpoint(args.checkpoint)
    output_file("--out", args.out, "an .onnx file")
    checkpoint = checkpoint_or_demo(args.checkpoint)
    from ..inference.export import check_onnx, export_onnx

    out = export_onnx(checkpoint, args.out, opset=args.opset)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    if args.check:
        print(check_onnx(checkpoint, out))
