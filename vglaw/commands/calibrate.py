"""``vglaw calibrate``: fit a checkpoint's confidence calibrator on a labelled split and save it
to a file of its own, or, asked explicitly, in place of the checkpoint's."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..hub import resolve_checkpoint
from .checks import input_checkpoint, input_folder, output_file
from .eval import check_default_output, checkpoint_label, split_samples
from .options import add_runtime_options

if TYPE_CHECKING:
    from ..model.confidence import Calibrator

log = logging.getLogger(__name__)


def calibrate(checkpoint: str | os.PathLike, prepared: str | os.PathLike, split: str = "val", *,
              out: str | os.PathLike | None = None, batch_size: int = 16, num_workers: int = 2, device: str = "auto",
              precision: str = "fp32", describe: dict | None = None) -> tuple[Calibrator, str]:
    """Fit the calibrator of ``checkpoint`` on ``split`` of the prepared data and write it to
    ``out``; with ``out`` None, in place of the checkpoint's own (``calibration.json`` beside its
    weights, what predict, serve and eval read; an ``out`` naming that file is refused, so that
    replacing it is always asked for this way). Returns it and where it went. ``describe``
    replaces the recorded checkpoint and data names. Under torchrun each sample is scored once
    and rank 0 writes."""
    from .. import distributed as dist
    from ..engine.calibrate import fit_calibrator
    from ..model import VGLAW
    from ..model.confidence import Calibrator, calibration_path

    path = resolve_checkpoint(checkpoint)
    if out is not None and Path(out).resolve() == calibration_path(path).resolve():
        raise InputError(f"--out {out} is the checkpoint's own calibrator: to replace it, give --replace instead "
                         "(nothing was changed)")
    out = calibration_path(path) if out is None else Path(out)
    # a file there must be a calibrator (it is replaced): said before any work, nothing changed
    try:
        previous = Calibrator.load(out) if out.exists() else None
    except (InputError, OSError) as e:
        raise InputError(f"{e}; not replacing it with a calibrator (nothing was changed)") from None
    device = dist.init(device)
    model = VGLAW.from_pretrained(path, device=device).eval()
    _, samples = split_samples(model, prepared, split, device=device, batch_size=batch_size,
                               num_workers=num_workers, precision=precision)
    calibrator = fit_calibrator(samples["features"], samples["box_iou"],
                                fitted_on={"checkpoint": str(checkpoint), "data": str(prepared), "split": split,
                                           **(describe or {})})
    if dist.is_main():
        if previous is not None:
            log.warning("replacing the calibrator in %s (it was fitted on %s)", out, previous.fitted_on_words())
        calibrator.save(out)
    return calibrator, str(out)


# ----------------------------------------------------------------------------- the command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a vglaw checkpoint directory or training .pt")
    parser.add_argument("--data", required=True, help="prepared dataset folder")
    parser.add_argument("--split", default="val", help="the labelled split to fit on (not one you report results on)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", default=None,
                       help="the calibrator file to write (default: calibration_<checkpoint folder>_<name>.json in the "
                            "current folder); use it with vglaw eval --calibration FILE")
    where.add_argument("--replace", action="store_true",
                       help="write it in place of the checkpoint's own calibrator (calibration.json beside its "
                            "weights, what predict, serve and eval read)")
    add_runtime_options(parser, batch_size=16, num_workers=2)


def run(args: argparse.Namespace) -> None:
    input_checkpoint(args.checkpoint)
    input_folder("--data", args.data, "a prepared dataset folder")
    output_file("--out", args.out, "a calibrator file")
    out = None if args.replace else Path(args.out or f"calibration_{checkpoint_label(args.checkpoint)}.json")
    if out is not None and args.out is None:
        check_default_output(out, args.checkpoint, lambda d: d["fitted_on"]["checkpoint"], "--out")
    from .. import distributed

    with distributed.group():
        calibrator, path = calibrate(args.checkpoint, args.data, args.split, out=out, batch_size=args.batch_size,
                                     num_workers=args.num_workers, device=args.device, precision=args.precision)
        if distributed.is_main():
            m = calibrator.metrics
            print(f"fitted on {calibrator.fitted_on['samples']} expressions of {args.data} ({args.split}): score "
                  f"AUROC {m['auroc']:.4f}, ECE {m['ece']:.4f}; box P@0.5 {m['prec@0.5@100%']:.4f} on every answer, "
                  f"{m['prec@0.5@80%']:.4f} on the 80% most confident (measured on the fitting split itself: "
                  "vglaw eval on another split tells how it holds)")
            print(f"wrote {path}")
            if out is not None:
                print(f"the checkpoint's own calibrator is unchanged: measure this one with vglaw eval --calibration "
                      f"{path} on another split; to use it, rerun with --replace or copy it to calibration.json "
                      "beside the checkpoint's weights")
