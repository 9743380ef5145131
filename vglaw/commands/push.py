"""``vglaw push``: upload a checkpoint directory to a Hugging Face Hub model repo."""
from __future__ import annotations

import argparse

from ..hub import push


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a vglaw checkpoint directory (config, weights, README.md)")
    parser.add_argument("--repo-id", required=True, help="USER/NAME (created when missing; needs `hf auth login`)")
    parser.add_argument("--private", action="store_true", help="create the repo private")


def run(args: argparse.Namespace) -> None:
    print(f"uploaded {args.checkpoint} to {push(args.checkpoint, args.repo_id, private=args.private)}")
