"""``vglaw serve``: a web page and HTTP API for grounding (needs the demo extra)."""
from __future__ import annotations

import argparse

from .options import DEMO_HELP, add_answer_options, add_runtime_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help=DEMO_HELP)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    add_runtime_options(parser)
    add_answer_options(parser, mask_threshold=False)
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="also accept API calls and uploads from web pages on this origin (e.g. "
                             "https://app.example.com; repeatable); requests from other pages' origins are refused")


def run(args: argparse.Namespace) -> None:
    from ..inference.serve import serve  # it says so when it serves the bundled model

    serve(args.checkpoint, host=args.host, port=args.port, device=args.device, precision=args.precision,
          min_score=args.min_score, allow_origins=args.allow_origin, min_exists=args.min_exists)
