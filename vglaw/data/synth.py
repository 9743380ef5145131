"""A synthetic referring-expression dataset written in the REFER layout (lichengunc/refer).

Each image holds three to five shapes (circle, square, triangle) in four colours and two
sizes on a varied background; every shape is an exact polygon. Expressions name a target
uniquely and need the language to do so: distractors share its shape or colour, and the
expressions combine attributes and spatial relations ("the small red circle", "the square
left of the blue triangle", "the rightmost green shape").

Layout written under ``out``::

    out/<name>/refs(unc).p        pickle (protocol 2, plain containers) of the refs
    out/<name>/instances.json     COCO-style images, annotations (polygons), categories
    out/images/COCO_train2014_<image id, 12 digits>.jpg

With ``no_target`` or ``multi_target`` above 0 it writes gRefCOCO's layout instead
(``out/grefcoco/grefs(unc).json`` + ``instances.json``, as the download ships them): a share of
the refs names nothing in the image (an attribute combination no shape has: "the small blue
triangle", ``ann_id: [-1]``, ``no_target: true``), another share every shape matching a
description ("all the red shapes", "both circles": ``ann_id`` lists them); the rest name one
shape as above (``ann_id`` a one-item list). ``empty_images`` adds scenes with no shape at all.
"""
from __future__ import annotations

import itertools
import json
import math
import pickle
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InputError
from ..progress import progress as progress_bar

COLOURS = {"red": (215, 45, 40), "green": (45, 170, 65), "blue": (45, 85, 215), "yellow": (230, 205, 40)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.12, "large": 0.18}  # radius as a fraction of min(W, H)
CATEGORIES = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]


@dataclass
class Shape:
    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    r: float

    def polygon(self) -> list[float]:
        """Vertices as a flat COCO polygon [x0, y0, x1, y1, ...]."""
        if self.shape == "circle":
            angles = [2 * math.pi * k / 24 for k in range(24)]
            pts = [(self.cx + self.r * math.cos(a), self.cy + self.r * math.sin(a)) for a in angles]
        elif self.shape == "square":
            h = self.r * 0.85
            pts = [(self.cx - h, self.cy - h), (self.cx + h, self.cy - h), (self.cx + h, self.cy + h),
                   (self.cx - h, self.cy + h)]
        else:  # triangle pointing up
            pts = [(self.cx, self.cy - self.r), (self.cx + self.r * 0.95, self.cy + self.r * 0.75),
                   (self.cx - self.r * 0.95, self.cy + self.r * 0.75)]
        return [round(v, 2) for p in pts for v in p]


def _background(rng: random.Random, w: int, h: int) -> Image.Image:
    """A smooth two-colour gradient with mild noise and a few faint stripes."""
    a = np.array([rng.randint(60, 200) for _ in range(3)], np.float32)
    b = np.array([rng.randint(60, 200) for _ in range(3)], np.float32)
    angle = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * math.cos(angle) + yy * math.sin(angle))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 6, img.shape)
    period = rng.uniform(12, 40)
    img += 8 * np.sin(xx / period + rng.uniform(0, 6))[..., None] + noise
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _place_shapes(rng: random.Random, w: int, h: int) -> list[Shape]:
    """3-5 non-overlapping shapes drawn mostly from two colours and two shapes, so that
    distractors share the target's attributes."""
    colours = rng.sample(list(COLOURS), 2) + [rng.choice(list(COLOURS))]
    shapes = rng.sample(SHAPES, 2) + [rng.choice(SHAPES)]
    placed: list[Shape] = []
    n = rng.randint(3, 5)
    for _ in range(200):
        if len(placed) == n:
            break
        size = rng.choice(list(SIZES))
        r = SIZES[size] * min(w, h) * rng.uniform(0.9, 1.1)
        cx, cy = rng.uniform(r + 2, w - r - 2), rng.uniform(r + 2, h - r - 2)
        if all(math.hypot(cx - o.cx, cy - o.cy) > r + o.r + 6 for o in placed):
            placed.append(Shape(rng.choice(shapes), rng.choice(colours), size, cx, cy, r))
    return placed


def _phrase(attrs: dict) -> str:
    words = [attrs[k] for k in ("size", "colour") if k in attrs]
    return " ".join(words + [attrs.get("shape", "shape")])


def _matches(o: Shape, attrs: dict) -> bool:
    return all(getattr(o, k) == v for k, v in attrs.items())


def _descriptors(o: Shape):
    """All attribute subsets of a shape, as dicts (the empty one means "shape")."""
    keys = ("size", "colour", "shape")
    for k in range(0, 4):
        for subset in itertools.combinations(keys, k):
            yield {key: getattr(o, key) for key in subset}


def expressions(target: Shape, shapes: list[Shape], w: int, h: int) -> list[str]:
    """Every expression of the templates that identifies ``target`` uniquely among ``shapes``."""
    others = [o for o in shapes if o is not target]
    out = []
    unique = [d for d in _descriptors(target) if d and not any(_matches(o, d) for o in others)]
    for d in unique:
        if len(d) >= 2 or any(o.shape == target.shape or o.colour == target.colour for o in others):
            out.append(f"the {_phrase(d)}")
    # extremes: the target is the leftmost / ... of the shapes matching a descriptor, clearly
    extremes = (("leftmost", lambda o: o.cx, w), ("rightmost", lambda o: -o.cx, w),
                ("topmost", lambda o: o.cy, h), ("bottommost", lambda o: -o.cy, h))
    for d in _descriptors(target):
        group = [o for o in shapes if _matches(o, d)]
        if len(group) < 2:
            continue
        for word, key, extent in extremes:
            ranked = sorted(group, key=key)
            if ranked[0] is target and key(ranked[1]) - key(target) > 0.08 * extent:
                out.append(f"the {word} {_phrase(d)}")
    # relations to an anchor that has a unique description
    relations = (("left of", lambda t, a: t.cx < a.cx - a.r), ("right of", lambda t, a: t.cx > a.cx + a.r),
                 ("above", lambda t, a: t.cy < a.cy - a.r), ("below", lambda t, a: t.cy > a.cy + a.r))
    for anchor in others:
        anchor_desc = min((d for d in _descriptors(anchor) if d and not any(
            _matches(o, d) for o in shapes if o is not anchor)), key=len, default=None)
        if anchor_desc is None:
            continue
        for d in _descriptors(target):
            group = [o for o in others if o is not anchor and _matches(o, d)] + [target]
            if len(group) < 2:
                continue
            for rel, holds in relations:
                if holds(target, anchor) and not any(holds(o, anchor) for o in group if o is not target):
                    out.append(f"the {_phrase(d)} {rel} the {_phrase(anchor_desc)}")
    return sorted(set(out))


EXTREMES = ("leftmost", "rightmost", "topmost", "bottommost")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "shape": "shapes"}


def absent_expressions(shapes: list[Shape]) -> list[str]:
    """Descriptions that fit none of ``shapes`` (an attribute combination no shape has)."""
    out = []
    for size in (None, *SIZES):
        for colour in (None, *COLOURS):
            for shape in (None, *SHAPES):
                d = {k: v for k, v in (("size", size), ("colour", colour), ("shape", shape)) if v}
                if d and not any(_matches(o, d) for o in shapes):
                    out.append(f"the {_phrase(d)}")
    return out


def group_expressions(shapes: list[Shape]) -> list[tuple[str, list[int]]]:
    """("all the red shapes", indexes of the shapes it names) for every description that fits two
    or more of ``shapes`` but not all of them."""
    groups = {}
    for o in shapes:
        for d in _descriptors(o):
            if not d:
                continue
            members = tuple(i for i, x in enumerate(shapes) if _matches(x, d))
            if 2 <= len(members) < len(shapes):
                words = [d[k] for k in ("size", "colour") if k in d]
                plural = " ".join(words + [PLURALS[d.get("shape", "shape")]])
                groups.setdefault(members, set()).update(
                    [f"all the {plural}", f"all {plural}"] + ([f"both {plural}", f"the two {plural}"]
                                                               if len(members) == 2 else []))
    return [(text, list(members)) for members, texts in groups.items() for text in sorted(texts)]


def generate(out: str | Path, *, name: str = "synthref", seed: int = 0, split_sizes: dict | None = None,
             min_size: int = 176, max_size: int = 224, refs_per_image: int = 2, sents_per_ref: int = 3,
             no_target: float = 0.0, multi_target: float = 0.0, empty_images: float = 0.0,
             progress: bool = True) -> Path:
    """Write a synthetic REFER-format dataset; returns ``out/<name>``.

    Args:
        split_sizes: images per split, default train 800, val 100, testA 100, testB 100.
        min_size, max_size: range of image width and height in pixels.
        refs_per_image, sents_per_ref: targets per image and expressions per target (at most).
        no_target, multi_target: shares of the refs that name nothing / several shapes; either
            above 0 writes gRefCOCO's layout, ``out/grefcoco`` unless ``name`` is given.
        empty_images: share of the images with no shape at all (all their refs no-target, "the
            leftmost shape" included), half of them one flat colour; with no_target or multi_target only.
    """
    split_sizes = split_sizes or {"train": 800, "val": 100, "testA": 100, "testB": 100}
    if not (0 <= no_target <= 1 and 0 <= multi_target <= 1 and no_target + multi_target <= 1):
        raise InputError(f"--no-target {no_target} and --multi-target {multi_target} are shares of the refs: each in "
                         "[0, 1], together at most 1")
    generalized = no_target > 0 or multi_target > 0
    if not 0 <= empty_images <= 1 or (empty_images and not generalized):
        raise InputError(f"--empty-images {empty_images} is a share of the images in [0, 1], for the gRefCOCO layout "
                         "(with --no-target or --multi-target)")
    if generalized and name == "synthref":
        name = "grefcoco"
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / name).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    images, annotations, refs = [], [], []
    sent_count = 0
    splits = [s for s, n in split_sizes.items() for _ in range(n)]
    for image_id, split in enumerate(progress_bar(splits, "synth", show=progress), start=1):
        w, h = rng.randint(min_size, max_size), rng.randint(min_size, max_size)
        empty = bool(empty_images) and rng.random() < empty_images
        if empty and rng.random() < 0.5:  # half the empty scenes: one flat colour, anywhere in 0-255
            img = Image.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
        else:
            img = _background(rng, w, h)
        shapes = [] if empty else _place_shapes(rng, w, h)
        draw = ImageDraw.Draw(img)
        ann_ids = []
        for shape in shapes:
            jitter = [max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[shape.colour]]
            poly = shape.polygon()
            draw.polygon(poly, fill=tuple(jitter))
            xs, ys = poly[0::2], poly[1::2]
            ann_id = len(annotations) + 1
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": SHAPES.index(shape.shape) + 1,
                                "segmentation": [poly], "area": _polygon_area(xs, ys), "iscrowd": 0,
                                "bbox": [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]})
            ann_ids.append(ann_id)
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        img.save(out / "images" / file_name, quality=95)
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        candidates = [(s, a, expressions(s, shapes, w, h)) for s, a in zip(shapes, ann_ids)]
        candidates = [c for c in candidates if c[2]]
        chosen_refs = [([shape], [ann_id], sents) for shape, ann_id, sents in
                       rng.sample(candidates, min(refs_per_image, len(candidates)))]
        if not shapes:  # an empty scene: every expression names nothing, extremes included
            chosen_refs = [([], [-1], absent_expressions([]) + [f"the {word} shape" for word in EXTREMES])
                           for _ in range(refs_per_image)]
        if generalized:  # each ref slot: no target, several, or the single target drawn above
            absent, groups = absent_expressions(shapes), group_expressions(shapes)
            for k, ref in enumerate(chosen_refs):
                u = rng.random()
                if u < no_target and absent:
                    chosen_refs[k] = ([], [-1], absent)
                elif no_target <= u < no_target + multi_target and groups:
                    members = rng.choice(groups)[1]
                    chosen_refs[k] = ([shapes[i] for i in members], [ann_ids[i] for i in members],
                                      [t for t, m in groups if m == members])
        for targets, ref_ann_ids, sents in chosen_refs:
            chosen = rng.sample(sents, min(sents_per_ref, len(sents)))
            ref_id = len(refs) + 1
            sentences = []
            for sent in chosen:
                sent_count += 1
                sentences.append({"sent_id": sent_count, "sent": sent, "raw": sent, "tokens": sent.split()})
            categories = [SHAPES.index(t.shape) + 1 for t in targets]
            ref = {"ref_id": ref_id, "ann_id": ref_ann_ids if generalized else ref_ann_ids[0],
                   "image_id": image_id, "split": split,
                   "category_id": (categories or [-1]) if generalized else categories[0],
                   "file_name": f"{Path(file_name).stem}_{ref_ann_ids[0]}.jpg",  # as REFER's refs: names no file
                   "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences}
            if generalized:
                ref["no_target"] = not targets
            refs.append(ref)
    if generalized:  # gRefCOCO ships its refs as JSON
        (out / name / "grefs(unc).json").write_text(json.dumps(refs))
    else:
        with open(out / name / "refs(unc).p", "wb") as f:
            pickle.dump(refs, f, protocol=2)
    with open(out / name / "instances.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return out / name


def _polygon_area(xs: list[float], ys: list[float]) -> float:
    return round(abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2, 2)
