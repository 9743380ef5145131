"""``vglaw leakage``: which grounding images a detection pretraining set already contains.

RefCOCO, RefCOCO+ and RefCOCOg take their images from COCO train2014, and COCO train2017 (the
set detectron2's ViTDet backbones are pretrained on) contains all of train2014: a backbone
pretrained on it has seen the val and test images of these benchmarks. COCO 2014 and 2017
share image ids, so images are matched by id (from the record, else from a
``COCO_train2014_<id>.jpg`` file name).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import InputError, MissingFileError
from ..fileio import atomic_write
from .prepare import load_split
from .readers import read_refer

_COCO_ID = re.compile(r"(\d{6,})\.\w+$")
TRAIN_SPLITS = ("train",)


def coco_image_id(record: dict) -> int | None:
    """A record's COCO image id: its ``image_id``, else the number in a COCO file name."""
    if record.get("image_id") is not None:
        return int(record["image_id"])
    match = _COCO_ID.search(record.get("image") or "")
    return int(match.group(1)) if match else None


def read_sources(paths: list[str | os.PathLike]) -> dict[str, dict[str, list[dict]]]:
    """{dataset name: {split: records}} of prepared folders (``meta.json``) and REFER dataset
    folders (``refs(<splitBy>).p`` + ``instances.json``, one entry per splitBy found)."""
    sources: dict[str, dict[str, list[dict]]] = {}
    for path in map(Path, paths):
        if (path / "meta.json").is_file():
            meta = json.loads((path / "meta.json").read_text())
            name = f"{meta['dataset']} ({path.name})"
            sources[name] = {split: load_split(path, split)[1] for split in meta["splits"]}
        elif list(path.glob("refs(*).p")):
            for refs in sorted(path.glob("refs(*).p")):
                split_by = refs.name[len("refs("):-len(").p")]
                splits: dict[str, list[dict]] = {}
                for record in read_refer(path.parent, path.name, split_by):
                    splits.setdefault(record["split"], []).append(record)
                sources[f"{path.name}({split_by})"] = splits
        else:
            raise MissingFileError(f"{path} is neither a prepared dataset (meta.json) nor a REFER dataset folder "
                                    "(refs(<splitBy>).p and instances.json)")
    return sources


def leakage_report(sources: dict[str, dict[str, list[dict]]], coco_image_ids: set[int]) -> dict:
    """{dataset: {split: images, images_in_file, expressions, expressions_in_file}}."""
    report = {}
    for name, splits in sources.items():
        report[name] = {}
        for split, records in sorted(splits.items()):
            ids = [coco_image_id(r) for r in records]
            inside = [i in coco_image_ids for i in ids]
            report[name][split] = {"images": len(set(ids)),
                                   "images_in_file": len({i for i, hit in zip(ids, inside) if hit}),
                                   "expressions": len(records), "expressions_in_file": sum(inside)}
    return report


def held_out_image_ids(sources: dict[str, dict[str, list[dict]]]) -> set[int]:
    """The COCO ids of every image in a split other than train."""
    return {i for splits in sources.values() for split, records in splits.items() if split not in TRAIN_SPLITS
            for i in map(coco_image_id, records) if i is not None}


def write_clean(coco: dict, exclude: set[int], out: str | os.PathLike) -> dict:
    """Write ``coco`` without the images in ``exclude`` and their annotations; returns counts."""
    clean = {**coco, "images": [img for img in coco["images"] if img["id"] not in exclude],
             "annotations": [a for a in coco.get("annotations", []) if a["image_id"] not in exclude]}
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(clean)))
    return {"images_removed": len(coco["images"]) - len(clean["images"]),
            "annotations_removed": len(coco.get("annotations", [])) - len(clean["annotations"])}


def leakage(paths: list[str | os.PathLike], coco_file: str | os.PathLike,
            write_clean_to: str | os.PathLike | None = None) -> dict:
    """The report of :func:`leakage_report` for ``paths`` against the COCO annotation file, and
    with ``write_clean_to`` that file without the held-out (val/test) images."""
    coco_file = Path(coco_file)
    if not coco_file.is_file():
        raise MissingFileError(f"COCO annotation file {coco_file} not found")
    try:
        coco = json.loads(coco_file.read_text())
        coco_ids = {int(img["id"]) for img in coco["images"]}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{coco_file} is not a COCO annotation file (JSON with images[].id): {e}") from None
    sources = read_sources(paths)
    result = {"coco_file": str(coco_file), "coco_images": len(coco_ids), "datasets": leakage_report(sources, coco_ids)}
    if write_clean_to is not None:
        result["clean"] = {"path": str(write_clean_to), **write_clean(coco, held_out_image_ids(sources), write_clean_to)}
    return result


def format_leakage(result: dict) -> str:
    """The report as a plain-text table."""
    lines = [f"{result['coco_file']}: {result['coco_images']} images",
             f"{'dataset':<28} {'split':<8} {'images':>8} {'in file':>8} {'expressions':>12} {'in file':>8}"]
    for name, splits in result["datasets"].items():
        for split, r in splits.items():
            lines.append(f"{name:<28} {split:<8} {r['images']:>8} {r['images_in_file']:>8} {r['expressions']:>12} "
                         f"{r['expressions_in_file']:>8}")
    if "clean" in result:
        c = result["clean"]
        lines.append(f"wrote {c['path']}: {c['images_removed']} images and {c['annotations_removed']} annotations "
                     "of val/test splits removed")
    return "\n".join(lines)
