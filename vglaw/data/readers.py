"""Readers of the annotation formats people have, each yielding one record per sentence.

A record is a plain dict::

    split, image (file name relative to the image root), width, height, box [x, y, w, h]
    (pixels), sentence, ref_id, ann_id, sent_id, category_id, image_id,
    mask (COCO RLE {"size": [h, w], "counts": str}, or None when the source has no masks),
    and where the source lists every object of the image (REFER, gRefCOCO): image_categories,
    the categories of all of them (``data.negatives`` shows an expression only with images
    holding none of its category)

A generalized record (gRefCOCO, your own no-target or multi-target annotations) names a set of
objects that may be empty: it also has ``boxes`` (one [x, y, w, h] per object) and ``no_target``
(True when the set is empty); its ``box`` is the boxes' union (None when empty) and its ``mask``
the union of the objects' masks (all zero when empty). Single-target records have neither key.

Formats:
* gRefCOCO (ReLA's ``G_REFER``): ``<root>/<dataset>/grefs(<splitBy>).p`` (read first when
  present, with the restricted unpickler) or ``.json``, + ``instances.json``; ``ann_id`` a list or
  a scalar, ``[-1]`` with ``no_target`` for no target.
* REFER API layout (lichengunc/refer): ``<root>/<dataset>/refs(<splitBy>).p`` +
  ``instances.json``; the pickle is read with the restricted unpickler.
* TransVG / ReSC split files: ``<root>/<dataset>/<dataset>_<split>.pth``, tuples
  ``(img_file, mask_file, bbox, phrase, ...)`` or ``(img_file, bbox, phrase)`` (flickr);
  loaded with ``torch.load(weights_only=True)``. REC only.
* SeqTR / SimVG ``instances.json``: ``{split: [{image_id, bbox, expressions, mask, width,
  height, ...}]}``, the file or SeqTR's ``annotations/<dataset>/`` folders.
* Hugging Face Hub parquet copies (:mod:`.hub_parquet`).
* Your own annotations, one record per expression in JSONL, CSV or parquet (:mod:`.own`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torchvision.ops import box_convert

from ..errors import InputError, MissingFileError
from ..unpickle import safe_pickle_load
from .masks import encode_rle, union_rle

COCO_PATTERN = "COCO_train2014_{:012d}.jpg"
XYXY_TRANSVG = ("referit", "flickr")  # TransVG stores these boxes as x0, y0, x1, y1


def is_saiapr(dataset: str) -> bool:
    """ReferItGame (refclef, referit, SeqTR's referitgame-berkeley): images from SAIAPR TC-12."""
    return dataset.lower().startswith(("refclef", "referit"))


def image_file(dataset: str, image_id: int | str | None = None, file_name: str | None = None) -> str:
    """The image file a record uses, relative to ``--images``: every reader names it here.

    COCO (the refcoco family): the COCO image entry's ``file_name``, else
    ``COCO_train2014_<12-digit id>.jpg``. A ref's own ``file_name`` (suffixed with its annotation,
    ``COCO_train2014_000000581857_16.jpg``) names no file and must never be passed.
    SAIAPR TC-12 (ReferItGame): ``<id>.jpg``; :func:`locate_saiapr` then finds the tree it is in.
    """
    if is_saiapr(dataset):
        image_id = image_id if image_id is not None else Path(str(file_name)).stem.split("_")[0]
        return f"{int(image_id)}.jpg"
    if file_name:
        return Path(file_name).name
    return COCO_PATTERN.format(int(image_id))


def saiapr_layouts(name: str) -> list[str]:
    """Where the SAIAPR TC-12 image ``<id>.jpg`` lies below the tree's root, as each download
    ships it: REFER's saiapr_tc-12.zip keeps ``<id // 1000, 2 digits>/images/<id>.jpg``
    (25075 -> ``25/images/25075.jpg``); ReSC/TransVG's repack (``referit/images/``) and SeqTR's
    ``saiaprtc12/`` are flat; a repack's root may hold ``images/`` itself."""
    image_id = int(Path(name).stem)
    return [f"{image_id // 1000:02d}/images/{name}", name, f"images/{name}"]


def locate_saiapr(records: list[dict], image_root: Path) -> list[dict]:
    """SAIAPR records with ``image`` in the tree that ``image_root`` holds (the layout of the
    first record's image, found among :func:`saiapr_layouts`); an InputError names every path
    tried when none holds it."""
    first = next((r for r in records if r.get("image")), None)
    if first is None:
        return records
    tried = [image_root / rel for rel in saiapr_layouts(first["image"])]
    layout = next((k for k, path in enumerate(tried) if path.is_file()), None)
    if layout is None:
        raise InputError(f"ReferItGame image {first['image']} is in none of the SAIAPR TC-12 trees under --images "
                         f"{image_root}; tried " + ", ".join(str(p) for p in tried) + " (point --images at "
                         "saiapr_tc-12/ as REFER's zip unpacks, or at the folder of <id>.jpg files)")
    return [dict(r, image=saiapr_layouts(r["image"])[layout]) if r.get("image") else r for r in records]


def bad_record(base: dict, error: str) -> dict:
    """A record that cannot be used, with ``error`` saying why (``prepare`` reports or drops it)."""
    return {"box": None, "sentence": None, "sent_id": None, **base, "mask": None, "error": error}


def gt_box_xyxy(record: dict) -> torch.Tensor:
    """A record's target box, (4,) x0, y0, x1, y1 in original pixels."""
    return box_convert(torch.tensor(record["box"], dtype=torch.float64)[None], "xywh", "xyxy")[0]


def read_refs(refs_path: Path, instances_path: Path, layout: str) -> tuple[list, dict, dict, dict]:
    """A REFER-style download's refs (``.p``: the restricted unpickler; else JSON) and, from its
    ``instances.json``, the images and annotations by id and :func:`image_categories`; a missing
    file is named with the ``layout`` expected."""
    for path in (refs_path, instances_path):
        if not path.is_file():
            raise MissingFileError(f"{path} not found ({layout})")
    if refs_path.suffix == ".p":
        refs = safe_pickle_load(refs_path)
    else:
        try:
            refs = json.loads(refs_path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{refs_path} is not valid JSON: {e}") from None
    if not isinstance(refs, list):
        raise InputError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    with open(instances_path) as f:
        instances = json.load(f)
    return (refs, {img["id"]: img for img in instances["images"]}, {ann["id"]: ann for ann in instances["annotations"]},
            image_categories(instances))


def image_categories(instances: dict) -> dict:
    """{image id: the sorted categories of all its annotated objects} of a COCO-style file."""
    found = {}
    for ann in instances["annotations"]:
        found.setdefault(ann["image_id"], set()).add(ann.get("category_id"))
    return {image: sorted(c for c in cats if c is not None) for image, cats in found.items()}


def read_refer(root: str | os.PathLike, dataset: str, split_by: str) -> list[dict]:
    """Records of a REFER-layout dataset (all splits)."""
    folder = Path(root) / dataset
    refs_path = folder / f"refs({split_by}).p"
    instances_path = folder / "instances.json"
    refs, images, anns, categories = read_refs(refs_path, instances_path,
                                               "REFER layout: <data_root>/<dataset>/refs(<splitBy>).p and instances.json")
    records = []
    for ref in refs:
        ann = anns.get(ref["ann_id"])
        img = images.get(ref["image_id"], {})
        base = {"split": ref["split"], "image_id": ref["image_id"], "ref_id": ref["ref_id"], "ann_id": ref["ann_id"],
                "category_id": ref.get("category_id"),
                "image": image_file(dataset, ref["image_id"], img.get("file_name")),
                "width": img.get("width"), "height": img.get("height"),
                "image_categories": categories.get(ref["image_id"], [])}
        if ann is None:
            records.append(bad_record(base, f"annotation {ref['ann_id']} missing from instances.json"))
            continue
        box = [float(v) for v in ann["bbox"]]
        mask = None
        if ann.get("segmentation") and base["width"] and base["height"]:
            try:
                mask = encode_rle(ann["segmentation"], base["height"], base["width"])
            except ValueError as e:
                records.append(bad_record({**base, "box": box}, f"annotation {ann['id']} in {instances_path}: {e}"))
                continue
        for sent in ref["sentences"]:
            records.append({**base, "box": box, "mask": mask, "sentence": sent.get("sent", sent.get("raw", "")),
                            "sent_id": sent.get("sent_id")})
    return records


def target_set(boxes: list[list[float]]) -> dict:
    """The fields of a generalized record naming ``boxes`` ([x, y, w, h] each; [] for no target):
    ``boxes``, ``no_target`` and ``box``, their union (None when empty)."""
    if not boxes:
        return {"box": None, "boxes": [], "no_target": True}
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return {"box": [x0, y0, x1 - x0, y1 - y0], "boxes": [list(b) for b in boxes], "no_target": False}


def target_count(record: dict) -> int:
    """How many objects a record names: 0 (no target), 1, or more (a multi-target record)."""
    return len(record["boxes"]) if "boxes" in record else 1


def is_generalized(records: list[dict]) -> bool:
    """Whether any of ``records`` names no object or several (it carries a target set)."""
    return any("boxes" in r for r in records)


def read_grefcoco(root: str | os.PathLike, dataset: str = "grefcoco", split_by: str = "unc") -> list[dict]:
    """Records of gRefCOCO as it ships: ``<root>/<dataset>/grefs(<splitBy>).p`` (read first when
    present, as ReLA's loader does) or ``grefs(<splitBy>).json``, and ``instances.json``.

    ``ann_id`` and ``category_id`` may be lists or scalars; ``ann_id: [-1]`` (with ``no_target``)
    is a no-target ref, whose target mask is all zero. A multi-target ref's mask is the union of
    its annotations' masks. Crowd annotations (``iscrowd: 1``) are left out of a ref's target set,
    as ReLA's ``load_grefcoco_json`` does; a target ref left with none is a bad record."""
    folder = Path(root) / dataset
    pickled, as_json = folder / f"grefs({split_by}).p", folder / f"grefs({split_by}).json"
    refs_path = pickled if pickled.is_file() else as_json
    instances_path = folder / "instances.json"
    refs, images, anns, categories = read_refs(refs_path, instances_path, "gRefCOCO layout: <data_root>/<dataset>/"
                                               "grefs(<splitBy>).json or .p, and instances.json")
    records = []
    for ref in refs:
        ann_ids = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
        img = images.get(ref["image_id"], {})
        h, w = img.get("height"), img.get("width")
        base = {"split": ref["split"], "image_id": ref["image_id"], "ref_id": ref["ref_id"], "ann_id": ann_ids,
                "category_id": ref.get("category_id"), "image": image_file(dataset, ref["image_id"], img.get("file_name")),
                "width": w, "height": h, "image_categories": categories.get(ref["image_id"], [])}
        problem, boxes, masks = None, [], []
        if ann_ids == [-1] or ref.get("no_target"):
            if ann_ids != [-1]:
                problem = f"ref {ref['ref_id']} says no_target but names annotations {ann_ids}"
        else:
            for ann_id in ann_ids:
                ann = anns.get(ann_id)
                if ann is None:
                    problem = f"annotation {ann_id} missing from {instances_path}"
                    break
                if ann.get("iscrowd"):
                    continue
                boxes.append([float(v) for v in ann["bbox"]])
                if ann.get("segmentation") and w and h:
                    try:
                        masks.append(encode_rle(ann["segmentation"], h, w))
                    except ValueError as e:
                        problem = f"annotation {ann_id} in {instances_path}: {e}"
                        break
            if problem is None and not boxes:
                problem = f"every annotation of ref {ref['ref_id']} ({ann_ids}) is a crowd annotation"
        if problem is not None:
            records.append(bad_record(base, problem))
            continue
        mask = union_rle(masks, h, w) if w and h and (masks or not boxes) else None
        for sent in ref["sentences"]:
            records.append({**base, **target_set(boxes), "mask": mask, "sentence": sent.get("sent", sent.get("raw", "")),
                            "sent_id": sent.get("sent_id")})
    return records


def read_transvg(root: str | os.PathLike, dataset: str, splits: list[str] | None = None) -> list[dict]:
    """Records of TransVG/ReSC split files ``<root>/<dataset>/<dataset>_<split>.pth`` (REC only)."""
    folder = Path(root) / dataset
    paths = sorted(folder.glob(f"{dataset}_*.pth"))
    if splits:
        paths = [folder / f"{dataset}_{s}.pth" for s in splits]
    if not paths:
        raise MissingFileError(f"no {dataset}_<split>.pth files in {folder}")
    xyxy = dataset in XYXY_TRANSVG
    records = []
    for path in paths:
        split = path.stem[len(dataset) + 1:]
        try:
            items = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - report any unreadable file by name
            raise InputError(f"{path}: cannot be read with torch.load(weights_only=True): {e}") from None
        for i, item in enumerate(items):
            if len(item) == 3:  # flickr: (img_file, bbox, phrase)
                img_file, box, phrase = item
            else:
                img_file, _mask_file, box, phrase = item[:4]
            box = [float(v) for v in (box.tolist() if hasattr(box, "tolist") else box)]
            if xyxy:
                box = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            records.append({"split": split, "image": image_file(dataset, file_name=img_file), "width": None,
                            "height": None, "box": box,
                            "sentence": phrase, "ref_id": i, "ann_id": None, "sent_id": i, "category_id": None,
                            "image_id": None, "mask": None})
    return records


def seqtr_instances(root: str | os.PathLike, dataset: str) -> Path:
    """SeqTR's ``instances.json`` from ``--data-root``: the file itself, or the annotations
    folder of SeqTR's layout (``<root>/<dataset>/instances.json``, e.g. ``refcoco-unc``)."""
    root = Path(root)
    tried = [root] if root.suffix == ".json" else [root / dataset / "instances.json", root / "instances.json"]
    for path in tried:
        if path.is_file():
            return path
    raise MissingFileError(f"no SeqTR instances.json for dataset {dataset!r}; tried: "
                            + ", ".join(str(p) for p in tried))


def read_seqtr(root: str | os.PathLike, dataset: str = "refcoco") -> list[dict]:
    """Records of a SeqTR/SimVG ``instances.json`` (``{split: [record, ...]}``); ``root`` is the
    file or SeqTR's annotations folder (see :func:`seqtr_instances`)."""
    path = seqtr_instances(root, dataset)
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected {{split: [records]}}")
    records = []
    for split, items in data.items():
        for i, item in enumerate(items):
            h, w = item.get("height"), item.get("width")
            mask = encode_rle(item["mask"], h, w) if item.get("mask") and h and w else None
            box = [float(v) for v in item["bbox"]]
            for j, sentence in enumerate(item.get("expressions", [])):
                records.append({"split": split, "image": image_file(dataset, item["image_id"]), "width": w, "height": h,
                                "box": box, "sentence": sentence, "ref_id": item.get("ref_id", i),
                                "ann_id": item.get("ann_id"), "sent_id": j, "category_id": item.get("category_id"),
                                "image_id": item["image_id"], "mask": mask})
    return records
