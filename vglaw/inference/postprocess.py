"""Predictions as JSON: what ``vglaw predict`` writes and the web API returns."""
from __future__ import annotations

from PIL import Image
from pycocotools import mask as mask_utils


def prediction_json(p) -> dict:
    """One answer: the expression, the box head's box (``box_xyxy``, x0, y0, x1, y1 original
    pixels), the mask as COCO RLE and its area (when the answer has a mask), the score (the
    calibrated probability that the box is right; null without a calibrator), ``found`` (false
    where the expression names nothing here or the score is below the minimum asked for); and for
    a model with the existence output ``exists`` (the probability that the expression names
    something in the image), ``no_target`` (exists below the minimum) and ``boxes`` (one box per
    part of the mask when it has several, else the box head's; [] when not found). ``boxes`` and
    ``no_target`` are the fields your own annotations use: a results file can be corrected and
    trained on."""
    rle = p.mask_rle  # the mask as the prediction keeps it: no full-size array is made here
    masks = {} if rle is None else {"mask_rle": rle, "mask_area": int(mask_utils.area(rle))}
    line = {"text": p.text, "box_xyxy": list(p.box), **masks, "score": p.score, "found": p.found}
    if p.exists is not None:
        line.update(exists=p.exists, no_target=p.no_target, boxes=[list(b) for b in p.boxes])
    return line


def predictions_json(image: str, rgb: Image.Image, predictions) -> dict:
    """``image`` (its name), its size, and each expression's :func:`prediction_json`."""
    return {"image": image, "width": rgb.width, "height": rgb.height,
            "predictions": [prediction_json(p) for p in predictions]}
