"""Fitting a checkpoint's confidence calibrator on a labelled split (``vglaw calibrate``, and the
end of ``vglaw train``)."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..errors import InputError
from ..model.confidence import KNOWN_FEATURES, Calibrator
from .metrics import confidence_metrics


def fit_calibrator(features: dict[str, torch.Tensor], box_iou: torch.Tensor, *, names=None,
                   fitted_on: dict | None = None) -> Calibrator:
    """A logistic regression (scikit-learn's, L2 with C = 1, on standardised features) from the
    features ``names`` (default: every one given, the existence output's included) to whether
    the box is right (``box_iou >= 0.5``); each feature's range on
    the fitting data (which the calibrator clips to) and its metrics there are kept with it. The
    expressions naming one object are fitted on, and those naming nothing (``box_iou`` 0: no box
    is right for them), which teach the score to fall where the existence output says "absent";
    multi-target ones (``box_iou`` NaN) are left out."""
    from sklearn.linear_model import LogisticRegression

    names = tuple(name for name in KNOWN_FEATURES if name in features) if names is None else tuple(names)
    scored = ~torch.as_tensor(box_iou).isnan()
    features, box_iou = {name: value[scored] for name, value in features.items()}, box_iou[scored]
    x = np.stack([features[name].double().numpy() for name in names], 1)  # (N, F)
    y = (box_iou >= 0.5).numpy()
    if y.all() or not y.any():
        raise InputError(f"a calibrator needs right and wrong answers to learn from; all {len(y)} boxes of the "
                         f"fitting split are {'right' if y.all() else 'wrong'} (fit it on another split)")
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-12] = 1.0  # a constant feature gets a zero weight, not a division by zero
    fit = LogisticRegression(C=1.0, max_iter=1000).fit((x - mean) / scale, y)
    calibrator = Calibrator(tuple(names), tuple(mean.tolist()), tuple(scale.tolist()), tuple(fit.coef_[0].tolist()),
                            float(fit.intercept_[0]), dict(fitted_on or {}, samples=len(y)),
                            low=tuple(x.min(0).tolist()), high=tuple(x.max(0).tolist()))
    return dataclasses.replace(calibrator, metrics=confidence_metrics(calibrator(features).numpy(), y))
