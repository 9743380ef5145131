"""``vglaw train``: train a model from a YAML config (also under ``torchrun --nproc_per_node N``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import Interrupted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (a diff over the defaults, see configs/)")
    parser.add_argument("--resume", action="store_true", help="continue the run in run.out from checkpoints/last.pt")
    parser.add_argument("overrides", nargs="*",
                        help="config overrides key=value, e.g. optim.lr=2e-4 run.epochs=5 run.device=cuda")


def run(args: argparse.Namespace) -> None:
    from ..config import load_config

    cfg = load_config(args.config, args.overrides)  # a bad value is one line before torch is imported
    from .. import distributed
    from ..engine.train import checkpoint_paths, train

    with distributed.group():  # train joins it once its config is checked
        try:
            train(cfg, resume=args.resume)
        except KeyboardInterrupt:
            last, _ = checkpoint_paths(Path(cfg.run.out))
            kept = f"{last} holds the last saved step" if last.is_file() else "no checkpoint was saved yet"
            raise Interrupted(f"{kept}; continue with the same command and --resume") from None
