"""Predictions as JSON: what ``vglaw predict`` writes and the web API returns."""
from __future__ import annotations

from PIL import Image
from pycocotools import mask as mask_utils


def prediction_json(p) -> dict:
    """One answer: the expression, the box (x0, y0, x1, y1 original pixels), the mask as COCO RLE
    and its area (when the answer has a mask), the score (the calibrated probability that the box
    is right; null without a calibrator) and ``found`` (false where the score is below the minimum
    asked for)."""
    rle = p.mask_rle  # the mask as the prediction keeps it: no full-size array is made here
    masks = {} if rle is None else {"mask_rle": rle, "mask_area": int(mask_utils.area(rle))}
    return {"text": p.text, "box_xyxy": list(p.box), **masks, "score": p.score, "found": p.found}


def predictions_json(image: str, rgb: Image.Image, predictions) -> dict:
    """``image`` (its name), its size, and each expression's :func:`prediction_json`."""
    return {"image": image, "width": rgb.width, "height": rgb.height,
            "predictions": [prediction_json(p) for p in predictions]}
