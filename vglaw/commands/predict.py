"""``vglaw predict``: the predictor on your image (``--image``, ``--text``) or on every pair of a
file (``--pairs``, resumable, sharded under torchrun). Torch and the model are imported by the
functions that run it, so that ``vglaw --help`` does not wait."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import MAX_PIXELS, MIN_EXISTS
from ..errors import InputError, Interrupted
from ..fileio import json_text
from ..hub import DEMO_CHECKPOINT, checkpoint_or_demo
from .checks import input_checkpoint, input_file, input_folder, output_file
from .options import DEMO_HELP, add_answer_options, add_runtime_options, at_least

if TYPE_CHECKING:
    from ..inference.predictor import Grounder


def load_grounder(checkpoint, onnx, *, device, precision, mask_threshold, min_score, min_exists=MIN_EXISTS,
                  max_pixels=MAX_PIXELS) -> Grounder:
    """The grounder of ``vglaw predict``: onnxruntime on the ``onnx`` file, else PyTorch on
    ``checkpoint`` (default: the bundled demo model, with a warning on stderr)."""
    from ..inference.predictor import Grounder

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
    from PIL import Image

    from ..device import resolve_device
    from ..inference.batch import check_outputs, file_ids
    from ..inference.pictures import attention_tile, colour, draw_predictions, hstack
    from ..inference.postprocess import predictions_json
    from ..inference.predictor import as_rgb

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


# ----------------------------------------------------------------------------- the command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", default=None, help=DEMO_HELP)
    model.add_argument("--onnx", default=None, help="instead of --checkpoint: a model from vglaw export (onnxruntime)")
    parser.add_argument("--image", default=None, help="the image file (JPEG, PNG, ...)")
    parser.add_argument("--text", action="append", default=[], help="an expression (repeat for several)")
    parser.add_argument("--out", default=None, help="picture to write (default: <image name>.vglaw.png here); with "
                                                    "--pairs the JSONL results (default: <pairs name>.vglaw.jsonl here)")
    parser.add_argument("--json", default=None, help="JSON to write (default: beside --out)")
    parser.add_argument("--heatmap", action="store_true",
                        help="also write <out>.heatmap.png: where the box head looks for each expression")
    pairs = parser.add_argument_group("many pairs from a file (resumable; shards over torchrun --nproc_per_node N)")
    pairs.add_argument("--pairs", default=None,
                       help="a JSONL, CSV or parquet file with columns image and text (and optionally id)")
    pairs.add_argument("--image-root", default=None,
                       help="where the pairs' image paths start (default: the pairs file's folder)")
    pairs.add_argument("--masks", action="store_true", help="also write each mask as COCO RLE")
    pairs.add_argument("--coco-results", default=None, help="also write a COCO-style results JSON (bbox, score)")
    add_runtime_options(parser, batch_size=32, num_workers=2, workers_help="image-decoding processes",
                        batch_group=pairs)
    add_answer_options(parser)
    parser.add_argument("--max-pixels", type=at_least(1), default=MAX_PIXELS,
                        help="refuse images with more pixels (width x height), read from the file's header before "
                             "decoding")


def run(args: argparse.Namespace) -> None:
    input_checkpoint(args.checkpoint)
    input_file("--onnx", args.onnx, "an ONNX model file")
    if args.pairs is not None:
        return _run_pairs(args)
    if args.image is None:
        raise InputError("give --image FILE and --text (repeat --text for several), or --pairs FILE")
    input_file("--image", args.image, "an image file")
    if not args.text:
        raise InputError(f"give --text: the expression to ground in {args.image} (repeat --text for several)")
    output_file("--out", args.out, "a picture file")
    output_file("--json", args.json, "a JSON file")
    result = predict(args.checkpoint, args.image, args.text, out=args.out, json_path=args.json,
                     heatmap=args.heatmap, onnx=args.onnx, device=args.device, precision=args.precision,
                     mask_threshold=args.mask_threshold, min_score=args.min_score, max_pixels=args.max_pixels,
                     min_exists=args.min_exists)
    for p in result["predictions"]:
        print(answer_line(p, args))
    print("wrote " + ", ".join(result[k] for k in ("png", "heatmap_png", "json") if k in result))


def answer_line(p: dict, args: argparse.Namespace) -> str:
    """One answer of ``vglaw predict`` as printed: the expression and what was found for it."""
    from ..inference.predictor import printable

    text = f'"{printable(p["text"])}": '
    exists = "" if p.get("exists") is None else f", exists {p['exists']:.2f}"
    score = "" if p["score"] is None else f", score {p['score']:.2f}"
    if p.get("no_target"):
        return f"{text}not found (the expression names nothing in the image{exists}, below --min-exists {args.min_exists})"
    boxes = p.get("boxes", [p["box_xyxy"]])
    where = "; ".join("(" + ", ".join(f"{v:.1f}" for v in b) + ")" for b in boxes) if len(boxes) > 1 else \
        "(" + ", ".join(f"{v:.1f}" for v in p["box_xyxy"]) + ")"
    found = "" if p["found"] else f"  NOT FOUND (score below --min-score {args.min_score})"
    return f"{text}{'boxes' if len(boxes) > 1 else 'box'} {where}, mask {p['mask_area']} px{exists}{score}{found}"


def _run_pairs(args: argparse.Namespace) -> None:
    """``vglaw predict --pairs``."""
    if args.image is not None or args.text or args.json is not None or args.heatmap:
        raise InputError("--pairs reads images and expressions from its file: leave out --image, --text, --json "
                         "and --heatmap")
    input_file("--pairs", args.pairs, "a pairs file")
    input_folder("--image-root", args.image_root, "a folder of images")
    output_file("--out", args.out, "a results file")
    output_file("--coco-results", args.coco_results, "a JSON file")
    from .. import distributed

    with distributed.group():
        s = predict_pairs_file(args.checkpoint, args.pairs, out=args.out, image_root=args.image_root,
                               masks=args.masks, coco_results=args.coco_results, onnx=args.onnx,
                               batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                               precision=args.precision, mask_threshold=args.mask_threshold,
                               min_score=args.min_score, max_pixels=args.max_pixels, min_exists=args.min_exists)
        if distributed.is_main():
            errors = s["errors"]
            kinds = ", ".join(f"{n} {kind}" for kind, n in errors.items() if kind != "total" and n)
            redone = (f" ({s['redone']} of them redone: their image, text, model or settings changed since "
                      "their lines were written)") if s["redone"] else ""
            print(f"{s['pairs']} pairs: {s['done_now']} done now{redone} ({s['pairs_per_s']} pairs/s, "
                  f"{s['seconds']} s), {s['already_done']} already in {s['out']}; "
                  f"{errors['total']} error lines" + (f" ({kinds})" if kinds else ""))
            print("wrote " + ", ".join(s[k] for k in ("out", "coco_results") if k in s))
