"""Predictions as JSON: what ``vglaw predict`` writes and the web API returns."""
from __future__ import annotations

from PIL import Image

from ..data.masks import mask_to_rle


def prediction_json(p) -> dict:
    """One answer: the expression, the box (x0, y0, x1, y1 original pixels), the mask as COCO RLE
    and its area (when the answer has a mask), the score (the calibrated probability that the box
    is right; null without a calibrator) and ``found`` (false where the score is below the minimum
    asked for)."""
    masks = {} if p.mask is None else {"mask_rle": mask_to_rle(p.mask), "mask_area": int(p.mask.sum())}
    return {"text": p.text, "box_xyxy": list(p.box), **masks, "score": p.score, "found": p.found}


def predictions_json(image: str, rgb: Image.Image, predictions) -> dict:
    """``image`` (its name), its size, and each expression's :func:`prediction_json`."""
    return {"image": image, "width": rgb.width, "height": rgb.height,
            "predictions": [prediction_json(p) for p in predictions]}
