"""Grounding (image, expression) pairs from a file: ``vglaw predict --pairs``.

The pairs (JSONL, CSV or parquet with columns ``image`` and ``text``, optionally ``id``) are
grouped by image: each image is decoded and letterboxed once, by DataLoader workers, and its
expressions run together, packed with other images' into forward passes of up to
``batch_size`` expressions. The answers are exactly :meth:`Grounder.predict`'s, pair by pair.

Nothing is lost and nothing is done twice: each forward pass's lines are appended to a part
file (``<out>.parts/rank<R>.jsonl``) and flushed to disk before the next pass, so a killed run
loses at most the pass in flight; a rerun with the same ``--out`` reads what is there (a torn
last line is dropped) and does only the rest, pairs that got an error line included. Every line
carries ``made_from``, a digest of what produced it (see :func:`made_from`); a line whose digest
is not the pair's now (its image file, text, the model or a setting changed) is stale: the pair
is done again and the summary counts it. Under torchrun each process takes a disjoint
share of the images and writes its own part; when all are done, rank 0 merges the parts into
``<out>`` in input order (atomically) and removes them. An image that cannot be read (whatever
decoding it raises) or has more pixels than the grounder's ``max_pixels``, or a text that is not
a string or has no visible character, gives that pair an ``error`` line instead of an answer.
An output that is one of the inputs (the pairs file, an image, a model file: the same file after
links are followed) is refused before anything is written.
"""
from __future__ import annotations

import hashlib
import json
import os
import reprlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .. import distributed as dist
from ..data.transforms import Letterbox, normalize_canvas
from ..errors import InputError, VglawError
from ..fileio import atomic_write, json_text, read_table
from ..progress import progress
from .postprocess import prediction_json
from .predictor import Grounder, as_rgb, expression_problem

ERROR_KINDS = ("cannot read image", "image too large", "text must be a string", "text is not valid Unicode",
               "empty expression")  # how error lines begin, as the summary counts them


# ----------------------------------------------------------------------------- the pairs
def read_pairs(path: str | os.PathLike) -> list[dict]:
    """The pairs of a JSONL, CSV or parquet file as ``{"id", "image", "text"}`` in file order;
    ``id`` defaults to the row's index (from 0). What is wrong with the file (not there, not a
    regular file, not UTF-8, not JSON/CSV/parquet, a column missing, a bad or repeated id, an
    image that is not a path) is one line, an :class:`InputError` naming the file. A pair whose
    text cannot be an expression (:func:`expression_problem`: not a string, or nothing visible)
    is kept with an ``error``, which becomes its results line; its ``text`` is the string as
    given, or None where it was not a string."""
    path = Path(path)
    rows = read_table(path, "pairs file")
    for column in ("image", "text"):
        if rows and any(column not in r for r in rows):
            have = sorted(repr(k) for k in set().union(*(r.keys() for r in rows)))  # repr: one line, whatever the name
            raise InputError(f"{path} has no column {column!r} in every row (columns: {', '.join(have)})")
    pairs, seen = [], set()
    for i, r in enumerate(rows):
        pid = r.get("id", i)
        if not isinstance(pid, (str, int)) or isinstance(pid, bool):
            raise InputError(f"{path}, row {i}: id must be a string or an integer, got {reprlib.repr(pid)}")
        if key(pid) in seen:
            raise InputError(f"{path}: id {reprlib.repr(pid)} appears twice (row {i}); ids name the results, one "
                             "per pair")
        seen.add(key(pid))
        if not isinstance(r["image"], str) or not r["image"]:
            raise InputError(f"{path}, row {i}: image must be a path, got {reprlib.repr(r['image'])}")
        text, problem = r["text"], expression_problem(r["text"])
        pairs.append({"id": pid, "image": r["image"], "text": text if isinstance(text, str) else None,
                      **({"error": problem} if problem else {})})
    return pairs


def key(pid) -> str:
    """A pair's id as a dict key that tells 1 from "1" (as JSON does)."""
    return json.dumps(pid)


@dataclass
class Unit:
    """One image with some of its pairs (at most a batch of them)."""

    image: str
    rows: list[int]  # indexes into the pairs


def group(pairs: list[dict], todo: list[int], batch_size: int) -> list[Unit]:
    """The ``todo`` pairs grouped by image, in order of each image's first pair; an image with
    more than ``batch_size`` expressions is split."""
    by_image: dict[str, list[int]] = {}
    for i in todo:
        by_image.setdefault(pairs[i]["image"], []).append(i)
    return [Unit(image, rows[k:k + batch_size]) for image, rows in by_image.items()
            for k in range(0, len(rows), batch_size)]


def pack(units: list[Unit], batch_size: int) -> list[list[int]]:
    """Consecutive units packed into batches of at most ``batch_size`` expressions (index lists)."""
    batches, current, size = [], [], 0
    for k, unit in enumerate(units):
        if current and size + len(unit.rows) > batch_size:
            batches.append(current)
            current, size = [], 0
        current.append(k)
        size += len(unit.rows)
    return batches + ([current] if current else [])


class UnitImages(Dataset):
    """Each unit's image decoded and letterboxed (in a DataLoader worker): ``{"unit", "canvas"
    (3, S, S) uint8, "letterbox", "size" (W, H)}``, or ``{"unit", "error"}`` when it cannot be read
    or has more than ``max_pixels``."""

    def __init__(self, units: list[Unit], image_root: Path, img_size: int, max_pixels: int | None) -> None:
        self.units, self.image_root, self.img_size, self.max_pixels = units, image_root, img_size, max_pixels

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, k: int) -> dict:
        try:
            rgb = as_rgb(self.image_root / self.units[k].image, self.max_pixels)
        except VglawError as e:  # load_image turns whatever decoding raises (and the pixel limit) into its one line
            return {"unit": k, "error": str(e)}
        letterbox = Letterbox.centred((rgb.height, rgb.width), self.img_size)
        return {"unit": k, "canvas": letterbox.apply_image(rgb), "letterbox": letterbox, "size": rgb.size}


# ----------------------------------------------------------------------------- result files
def read_results(path: Path) -> tuple[list[dict], int]:
    """The whole JSON lines of a results file and the byte length they fill; a torn last line
    (a run killed mid-write) is not counted."""
    lines, length = [], 0
    if path.is_file():
        with open(path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                try:
                    lines.append(json.loads(raw))
                except json.JSONDecodeError:
                    break
                length += len(raw)
    return lines, length


# ----------------------------------------------------------------------------- what made an answer
def file_ids(paths) -> dict[str, os.stat_result | None]:
    """Each path's ``os.stat`` (links followed), or None where there is no such file."""
    ids = {}
    for path in map(str, paths):
        try:
            ids[path] = os.stat(path)
        except (OSError, ValueError):  # ValueError: a NUL in the path
            ids[path] = None
    return ids


def check_outputs(outputs: dict[str, str | os.PathLike | None], inputs: dict[str, os.stat_result | None]) -> None:
    """Refuse an output (``{option: path}``) that is one of the ``inputs`` (``{path: stat}``): the
    same file, after links are followed. Run before anything is written."""
    by_identity = {(st.st_dev, st.st_ino): path for path, st in inputs.items() if st is not None}
    for option, path in outputs.items():
        st = None if path is None else file_ids([path])[str(path)]
        source = None if st is None else by_identity.get((st.st_dev, st.st_ino))
        if source is not None:
            raise InputError(f"{option} {path} is the input file {source}: writing it would destroy that input; "
                             f"give {option} another file (nothing was written)")


def settings_digest(grounder: Grounder, model_files, masks: bool) -> str:
    """What every answer depends on besides its pair: the model's files (content), the mask
    threshold, the precision, the minimum score and existence, and whether masks are written. The device and
    the batch size are left out: they change answers by float rounding at most."""
    model = hashlib.sha256()
    for path in model_files:
        with open(path, "rb") as f:
            model.update(hashlib.file_digest(f, "sha256").digest())
    return json.dumps({"model": model.hexdigest(), "mask_threshold": grounder.mask_threshold,
                       "precision": grounder.precision, "min_score": grounder.min_score, "masks": masks,
                       "min_exists": grounder.min_exists})


def made_from(pair: dict, image: str, image_id: os.stat_result | None, settings: str) -> str:
    """A pair's digest of what produces its answer: its id, text and image path, the image file's
    size and modification time, and the run's settings (:func:`settings_digest`). The file is
    known by one ``stat`` rather than by its contents: a rerun checks every done pair, and hashing
    would read every image again. The price: an edit that keeps both size and modification time
    goes unnoticed, and a copy that does not keep the time is done again."""
    file = None if image_id is None else [image_id.st_size, image_id.st_mtime_ns]
    text = json.dumps([key(pair["id"]), pair["text"], image, file, settings])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- result files
class PartWriter:
    """Appends lines to one part file, each call's lines flushed and fsynced together; a torn
    last line left by a killed run is cut off first."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _, length = read_results(path)
        if path.is_file() and path.stat().st_size != length:
            os.truncate(path, length)
        self.file = open(path, "a", encoding="utf-8")

    def write(self, lines: list[dict]) -> None:
        self.file.write("".join(json_text(line) + "\n" for line in lines))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def parts_folder(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def written_results(out: Path) -> list[dict]:
    """Every line already written for ``out``: the merged file's, then the parts'."""
    lines = []
    for path in [out, *sorted(parts_folder(out).glob("*.jsonl"))]:
        found = read_results(path)[0]
        if any(not isinstance(line, dict) or "id" not in line for line in found):
            raise InputError(f"{path} holds lines that vglaw predict --pairs did not write (no id): give another "
                             "--out (nothing was changed)")
        lines += found
    return lines


def current_results(lines: list[dict], digests: dict[str, str]) -> dict[str, dict]:
    """The lines still true of their pair, by pair id: those whose ``made_from`` is the pair's
    digest now. An answer wins over an error line for the same pair (a retry that succeeded)."""
    done = {}
    for line in lines:
        pid = key(line["id"])
        if line.get("made_from") != digests.get(pid):
            continue
        earlier = done.get(pid)
        if earlier is None or "error" in earlier or "error" not in line:
            done[pid] = line
    return done


def coco_results(lines: list[dict]) -> list[dict]:
    """The answers as a COCO results list (what pycocotools' ``loadRes`` reads): per pair,
    ``image_id`` (the pair's id), ``category_id`` 1, ``bbox`` (x, y, w, h pixels), ``score``
    (1.0 for an uncalibrated checkpoint) and, when masks were written, ``segmentation`` (RLE).
    With the existence output: no entry for an answer that says the expression names nothing, and
    one entry per box of ``boxes`` (the mask's parts) for one that names several, each with the
    answer's score (and no segmentation: the mask is the parts' union)."""
    results = []
    for line in lines:
        if "error" in line or line.get("no_target"):
            continue
        score = 1.0 if line["score"] is None else line["score"]
        boxes = line["boxes"] if len(line.get("boxes", ())) > 1 else [line["box_xyxy"]]
        for x0, y0, x1, y1 in boxes:
            entry = {"image_id": line["id"], "category_id": 1, "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                     "score": score}
            if "mask_rle" in line and len(boxes) == 1:
                entry["segmentation"] = line["mask_rle"]
            results.append(entry)
    return results


# ----------------------------------------------------------------------------- the run
def predict_pairs(grounder: Grounder, pairs_path: str | os.PathLike, out: str | os.PathLike, *,
                  model_files: list[str | os.PathLike], image_root: str | os.PathLike | None = None,
                  masks: bool = False, batch_size: int = 32, num_workers: int = 2,
                  coco: str | os.PathLike | None = None, pairs: list[dict] | None = None) -> dict:
    """Ground every pair of ``pairs_path`` (``pairs``: its pairs, when already read with
    :func:`read_pairs`) into the JSONL file ``out`` (see the module's
    docstring); ``model_files`` are the files ``grounder``'s model was loaded from (what the
    answers' ``made_from`` names), ``image_root`` (default: the pairs file's folder) is where image
    paths start. Returns a summary: pairs, already done, done now (over all processes), redone
    (stale lines: the pair changed since), errors (rank 0), seconds, pairs per second."""
    start = time.perf_counter()
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    pairs_path, out = Path(pairs_path), Path(out)
    image_root = Path(image_root) if image_root is not None else pairs_path.parent
    pairs = read_pairs(pairs_path) if pairs is None else pairs
    images = [os.path.join(os.path.abspath(image_root), p["image"]) for p in pairs]
    image_ids = file_ids(dict.fromkeys(images))
    check_outputs({"--out": out, "--coco-results": coco}, {**file_ids([pairs_path, *model_files]), **image_ids})
    settings = settings_digest(grounder, model_files, masks)
    digests = {key(p["id"]): made_from(p, image, image_ids[image], settings) for p, image in zip(pairs, images)}
    lines = written_results(out)
    unknown = {key(line["id"]) for line in lines} - {key(p["id"]) for p in pairs}
    if unknown:
        raise InputError(f"{out} holds results for {len(unknown)} pairs that {pairs_path} does not have (e.g. id "
                         f"{json.loads(min(unknown))!r}): give another --out")
    done = current_results(lines, digests)
    stale = {key(line["id"]) for line in lines} - set(done)
    dist.barrier()  # every process has read what is done before any writes more
    # pairs with a current answer are done; error lines are tried again (the image may be there now)
    todo = [i for i, p in enumerate(pairs) if "error" in done.get(key(p["id"]), {"error": None})]
    units = group(pairs, todo, batch_size)[dist.rank()::dist.world_size()]
    mine = sum(len(u.rows) for u in units)
    written = _run(grounder, pairs, digests, units, image_root,
                   PartWriter(parts_folder(out) / f"rank{dist.rank()}.jsonl"), masks=masks, batch_size=batch_size,
                   num_workers=num_workers, total=mine)
    counts = dist.all_reduce_sum(torch.tensor([float(written)], device=grounder.device)).tolist()
    dist.barrier()  # every part is complete
    summary = {"pairs": len(pairs), "already_done": len(pairs) - len(todo), "done_now": int(counts[0]),
               "redone": len(stale)}
    if dist.is_main():
        lines = _merge(pairs, digests, out)
        if coco is not None:
            atomic_write(coco, lambda p: p.write_text(json_text(coco_results(lines)) + "\n"))
        errors = [line["error"] for line in lines if "error" in line]
        summary["errors"] = {kind: sum(e.startswith(kind) for e in errors) for kind in ERROR_KINDS}
        summary["errors"]["total"] = len(errors)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    summary["pairs_per_s"] = round(summary["done_now"] / summary["seconds"], 2) if summary["seconds"] else None
    dist.barrier()  # the merged file is there before any process returns
    return summary


def _run(grounder: Grounder, pairs: list[dict], digests: dict[str, str], units: list[Unit], image_root: Path,
         writer: PartWriter, *, masks: bool, batch_size: int, num_workers: int, total: int) -> int:
    """Ground this process's units, one part-file write per forward pass; returns the pairs done."""
    dataset = UnitImages(units, image_root, grounder.spec.img_size, grounder.max_pixels)
    loader = DataLoader(dataset, batch_sampler=pack(units, batch_size), collate_fn=list, num_workers=num_workers,
                        pin_memory=grounder.device.type == "cuda", prefetch_factor=4 if num_workers else None)
    bar = progress(None, "grounding", show=dist.is_main(), total=total, unit="pair")
    done = 0
    try:
        for items in loader:
            lines = [{**line, "made_from": digests[key(line["id"])]}
                     for line in _answer(grounder, pairs, [(units[item["unit"]], item) for item in items], masks)]
            writer.write(lines)
            done += len(lines)
            bar.update(len(lines))
    finally:
        writer.close()
        bar.close()
    return done


@torch.inference_mode()
def _answer(grounder: Grounder, pairs: list[dict], batch: list[tuple[Unit, dict]], masks: bool) -> list[dict]:
    """One forward pass over the batch's images and their expressions -> one line per pair, in
    the batch's order (error lines for unreadable or too large images and for texts that are not
    expressions)."""
    lines, images, extents, texts, rows, letterboxes, sizes = [], [], [], [], [], [], []
    for unit, item in batch:
        if "error" in item:
            lines += [{**pairs[i], "error": item["error"]} for i in unit.rows]
            continue
        ok = [i for i in unit.rows if "error" not in pairs[i]]
        lines += [pairs[i] for i in unit.rows if "error" in pairs[i]]
        if ok:
            images.append(item["canvas"])
            extents.append(item["letterbox"].extent)
            letterboxes.append(item["letterbox"])
            sizes.append(item["size"])
            rows.append(ok)
            texts += [pairs[i]["text"] for i in ok]
    if not texts:
        return lines
    counts = torch.tensor([len(r) for r in rows])
    canvases = torch.stack(images).to(grounder.device, non_blocking=True)
    inputs = normalize_canvas(canvases, torch.tensor(extents)).repeat_interleave(counts.to(grounder.device), 0)
    ids, mask, _ = grounder.tokens(texts)
    out = grounder.forward(inputs, ids, mask)
    start = 0
    for image_rows, letterbox, (width, height) in zip(rows, letterboxes, sizes):
        end = start + len(image_rows)
        answers = grounder.answers({k: v[start:end] for k, v in out.items()}, letterbox, texts[start:end],
                                   masks=masks, attention=False)
        lines += [{"id": pairs[i]["id"], "image": pairs[i]["image"], "width": width, "height": height,
                   **prediction_json(p)} for i, p in zip(image_rows, answers)]
        start = end
    return lines


def _merge(pairs: list[dict], digests: dict[str, str], out: Path) -> list[dict]:
    """The current results, from ``out`` and the parts, written to ``out`` in input order
    (atomically); the parts are then removed. Returns the lines."""
    done = current_results(written_results(out), digests)
    missing = [p["id"] for p in pairs if key(p["id"]) not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} pairs have no result after every process finished (e.g. {missing[0]!r})")
    lines = [done[key(p["id"])] for p in pairs]
    atomic_write(out, lambda path: path.write_text("".join(json_text(line) + "\n" for line in lines)))
    shutil.rmtree(parts_folder(out), ignore_errors=True)
    return lines
