"""Masks: the COCO RLE codec (every segmentation form COCO-style files hold) and mask IoU."""
from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils

from ..errors import InputError


def _is_polygons(segmentation) -> bool:
    return bool(segmentation) and all(isinstance(poly, list) and all(isinstance(v, (int, float)) for v in poly)
                                      for poly in segmentation)


def _is_rle(segmentation) -> bool:
    return isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation


def encode_rle(segmentation, height: int, width: int) -> dict:
    """A COCO segmentation in any of its forms -> one compressed RLE with str counts.

    Forms: polygons (a list of flat [x0, y0, x1, y1, ...] lists), one RLE dict (compressed,
    counts a str or bytes, or uncompressed, counts a list of ints), or a list of RLE dicts
    (ReferItGame's ``instances.json``), merged into their union as the REFER API does when it
    sums the decoded masks. Anything else raises a ValueError.
    """
    if _is_polygons(segmentation):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif _is_rle(segmentation):
        rle = _compressed(segmentation, height, width)
    elif isinstance(segmentation, list) and segmentation and all(_is_rle(part) for part in segmentation):
        rle = mask_utils.merge([_compressed(part, height, width) for part in segmentation])
    else:
        kind = type(segmentation).__name__
        inner = f" of {type(segmentation[0]).__name__}" if isinstance(segmentation, list) and segmentation else ""
        raise InputError(f"unsupported segmentation (a {kind}{inner}): expected polygons, an RLE dict or a list "
                         "of RLE dicts")
    return _with_str_counts(rle)


def union_rle(rles: list[dict], height: int, width: int) -> dict:
    """The union of RLE masks of one image; an empty list gives the all-zero mask (a no-target
    sample's target)."""
    if not rles:
        return mask_to_rle(np.zeros((height, width), np.uint8))
    return rles[0] if len(rles) == 1 else _with_str_counts(
        mask_utils.merge([_compressed(r, height, width) for r in rles]))


def mask_to_rle(mask: np.ndarray) -> dict:
    """(H, W) bool or {0, 1} mask -> compressed COCO RLE with str counts (JSON-able)."""
    return _with_str_counts(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def _with_str_counts(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": [int(s) for s in rle["size"]], "counts": counts.decode() if isinstance(counts, bytes) else counts}


def _compressed(rle: dict, height: int, width: int) -> dict:
    """One RLE dict with compressed (bytes) counts."""
    if isinstance(rle["counts"], list):
        return mask_utils.frPyObjects(rle, height, width)
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE -> (H, W) uint8 mask."""
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()
                              if isinstance(rle["counts"], str) else rle["counts"]})


MIN_COMPONENT = 0.1  # a mask's part smaller than this share of its largest part is a speck, not an object


def component_boxes(mask: np.ndarray) -> list[tuple[float, float, float, float]]:
    """One x0, y0, x1, y1 box (pixel edges) per connected part of an (H, W) mask (8-connected),
    largest first; parts under 10 % of the largest one's area are left out (specks of a
    thresholded map). An empty mask has none."""
    from scipy import ndimage

    labels, n = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    areas = np.bincount(labels.ravel())[1:]
    keep = [k for k in np.argsort(-areas, kind="stable") if areas[k] >= MIN_COMPONENT * areas.max()]
    slices = ndimage.find_objects(labels)
    return [(float(slices[k][1].start), float(slices[k][0].start), float(slices[k][1].stop), float(slices[k][0].stop))
            for k in keep]


def answer_boxes(mask: np.ndarray | None, box) -> list[tuple[float, float, float, float]]:
    """The boxes of an answer that names something: one per part of its mask
    (:func:`component_boxes`) when the mask has several parts, else ``[box]`` (the box head's)."""
    parts = [] if mask is None else component_boxes(mask)
    return parts if len(parts) > 1 else [tuple(float(v) for v in box)]


def mask_intersection_union(pred: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> tuple[int, int]:
    """Pixel counts of the intersection and union of two (H, W) masks (bool or {0, 1})."""
    p, g = torch.as_tensor(pred).bool(), torch.as_tensor(gt).bool()
    return int((p & g).sum()), int((p | g).sum())


def iou_of_counts(inter: int, union: int) -> float:
    """Intersection over union of pixel counts; 1 when both masks are empty."""
    return inter / union if union else 1.0


def mask_iou(pred: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> float:
    """IoU of two (H, W) masks; 1 when both are empty."""
    return iou_of_counts(*mask_intersection_union(pred, gt))
