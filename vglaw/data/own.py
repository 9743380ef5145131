"""Your own annotations: one record per expression in a JSONL, CSV or parquet file.

Fields of a record (the names ``vglaw predict --pairs --masks`` writes, so a results file can be
corrected and trained on as it is):

* ``image``: the image file, relative to ``--images``;
* ``text``: the referring expression;
* ``box_xyxy``: the target box, x0, y0, x1, y1 in pixels; or ``boxes``: a list of such boxes, one
  per object the expression names (several: a multi-target record);
* ``no_target``: true when the expression names nothing in the image (no box, an empty mask).
  Where ``boxes`` or ``no_target: true`` say the target set, ``box_xyxy`` is ignored (in a results
  file it is the box head's single box);
* ``mask_rle`` (a COCO RLE ``{"size": [h, w], "counts": ...}``) or ``polygon`` (COCO polygons, a
  list of flat ``[x0, y0, x1, y1, ...]`` lists): optional;
* ``split``: optional, default ``train``; ``id``: optional, default the row's index.

In CSV, ``box_xyxy``, ``boxes``, ``mask_rle`` and ``polygon`` are JSON text (``"[10, 20, 110, 90]"``);
``no_target`` is true/false (or 1/0); other fields are ignored. A multi-target record's mask (when
given) is the union of its objects' masks; a no-target record's is empty.

EXIF: phones store photos with an orientation tag, and tools disagree on whether boxes are drawn
on the displayed (rotated) image or on the stored pixels. vglaw trains on the displayed image.
Any image whose orientation tag is not 1 (rotations change its size; flips and 180 degrees keep
it but move every box) stops the reader until ``exif`` says which frame the file's boxes and
masks are in: ``displayed`` (kept as they are) or ``stored`` (turned into the displayed frame).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..fileio import read_table
from .masks import decode_rle, encode_rle, mask_to_rle, union_rle
from .readers import bad_record, target_set

EXIF_FRAMES = ("displayed", "stored")
TRUE, FALSE = (True, "true", "True", "TRUE", 1, "1"), (False, "false", "False", "FALSE", 0, "0")
ORIENTATION = 0x0112  # the EXIF tag
TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}  # what PIL's ImageOps.exif_transpose applies for each orientation


def image_frame(path: Path) -> tuple[tuple[int, int], int] | None:
    """(stored width, height) and EXIF orientation of an image, from its header; None when it
    cannot be read (``prepare`` reports it)."""
    try:
        with Image.open(path) as img:
            return img.size, int(img.getexif().get(ORIENTATION, 1) or 1)
    except (OSError, ValueError, SyntaxError):
        return None


def displayed_point(x: float, y: float, size: tuple[int, int], orientation: int) -> tuple[float, float]:
    """A point of the stored pixel frame (``size`` = stored width, height) in the displayed frame."""
    w, h = size
    return {1: (x, y), 2: (w - x, y), 3: (w - x, h - y), 4: (x, h - y), 5: (y, x), 6: (h - y, x),
            7: (h - y, w - x), 8: (y, w - x)}[orientation]


def displayed_box(box: list[float], size: tuple[int, int], orientation: int) -> list[float]:
    """An x0, y0, x1, y1 box of the stored frame, in the displayed frame."""
    (ax, ay), (bx, by) = (displayed_point(box[0], box[1], size, orientation),
                          displayed_point(box[2], box[3], size, orientation))
    return [min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)]


def _json_field(value):
    """A CSV cell holding JSON (a box, an RLE, polygons) as its value; other values as they are."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _box_problem(box, name: str = "box_xyxy") -> str | None:
    if box is None:
        return "no box_xyxy (nor boxes, nor no_target: true)"
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        return f"{name} must be four numbers x0, y0, x1, y1, got {json.dumps(box, default=repr)[:80]}"
    if not all(math.isfinite(v) for v in box):
        return f"{name} {list(box)} is not finite"
    if box[2] <= box[0] or box[3] <= box[1]:
        return f"{name} {list(box)} needs x1 > x0 and y1 > y0"
    return None


def _mask(row: dict, size: tuple[int, int], orientation: int, exif: str | None) -> dict | None:
    """The record's mask as an RLE in the displayed frame (None without one); ValueError/InputError
    when it does not fit the file's frame."""
    frame = size if exif == "stored" else (size[::-1] if orientation in (5, 6, 7, 8) else size)
    w, h = frame
    if row.get("mask_rle") is not None:
        seg = _json_field(row["mask_rle"])
        if not isinstance(seg, dict) or list(seg.get("size", [])) != [h, w]:
            got = seg.get("size") if isinstance(seg, dict) else type(seg).__name__
            raise ValueError(f"mask_rle size {got} is not the {exif or 'image'} frame's [{h}, {w}] (height, width)")
    elif row.get("polygon") is not None:
        seg = _json_field(row["polygon"])
    else:
        return None
    rle = encode_rle(seg, h, w)
    if exif == "stored" and orientation != 1:
        turned = Image.fromarray(decode_rle(rle)).transpose(TRANSPOSE[orientation])
        rle = mask_to_rle(np.asarray(turned))
    return rle


def _target_boxes(row: dict) -> tuple[list | None, str | None]:
    """(the record's boxes, x0 y0 x1 y1 each, or None for a single ``box_xyxy``; a problem)."""
    no_target = row.get("no_target", False)
    if no_target not in TRUE + FALSE:
        return None, f"no_target must be true or false, got {json.dumps(no_target, default=repr)[:80]}"
    boxes = _json_field(row.get("boxes"))
    if no_target in TRUE:
        if boxes:
            return None, "a no_target record names no box (it has boxes)"
        return [], None
    if boxes is None:
        return None, None
    if not isinstance(boxes, list) or not boxes:
        return None, (f"boxes must be a non-empty list of x0, y0, x1, y1 boxes (no_target: true for none), got "
                      f"{json.dumps(boxes, default=repr)[:80]}")
    for box in boxes:
        problem = _box_problem(box, "each of boxes")
        if problem:
            return None, problem
    return boxes, None


def read_own(path: str | os.PathLike, image_root: str | os.PathLike, exif: str | None = None,
             kind: str | None = None) -> list[dict]:
    """Records (as :mod:`.readers` makes them) of a JSONL, CSV or parquet file of your own
    annotations; ``image_root`` holds the images. Boxes and masks come out in the displayed frame.
    An image with an EXIF orientation other than 1 is an :class:`InputError` (naming the first and
    the count) unless ``exif`` is ``"displayed"`` or ``"stored"``."""
    path, image_root = Path(path), Path(image_root)
    if exif not in (None, *EXIF_FRAMES):
        raise InputError(f"--exif must be one of {EXIF_FRAMES}, got {exif!r}")
    rows = read_table(path, "annotations file", None if kind == "own" else kind)
    frames = {}
    for row in rows:
        name = row.get("image")
        if isinstance(name, str) and name and name not in frames:
            frames[name] = image_frame(image_root / name)
    turned = [name for name, f in frames.items() if f is not None and f[1] != 1]
    if turned and exif is None:
        raise InputError(f"{len(turned)} image(s) carry an EXIF orientation tag other than 1 (first: "
                         f"{image_root / turned[0]}, orientation {frames[turned[0]][1]}): say which frame {path}'s "
                         "boxes are in, --exif displayed (as viewers show the image) or --exif stored (the pixels "
                         "as stored)")
    records = []
    for i, row in enumerate(rows):
        row = {k: v for k, v in row.items() if k == "text" or v not in ("", None)}  # empty CSV cells, parquet nulls
        rid = row.get("id", i)
        base = {"split": str(row.get("split") or "train"), "image": row.get("image"), "ref_id": rid, "ann_id": None,
                "sent_id": i, "category_id": None, "image_id": None, "width": None, "height": None}
        problem, box = None, _json_field(row.get("box_xyxy"))
        text = row.get("text")
        boxes, problem = _target_boxes(row)
        if row.get("error"):
            problem = f"a results line without an answer ({row['error']})"
        elif problem is not None:
            pass
        elif not isinstance(base["image"], str) or not base["image"]:
            problem = f"image must be a path, got {json.dumps(base['image'], default=repr)[:80]}"
        elif text is None:
            problem = "no text"
        elif not isinstance(text, str):
            problem = f"text must be a string, got {json.dumps(text, default=repr)[:80]}"
        elif boxes is None:
            problem = _box_problem(box)
        boxes = [box] if boxes is None else boxes
        frame = frames.get(base["image"]) if isinstance(base["image"], str) else None
        if problem is None and frame is not None:
            size, orientation = frame
            shown = size[::-1] if orientation in (5, 6, 7, 8) else size
            w, h = size if exif == "stored" else shown
            outside = [b for b in boxes if b[0] < -1 or b[1] < -1 or b[2] > w + 1 or b[3] > h + 1]  # 1 px slack
            if outside:
                name = "box_xyxy" if "boxes" not in row else "a box of boxes"
                problem = f"{name} {list(outside[0])} lies outside the {w}x{h} {exif or 'image'} frame"
            else:
                if exif == "stored":
                    boxes = [displayed_box(b, size, orientation) for b in boxes]
                base["width"], base["height"] = shown
                try:
                    base["mask"] = _mask(row, size, orientation, exif)
                except (ValueError, InputError) as e:
                    problem = str(e)
        if problem:
            records.append(bad_record({**base, "sentence": text if isinstance(text, str) else None}, problem))
            continue
        xywh = [[float(x0), float(y0), float(x1) - float(x0), float(y1) - float(y0)] for x0, y0, x1, y1 in boxes]
        if len(xywh) == 1:  # one target: the plain record
            records.append({"mask": None, **base, "box": xywh[0], "sentence": text})
        elif xywh:
            records.append({"mask": None, **base, **target_set(xywh), "sentence": text})
        else:  # no target: the empty mask
            records.append({**base, **target_set([]), "mask": union_rle([], base["height"], base["width"]),
                            "sentence": text})
    return records
