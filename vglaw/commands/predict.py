"""``vglaw predict`` and ``vglaw visualize``: the predictor on your images and on dataset samples."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..config import MAX_PIXELS, MIN_EXISTS
from ..errors import InputError, Interrupted
from ..device import resolve_device
from ..fileio import json_text
from ..hub import DEMO_CHECKPOINT, checkpoint_or_demo
from ..inference.pictures import attention_tile, colour, draw_predictions, hstack, law_panel, record_panel
from ..inference.postprocess import predictions_json
from ..inference.predictor import Grounder, as_rgb


def load_grounder(checkpoint, onnx, *, device, precision, mask_threshold, min_score, min_exists=MIN_EXISTS,
                  max_pixels=MAX_PIXELS) -> Grounder:
    """The grounder of ``vglaw predict``: onnxruntime on the ``onnx`` file, else PyTorch on
    ``checkpoint`` (default: the bundled demo model, with a warning on stderr)."""
    if checkpoint is not None and onnx is not None:
        raise InputError("give either --checkpoint or --onnx, not both")
    if onnx is not None:
        return Grounder.from_onnx(onnx, mask_threshold=mask_threshold, min_score=min_score, max_pixels=max_pixels,
                                  min_exists=min_exists)
    return Grounder.from_pretrained(checkpoint_or_demo(checkpoint), device=device, precision=precision,
                                    mask_threshold=mask_threshold, min_score=min_score, max_pixels=max_pixels,
                                    min_exists=min_exists)


def predict(checkpoint, image_path, texts: list[str], *, out=None, json_path=None, heatmap: bool = False,
            onnx=None, device="auto", precision="fp32", mask_threshold=None, min_score=None,
            max_pixels=MAX_PIXELS, min_exists=MIN_EXISTS) -> dict:
    """``vglaw predict``: ground the expressions, write the picture and the JSON (and with
    ``heatmap``, ``<out>.heatmap.png``: where the box head looks for each expression). With
    ``onnx`` (a file from ``vglaw export``) onnxruntime runs the model instead of PyTorch;
    with neither, the bundled demo model (a warning on stderr says what it knows). Answers scoring
    below ``min_score``, or whose expression names nothing in the image (``exists`` below
    ``min_exists``, a model with the existence output), are marked not found. An ``out`` or ``json_path`` that is the image (links
    followed), the two being one file, or an ``out`` PIL cannot write a picture to is refused first."""
    from ..inference.batch import check_outputs, file_ids

    out = Path(out or f"{Path(image_path).stem}.vglaw.png")
    json_path = Path(json_path or out.with_suffix(".json"))
    if Image.registered_extensions().get(out.suffix.lower()) not in Image.SAVE:
        raise InputError(f"--out {out}: not a picture file name (.png, .jpg, ...); the JSON goes to --json")
    if out.resolve() == json_path.resolve():
        raise InputError(f"--json {json_path} is the --out picture: give them different files")
    check_outputs({"--out": out, "--json": json_path}, file_ids([image_path]))  # never write over the image
    device = resolve_device(device)  # a bad device is the one line, before anything loads
    image = as_rgb(image_path, max_pixels)  # a bad or too large image fails before the model loads
    grounder = load_grounder(checkpoint, onnx, device=device, precision=precision, mask_threshold=mask_threshold,
                             min_score=min_score, max_pixels=max_pixels, min_exists=min_exists)
    preds = grounder.predict(image, texts)
    result = predictions_json(str(image_path), image, preds)
    text = json_text(result, indent=2)  # a NaN answer stops here, before any file is written
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_predictions(image, preds).save(out)
    written = {"png": str(out)}
    if heatmap:
        written["heatmap_png"] = str(out.with_suffix(".heatmap.png"))
        hstack([attention_tile(image, p, colour(i)) for i, p in enumerate(preds)]).save(written["heatmap_png"])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(text + "\n")
    return {**written, "json": str(json_path), **result}


def predict_pairs_file(checkpoint, pairs, *, out=None, image_root=None, masks: bool = False, coco_results=None,
                       onnx=None, batch_size: int = 32, num_workers: int = 2, device="auto", precision="fp32",
                       mask_threshold=None, min_score=None, max_pixels=MAX_PIXELS, min_exists=MIN_EXISTS) -> dict:
    """``vglaw predict --pairs``: every (image, expression) pair of a file into ``out`` (JSONL,
    default ``<pairs name>.vglaw.jsonl`` here), resumable, sharded under torchrun (see
    :mod:`vglaw.inference.batch`). Returns the run's summary."""
    from .. import distributed as dist
    from ..inference.batch import check_outputs, file_ids, predict_pairs, read_pairs, written_results
    from ..model.io import checkpoint_files

    out = Path(out or f"{Path(pairs).stem}.vglaw.jsonl")
    model_files = [Path(onnx)] if onnx is not None else checkpoint_files(checkpoint or DEMO_CHECKPOINT)
    # an output that is the pairs file or a model file is refused before the model loads (the
    # images are checked too, once the pairs are read)
    check_outputs({"--out": out, "--coco-results": coco_results}, file_ids([pairs, *model_files]))
    records = read_pairs(pairs)  # a bad pairs file is one line before the model loads
    try:
        grounder = load_grounder(checkpoint, onnx, device=dist.init(device), precision=precision,
                                 mask_threshold=mask_threshold, min_score=min_score, max_pixels=max_pixels,
                                 min_exists=min_exists)
        summary = predict_pairs(grounder, pairs, out, model_files=model_files, image_root=image_root, masks=masks,
                                batch_size=batch_size, num_workers=num_workers, coco=coco_results, pairs=records)
    except KeyboardInterrupt:  # every written line is kept (flushed per forward pass): say so
        raise Interrupted(f"{len(written_results(out))} result lines kept for {out}; rerun the same command to "
                          "continue") from None
    return {**summary, "out": str(out), **({"coco_results": str(coco_results)} if coco_results else {})}


def visualize(checkpoint, prepared, split: str, indexes: list[int], out_dir, *, law: bool = False,
              device="auto", mask_threshold=None) -> list[dict]:
    """``vglaw visualize``: a ground truth vs prediction panel per sample (and with ``law``, a
    LAW on/off panel for each sample's image and its expression beside another one)."""
    from ..data.prepare import load_split

    grounder = Grounder.from_pretrained(checkpoint_or_demo(checkpoint), device=device, mask_threshold=mask_threshold)
    meta, records = load_split(prepared, split)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in indexes:
        if not 0 <= index < len(records):
            raise InputError(f"index {index} is outside split {split!r} (0..{len(records) - 1})")
        record = records[index]
        image = as_rgb(Path(meta["image_root"]) / record["image"])
        panel, ious = record_panel(grounder, image, record)
        path = out_dir / f"{split}_{index:05d}.png"
        panel.save(path)
        entry = {"index": index, "text": record["sentence"], "png": str(path), **ious}
        if law:
            others = [r["sentence"] for r in records if r["image"] == record["image"]
                      and r["sentence"] != record["sentence"]]
            texts = [record["sentence"]] + others[:1]
            law_path = out_dir / f"{split}_{index:05d}_law.png"
            law_panel(grounder, image, texts).save(law_path)
            entry["law_png"] = str(law_path)
        written.append(entry)
    (out_dir / "visualize.json").write_text(json_text(written, indent=2) + "\n")
    return written
