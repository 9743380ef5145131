"""``vglaw calibrate``: fit a checkpoint's confidence calibrator on a labelled split and save it
beside the weights."""
from __future__ import annotations

import logging
import os

from .. import distributed as dist
from ..engine.calibrate import fit_calibrator
from ..hub import resolve_checkpoint
from ..model import VGLAW
from ..model.confidence import Calibrator, calibration_path
from .eval import split_samples

log = logging.getLogger(__name__)


def calibrate(checkpoint: str | os.PathLike, prepared: str | os.PathLike, split: str = "val", *,
              batch_size: int = 16, num_workers: int = 2, device: str = "auto", precision: str = "fp32",
              describe: dict | None = None) -> tuple[Calibrator, str]:
    """Fit the calibrator of ``checkpoint`` on ``split`` of the prepared data and write it beside
    the checkpoint; returns it and where it went. ``describe`` replaces the recorded checkpoint
    and data names. Under torchrun each sample is scored once and rank 0 writes."""
    device = dist.init(device)
    path = resolve_checkpoint(checkpoint)
    model = VGLAW.from_pretrained(path, device=device).eval()
    _, samples = split_samples(model, prepared, split, device=device, batch_size=batch_size,
                               num_workers=num_workers, precision=precision)
    calibrator = fit_calibrator(samples["features"], samples["box_iou"],
                                fitted_on={"checkpoint": str(checkpoint), "data": str(prepared), "split": split,
                                           **(describe or {})})
    out = calibration_path(path)
    if dist.is_main():
        if out.is_file():
            log.warning("replacing the calibrator in %s (it was fitted on %s)", out,
                        Calibrator.load(out).fitted_on_words())
        calibrator.save(out)
    return calibrator, str(out)
