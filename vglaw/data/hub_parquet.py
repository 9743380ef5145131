"""RefCOCO-family parquet copies from the Hugging Face Hub, read with pyarrow.

Two layouts are common; the reader tells them apart by their columns:

* ``jxu124/refcoco``, ``refcocoplus``, ``refcocog``: one row per ref, files
  ``data/<split>-*.parquet``. Box and mask come from ``raw_anns`` (the COCO annotation as JSON:
  ``bbox`` in xywh pixels, polygon ``segmentation``), width and height from ``raw_image_info``,
  the expressions from ``sentences``. Images are not included: they come from the user's COCO
  train2014 folder. For refcoco and refcoco+ the file split ``test`` holds testA.
* ``lmms-lab/RefCOCO``, ``RefCOCOplus``, ``RefCOCOg``: evaluation splits only, one row per
  annotation with its expressions in ``answer``, a flat polygon ``segmentation``, an xywh
  ``bbox`` and the JPEG embedded in ``image``; the images are written out beside the
  prepared splits.

Split names are mapped to the REFER API's (``validation`` -> ``val``), and each split's count is
compared with the REFER release's: a mismatch is reported, not corrected (lmms-lab's ``val``,
for one, holds 5,000 rows more than RefCOCO's val refs).
"""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

from PIL import Image

from ..errors import InputError, MissingFileError
from .masks import encode_rle
from .readers import bad_record, image_file

log = logging.getLogger(__name__)

# refs per split in the REFER release
REFER_REF_COUNTS = {
    "refcoco": {"train": 42404, "val": 3811, "testA": 1975, "testB": 1810},
    "refcoco+": {"train": 42278, "val": 3805, "testA": 1975, "testB": 1798},
    "refcocog": {"train": 42226, "val": 2573, "test": 5023},  # the umd split
}
JXU124_COLUMNS = {"ref_id", "ann_id", "image_id", "sentences", "raw_anns", "raw_image_info"}
LMMS_COLUMNS = {"question_id", "image", "answer", "segmentation", "bbox"}


def refer_name(dataset: str) -> str:
    """The REFER name of a Hub dataset name: ``refcocoplus`` / ``RefCOCOplus`` -> ``refcoco+``."""
    name = dataset.lower().replace("plus", "+")
    return name


def refer_split(file_split: str, dataset: str) -> str:
    """REFER's name for a file split: ``validation`` -> ``val``; for refcoco and refcoco+ the
    file split ``test`` is testA."""
    if file_split == "validation":
        return "val"
    if file_split == "test" and refer_name(dataset) in ("refcoco", "refcoco+"):
        return "testA"
    return file_split


def parquet_files(root: str | os.PathLike) -> list[Path]:
    """The ``.parquet`` files under ``root`` (a Hub dataset folder, its ``data/``, or one file)."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
    if not files:
        raise MissingFileError(f"no .parquet files in {root} (a Hub dataset folder: data/<split>-*.parquet)")
    return files


def file_split(path: Path) -> str:
    """``data/validation-00000-of-00001.parquet`` -> ``validation``."""
    return path.stem.split("-")[0]


def read_hf_parquet(root: str | os.PathLike, dataset: str, image_out: str | os.PathLike) -> tuple[list[dict], bool]:
    """Records of the parquet files under ``root`` (the reader's record form), and whether the
    images were embedded (then written to ``image_out``, which becomes the image root)."""
    import pyarrow.parquet as pq

    records, embedded = [], False
    for path in parquet_files(root):
        parquet = pq.ParquetFile(path)
        columns = set(parquet.schema_arrow.names)
        if JXU124_COLUMNS <= columns:
            read_row = _jxu124_records
        elif LMMS_COLUMNS <= columns:
            read_row, embedded = _lmms_records, True
        else:
            raise InputError(f"{path}: not a known RefCOCO parquet layout; its columns are {sorted(columns)}, "
                             f"expected those of jxu124/refcoco ({sorted(JXU124_COLUMNS)}) or of "
                             f"lmms-lab/RefCOCO ({sorted(LMMS_COLUMNS)})")
        split = refer_split(file_split(path), dataset)
        for batch in parquet.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                records.extend(read_row(row, split, dataset, Path(image_out)))
    return records, embedded


def _jxu124_records(row: dict, split: str, dataset: str, image_out: Path) -> list[dict]:
    """One ref: a record per sentence, box and mask from its COCO annotation."""
    base = {"split": refer_split(row.get("split") or split, dataset), "image_id": row["image_id"],
            "ref_id": row["ref_id"], "ann_id": row["ann_id"], "category_id": row.get("category_id")}
    try:
        ann, info = json.loads(row["raw_anns"]), json.loads(row["raw_image_info"])
    except (TypeError, json.JSONDecodeError) as e:
        return [bad_record({**base, "image": Path(row.get("image_path") or "").name, "width": None, "height": None},
                           f"raw_anns or raw_image_info is not JSON: {e}")]
    width, height = info.get("width"), info.get("height")
    # the image is the COCO image entry's file (or image_path's); the row's own file_name is the
    # ref's, suffixed with its annotation, and names no file
    name = info.get("file_name") or Path(row.get("image_path") or "").name or None
    base.update(image=image_file(dataset, row["image_id"], name), width=width, height=height,
                box=[float(v) for v in ann["bbox"]])
    mask = None
    if ann.get("segmentation") and width and height:
        try:
            mask = encode_rle(ann["segmentation"], height, width)
        except ValueError as e:
            return [bad_record(base, f"annotation {row['ann_id']}: {e}")]
    return [{**base, "mask": mask, "sentence": sent.get("sent") or sent.get("raw", ""), "sent_id": sent.get("sent_id")}
            for sent in row["sentences"] or [{}]]


def _lmms_records(row: dict, split: str, dataset: str, image_out: Path) -> list[dict]:
    """One annotation with its expressions; its embedded JPEG is written to ``image_out``."""
    name = Path(row.get("file_name") or row["image"].get("path") or f"{row['question_id']}.jpg").name
    base = {"split": split, "image": name, "image_id": None, "ref_id": row["question_id"], "ann_id": None,
            "category_id": None, "box": [float(v) for v in row["bbox"]], "width": None, "height": None}
    data = (row.get("image") or {}).get("bytes")
    try:
        if not data:
            raise OSError("no image bytes")
        with Image.open(io.BytesIO(data)) as img:
            base["width"], base["height"] = img.size
        target = image_out / name
        if not target.exists():
            image_out.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    except OSError as e:
        return [bad_record(base, f"row {row['question_id']}: unreadable embedded image: {e}")]
    polygon = [float(v) for v in row.get("segmentation") or []]
    mask = encode_rle([polygon], base["height"], base["width"]) if len(polygon) >= 6 else None
    return [{**base, "mask": mask, "sentence": text, "sent_id": j} for j, text in enumerate(row["answer"] or [""])]


def split_report(records: list[dict], dataset: str) -> dict:
    """Per split: how many refs (rows) the files hold against the REFER release's count."""
    expected = REFER_REF_COUNTS.get(refer_name(dataset), {})
    refs: dict[str, set] = {}
    for r in records:
        refs.setdefault(r["split"], set()).add(r["ref_id"])
    report = {}
    for split, ids in sorted(refs.items()):
        entry = {"refs": len(ids), "refer_refs": expected.get(split)}
        if entry["refer_refs"] is not None and entry["refer_refs"] != entry["refs"]:
            entry["note"] = (f"{split} holds {len(ids)} refs, the REFER release's {split} {entry['refer_refs']}: "
                             "this is not the benchmark split; check what it holds before reporting on it")
            log.warning("%s: %s", dataset, entry["note"])
        report[split] = entry
    return report
