"""``vglaw calibrate``: fit a checkpoint's confidence calibrator on a labelled split and save it
to a file of its own, or, asked explicitly, in place of the checkpoint's."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .. import distributed as dist
from ..engine.calibrate import fit_calibrator
from ..errors import InputError
from ..hub import resolve_checkpoint
from ..model import VGLAW
from ..model.confidence import Calibrator, calibration_path
from .eval import split_samples

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
