"""Predictions as JSON: what ``vglaw predict`` writes and the web API returns."""
from __future__ import annotations

from PIL import Image

from ..data.masks import mask_to_rle


def predictions_json(image: str, rgb: Image.Image, predictions) -> dict:
    """``image`` (its name), its size, and per expression the box (x0, y0, x1, y1 original
    pixels), the mask as COCO RLE and its area, the score (the calibrated probability that the
    box is right; null without a calibrator) and ``found`` (false where the score is below the
    minimum asked for)."""
    return {"image": image, "width": rgb.width, "height": rgb.height,
            "predictions": [{"text": p.text, "box_xyxy": list(p.box), "mask_rle": mask_to_rle(p.mask),
                             "mask_area": int(p.mask.sum()), "score": p.score, "found": p.found}
                            for p in predictions]}
