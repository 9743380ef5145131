"""``vglaw prepare``: read a dataset, check every record, write vglaw's prepared form.

Prepared form (JSON only, nothing pickled)::

    <out>/meta.json        {"dataset", "split_by", "format", "image_root", "splits": {split: count}}
                           (hf-parquet also "split_check": each split's refs against REFER's)
    <out>/images/          hf-parquet files that embed their images: the images
    <out>/<split>.jsonl    one record per sentence (see ``readers``)
    <out>/dropped.json     with --skip-bad: every dropped record and why
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image

from ..config import DATA_FORMATS, OWN_FORMATS
from ..errors import InputError, MissingFileError
from ..fileio import json_text
from ..progress import progress as progress_bar
from .hub_parquet import read_hf_parquet, split_report
from .own import read_own
from .readers import (is_generalized, is_saiapr, locate_saiapr, read_grefcoco, read_refer, read_seqtr, read_transvg,
                      target_count)

log = logging.getLogger(__name__)
FORMATS = DATA_FORMATS


class BadRecordsError(InputError):
    """Some records failed validation; ``bad`` lists them (file, id, reason)."""

    def __init__(self, bad: list[dict], shown: int = 20):
        self.bad = bad
        lines = [f"{b['image']} ref {b['ref_id']} sent {b['sent_id']}: {b['reason']}" for b in bad[:shown]]
        more = f"\n... and {len(bad) - shown} more" if len(bad) > shown else ""
        super().__init__(f"{len(bad)} bad record(s); fix them or pass --skip-bad to drop them:\n"
                         + "\n".join(lines) + more)


def check_record(record: dict, image_root: Path, sizes: dict) -> str | None:
    """Why ``record`` is unusable, or None. Fills in width/height from the image when absent."""
    if record.get("error"):
        return record["error"]
    path = image_root / record["image"]
    if record["image"] not in sizes:
        if not path.is_file():
            sizes[record["image"]] = None
        elif record.get("width") and record.get("height"):
            sizes[record["image"]] = (record["width"], record["height"])
        else:
            try:
                with Image.open(path) as img:
                    sizes[record["image"]] = img.size
            except OSError as e:
                return f"unreadable image {path}: {e}"
    if sizes[record["image"]] is None:
        return f"image file missing: {path}"
    record["width"], record["height"] = sizes[record["image"]]
    if not record.get("sentence") or not record["sentence"].strip():
        return "empty sentence"
    W, H = record["width"], record["height"]
    for box in record.get("boxes", [record["box"]]):
        x, y, w, h = box
        if w <= 0 or h <= 0:
            return f"box {box} has zero or negative size"
        if x < -1 or y < -1 or x + w > W + 1 or y + h > H + 1:  # 1 px of slack for rounding
            return f"box {box} lies outside the {W}x{H} image"
    return None


def target_counts(records: list[dict]) -> dict:
    """How many records name no object, one, and several."""
    counts = Counter(("no-target", "single-target")[n] if n < 2 else "multi-target"
                     for n in map(target_count, records))
    return {k: counts[k] for k in ("no-target", "single-target", "multi-target")}


def read_records(fmt: str, data_root: str | os.PathLike, dataset: str, split_by: str,
                 out: Path, image_root: str | os.PathLike | None = None,
                 exif: str | None = None) -> tuple[list[dict], Path | None]:
    """The reader's records of ``fmt``, and the image folder when the files embed the images
    (written under ``out``)."""
    if fmt in OWN_FORMATS:
        if image_root is None:
            raise InputError(f"--images is required for the {fmt} format: the folder of the image files")
        return read_own(data_root, image_root, exif, fmt), None
    if fmt == "refer":
        return read_refer(data_root, dataset, split_by), None
    if fmt == "grefcoco":
        return read_grefcoco(data_root, dataset, split_by), None
    if fmt == "transvg":
        return read_transvg(data_root, dataset), None
    if fmt == "seqtr":
        return read_seqtr(data_root, dataset), None
    if fmt == "hf-parquet":
        records, embedded = read_hf_parquet(data_root, dataset, out / "images")
        return records, out / "images" if embedded else None
    raise InputError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def prepare(*, fmt: str, data_root: str | os.PathLike, dataset: str, image_root: str | os.PathLike | None,
            out: str | os.PathLike, split_by: str = "unc", skip_bad: bool = False, progress: bool = True,
            exif: str | None = None) -> dict:
    """Convert a dataset into vglaw's prepared form; returns meta.json's content.

    Args:
        fmt: "refer", "grefcoco", "transvg", "seqtr", "hf-parquet" or "jsonl" / "csv" /
            "parquet" / "own" (your own annotations, see :mod:`.own`).
        data_root: REFER and gRefCOCO: the folder holding ``<dataset>/``; TransVG: the folder holding
            ``<dataset>/<dataset>_<split>.pth``; SeqTR: the ``instances.json`` file or SeqTR's
            annotations folder (``<data_root>/<dataset>/instances.json``); hf-parquet: a Hub
            dataset folder (its ``.parquet`` files, found recursively); own formats: the JSONL, CSV
            or parquet file.
        image_root: the folder with the image files (not needed for parquet files that embed them).
        skip_bad: drop bad records (and write ``dropped.json``) instead of stopping.
        exif: own: the frame of the boxes of images with an EXIF orientation tag, "displayed" or
            "stored" (see :func:`.own.read_own`).
    """
    out = Path(out)
    records, embedded_images = read_records(fmt, data_root, dataset, split_by, out, image_root, exif)
    if embedded_images is not None:
        image_root = embedded_images
    elif image_root is None:
        raise InputError(f"--images is required for the {fmt} format: the folder of the image files")
    image_root = Path(image_root).resolve()
    if not image_root.is_dir():
        raise MissingFileError(f"image folder {image_root} not found")
    if is_saiapr(dataset):
        records = locate_saiapr(records, image_root)
    sizes: dict = {}
    good, bad = defaultdict(list), []
    for record in progress_bar(records, f"prepare {dataset}", show=progress, unit="sent"):
        reason = check_record(record, image_root, sizes)
        record.pop("error", None)
        if reason:
            bad.append({"image": record["image"], "ref_id": record["ref_id"], "sent_id": record["sent_id"],
                        "split": record["split"], "reason": reason})
        else:
            good[record["split"]].append(record)
    if bad and not skip_bad:
        raise BadRecordsError(bad)
    out.mkdir(parents=True, exist_ok=True)
    for split, items in good.items():
        with open(out / f"{split}.jsonl", "w") as f:
            for record in items:
                f.write(json_text(record) + "\n")
    meta = {"dataset": dataset, "split_by": split_by, "format": fmt, "image_root": str(image_root),
            "splits": {split: len(items) for split, items in good.items()}}
    generalized = {split: target_counts(items) for split, items in good.items() if is_generalized(items)}
    if generalized:  # no-target / single / multi-target expressions of each split
        meta["targets"] = generalized
    if fmt == "hf-parquet":
        meta["split_check"] = split_report(records, dataset)
    (out / "meta.json").write_text(json_text(meta, indent=2) + "\n")
    if bad:
        (out / "dropped.json").write_text(json_text(bad, indent=1) + "\n")
        log.warning("dropped %d bad record(s) (%s); see %s", len(bad),
                    ", ".join(f"{n} {r}" for r, n in Counter(b["reason"].split(":")[0] for b in bad).items()),
                    out / "dropped.json")
    return meta


def load_split(prepared: str | os.PathLike, split: str) -> tuple[dict, list[dict]]:
    """(meta, records) of one split of a prepared dataset."""
    prepared = Path(prepared)
    meta_path = prepared / "meta.json"
    if not meta_path.is_file():
        raise MissingFileError(f"{meta_path} not found: run `vglaw prepare` first")
    meta = json.loads(meta_path.read_text())
    path = prepared / f"{split}.jsonl"
    if not path.is_file():
        raise MissingFileError(f"{path} not found; prepared splits: {sorted(meta['splits'])}")
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return meta, records
