"""The ``vglaw`` command line: ``vglaw <command> --help`` for each command."""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from pathlib import Path

from .commands.checks import input_checkpoint, input_file, input_folder, output_file, output_folder
from .config import DATA_FORMATS, MASK_THRESHOLD, MAX_PIXELS, MIN_EXISTS, OWN_FORMATS, PRECISIONS
from .errors import InputError, Interrupted, VglawError
from .fileio import check_output_folder, json_text
from .hub import DEMO_CHECKPOINT, DEMO_MARKER, push


def _convert(args: argparse.Namespace) -> None:
    input_file("CHECKPOINT", args.checkpoint, "a MindSpore .ckpt file")
    output_folder("--out", args.out)
    from .weights.mindspore import convert_mindspore_checkpoint

    report = convert_mindspore_checkpoint(args.checkpoint, args.out)
    print(report)
    print(f"wrote {args.out}/config.json and {args.out}/model.safetensors")


def _synth(args: argparse.Namespace) -> None:
    output_folder("--out", args.out)
    from .data.synth import generate

    sizes = {"train": args.train, "val": args.val, "testA": args.testA, "testB": args.testB}
    folder = generate(args.out, name=args.name, seed=args.seed, split_sizes=sizes, min_size=args.min_size,
                      max_size=args.max_size, no_target=args.no_target, multi_target=args.multi_target,
                      empty_images=args.empty_images)
    refs = "grefs(unc).json" if args.no_target or args.multi_target else "refs(unc).p"
    print(f"wrote {folder}/{refs}, {folder}/instances.json and images in {args.out}/images")


def _prepare(args: argparse.Namespace) -> None:
    if args.format == "seqtr" and not os.path.isdir(args.data_root):  # seqtr: the instances.json or its folder
        input_file("--data-root", args.data_root, "an instances.json file")
    elif args.format in OWN_FORMATS:
        input_file("--data-root", args.data_root, "a JSONL, CSV or parquet file of your annotations")
    else:
        input_folder("--data-root", args.data_root, f"a {args.format} dataset folder")
    input_folder("--images", args.images, "a folder of images")
    output_folder("--out", args.out)
    if args.exif is not None and args.format not in OWN_FORMATS:
        raise InputError(f"--exif is for your own annotations (--format jsonl, csv, parquet or own); {args.format} "
                         "files say nothing of EXIF frames")
    if args.dataset is None and args.format not in OWN_FORMATS:
        raise InputError(f"--dataset is required for the {args.format} format (refcoco, refcoco+, ...)")
    from .data.prepare import prepare

    meta = prepare(fmt=args.format, data_root=args.data_root, dataset=args.dataset or Path(args.data_root).stem,
                   image_root=args.images, out=args.out, split_by=args.split_by, skip_bad=args.skip_bad,
                   exif=args.exif)
    print(f"wrote {args.out}: " + ", ".join(f"{split} {n}" for split, n in meta["splits"].items()))
    for split, counts in meta.get("targets", {}).items():
        print(f"  {split}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    for split, check in meta.get("split_check", {}).items():
        print(f"  {split}: {check['refs']} refs (REFER: {check['refer_refs'] or 'unknown'})"
              + (f"; {check['note']}" if "note" in check else ""))


def _leakage(args: argparse.Namespace) -> None:
    for folder in args.data:
        input_folder("--data", folder, "a dataset folder")
    input_file("--coco", args.coco, "a COCO annotation file")
    output_file("--write-clean", args.write_clean, "a COCO annotation file")
    output_file("--json", args.json, "a JSON file")
    from .data.leakage import format_leakage, leakage

    result = leakage(args.data, args.coco, write_clean_to=args.write_clean)
    print(format_leakage(result))
    if args.json:
        Path(args.json).write_text(json_text(result, indent=2) + "\n")
        print(f"wrote {args.json}")


def _train(args: argparse.Namespace) -> None:
    from .config import load_config

    cfg = load_config(args.config, args.overrides)  # a bad value is one line before torch is imported
    from .engine.train import checkpoint_paths, train

    try:
        train(cfg, resume=args.resume)
    except KeyboardInterrupt:
        last, _ = checkpoint_paths(Path(cfg.run.out))
        kept = f"{last} holds the last saved step" if last.is_file() else "no checkpoint was saved yet"
        raise Interrupted(f"{kept}; continue with the same command and --resume") from None
    finally:
        from . import distributed

        distributed.shutdown()


def _eval(args: argparse.Namespace) -> None:
    input_checkpoint(args.checkpoint)
    input_folder("--data", args.data, "a prepared dataset folder")
    input_file("--calibration", args.calibration, "a calibrator file")
    output_file("--json", args.json, "a JSON file")
    from . import distributed
    from .commands.eval import (GREF_COLUMNS, SCORE_COLUMNS, check_default_output, checkpoint_label, format_table, plot_path,
                                run_eval, write_results)

    out = Path(args.json or f"eval_{checkpoint_label(args.checkpoint)}.json")  # never inside the checkpoint or package
    if args.json is None:
        check_default_output(out, args.checkpoint, lambda d: d["checkpoint"], "--json")
    elif plot_path(out) == out:
        raise InputError(f"--json {out}: the score plot goes beside the results as {out.name}; name the results .json")
    results, plot = run_eval(args.checkpoint, args.data, args.splits, mask_threshold=args.mask_threshold,
                             batch_size=args.batch_size, device=args.device, precision=args.precision,
                             num_workers=args.num_workers, protocol=args.protocol, calibration=args.calibration,
                             with_plot=True, min_exists=args.min_exists)
    if distributed.is_main():
        print(f"protocol {args.protocol}: {PROTOCOL_HELP[args.protocol]}")
        print(format_table(results))
        if any("gres" in m for m in results.values()):
            print("no-target and multi-target expressions (GRES in original pixels, N-acc/T-acc plain; see the JSON's "
                  "gres/grec for ReLA's code's variants and the counts):")
            print(format_table(results, GREF_COLUMNS))
        if any("auroc" in m for m in results.values()):
            print(format_table(results, SCORE_COLUMNS))
        else:
            print("(the checkpoint has no confidence calibrator: no score metrics; fit one with vglaw calibrate and "
                  "give it with --calibration FILE)")
        write_results(results, out, plot, checkpoint=str(args.checkpoint), data=str(args.data), protocol=args.protocol,
                      calibration=args.calibration)
        print("wrote " + ", ".join(map(str, [out] + ([plot_path(out)] if plot is not None else []))))
    distributed.shutdown()


def _predict(args: argparse.Namespace) -> None:
    input_checkpoint(args.checkpoint)
    input_file("--onnx", args.onnx, "an ONNX model file")
    if args.pairs is not None:
        return _predict_pairs(args)
    if args.image is None:
        raise InputError("give --image FILE and --text (repeat --text for several), or --pairs FILE")
    input_file("--image", args.image, "an image file")
    if not args.text:
        raise InputError(f"give --text: the expression to ground in {args.image} (repeat --text for several)")
    output_file("--out", args.out, "a picture file")
    output_file("--json", args.json, "a JSON file")
    from .commands.predict import predict

    result = predict(args.checkpoint, args.image, args.text, out=args.out, json_path=args.json,
                     heatmap=args.heatmap, onnx=args.onnx, device=args.device, precision=args.precision,
                     mask_threshold=args.mask_threshold, min_score=args.min_score, max_pixels=args.max_pixels,
                     min_exists=args.min_exists)
    for p in result["predictions"]:
        print(answer_line(p, args))
    print("wrote " + ", ".join(result[k] for k in ("png", "heatmap_png", "json") if k in result))


def answer_line(p: dict, args: argparse.Namespace) -> str:
    """One answer of ``vglaw predict`` as printed: the expression and what was found for it."""
    from .inference.predictor import printable

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


def _predict_pairs(args: argparse.Namespace) -> None:
    if args.image is not None or args.text or args.json is not None or args.heatmap:
        raise InputError("--pairs reads images and expressions from its file: leave out --image, --text, --json "
                         "and --heatmap")
    input_file("--pairs", args.pairs, "a pairs file")
    input_folder("--image-root", args.image_root, "a folder of images")
    output_file("--out", args.out, "a results file")
    output_file("--coco-results", args.coco_results, "a JSON file")
    from . import distributed
    from .commands.predict import predict_pairs_file

    try:
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
    finally:
        distributed.shutdown()


def _push(args: argparse.Namespace) -> None:
    print(f"uploaded {args.checkpoint} to {push(args.checkpoint, args.repo_id, private=args.private)}")


def _export(args: argparse.Namespace) -> None:
    input_checkpoint(args.checkpoint)
    output_file("--out", args.out, "an .onnx file")
    from .inference.export import check_onnx, export_onnx

    checkpoint = args.checkpoint or DEMO_CHECKPOINT
    out = export_onnx(checkpoint, args.out, opset=args.opset)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    if args.check:
        print(check_onnx(checkpoint, out))


def _serve(args: argparse.Namespace) -> None:
    from .inference.serve import serve

    serve(args.checkpoint, host=args.host, port=args.port, device=args.device, precision=args.precision,
          min_score=args.min_score, allow_origins=args.allow_origin, min_exists=args.min_exists)


def _calibrate(args: argparse.Namespace) -> None:
    input_checkpoint(args.checkpoint)
    input_folder("--data", args.data, "a prepared dataset folder")
    output_file("--out", args.out, "a calibrator file")
    from . import distributed
    from .commands.calibrate import calibrate
    from .commands.eval import check_default_output, checkpoint_label

    out = None if args.replace else Path(args.out or f"calibration_{checkpoint_label(args.checkpoint)}.json")
    if out is not None and args.out is None:
        check_default_output(out, args.checkpoint, lambda d: d["fitted_on"]["checkpoint"], "--out")
    calibrator, path = calibrate(args.checkpoint, args.data, args.split, out=out, batch_size=args.batch_size,
                                 num_workers=args.num_workers, device=args.device, precision=args.precision)
    if distributed.is_main():
        m = calibrator.metrics
        print(f"fitted on {calibrator.fitted_on['samples']} expressions of {args.data} ({args.split}): score AUROC "
              f"{m['auroc']:.4f}, ECE {m['ece']:.4f}; box P@0.5 {m['prec@0.5@100%']:.4f} on every answer, "
              f"{m['prec@0.5@80%']:.4f} on the 80% most confident (measured on the fitting split itself: "
              "vglaw eval on another split tells how it holds)")
        print(f"wrote {path}")
        if out is not None:
            print(f"the checkpoint's own calibrator is unchanged: measure this one with vglaw eval --calibration "
                  f"{path} on another split; to use it, rerun with --replace or copy it to calibration.json beside "
                  "the checkpoint's weights")
    distributed.shutdown()


def _visualize(args: argparse.Namespace) -> None:
    input_checkpoint(args.checkpoint)
    input_folder("--data", args.data, "a prepared dataset folder")
    output_folder("--out", args.out)
    from .commands.predict import visualize

    for entry in visualize(args.checkpoint, args.data, args.split, args.index, args.out, law=args.law,
                           device=args.device, mask_threshold=args.mask_threshold):
        ious = "  ".join(f"{k} {v:.3f}" for k, v in entry.items() if k.endswith("iou"))
        print(f"{entry['index']}: \"{entry['text']}\"  {ious}  -> {entry['png']}")


def _demo(args: argparse.Namespace) -> None:
    input_checkpoint(args.checkpoint)
    if args.train or args.calibrate:
        output_folder("--work", args.work)
    else:
        check_output_folder(Path(args.out), DEMO_MARKER, "vglaw demo")  # at once, before the heavy imports
    from .commands.demo import calibrate_demo_checkpoint, run_demo, train_demo_checkpoint

    if args.train:
        print(f"wrote {train_demo_checkpoint(args.work, overrides=args.overrides)}")
        return
    if args.calibrate:
        calibrate_demo_checkpoint(Path(args.work) / "calibration")
        return
    run_demo(args.out, checkpoint=args.checkpoint, images=args.images, seed=args.seed)


DEVICE_HELP = "auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N"
PRECISION_HELP = "arithmetic of the forward pass (bf16 pays off on GPUs and CPUs with AVX-512 BF16)"
MASK_HELP = (f"a mask pixel is the object where its probability is above this (default: the checkpoint's, "
             f"{MASK_THRESHOLD} unless it says otherwise)")
MIN_EXISTS_HELP = (f"a checkpoint with the existence output answers \"not found\" where the probability that the "
                   f"expression names something in the image is below this (default {MIN_EXISTS})")
MIN_SCORE_HELP = ("mark answers whose score (the calibrated probability that the box is right) is below this "
                  "as not found, instead of drawing them (needs a calibrated checkpoint)")
DEMO_HELP = "a vglaw checkpoint directory, training .pt or Hub id (default: the bundled demo model)"
PROTOCOL_HELP = {  # vglaw.engine.metrics says exactly what each computes
    "original": "box and mask IoU in original image pixels (vglaw's default)",
    "authors": "box and mask IoU on the padded canvas, computed as the authors' MindSpore evaluation does (box hit: "
               "IoU >= 0.5; mask Prec@t: IoU > t; no oIoU)",
}


def _at_least(minimum: int):
    """An option's type: an integer of at least ``minimum`` (argparse names the option otherwise)."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return integer


def _probability(text: str) -> float:
    """An option's type: a number in [0, 1] (NaN is not one)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability in [0, 1], got {text}")
    return value


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, where it has one worth showing."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_data_commands(commands) -> None:
    """synth, prepare, leakage"""
    p = commands.add_parser("synth", help="generate a synthetic referring dataset in the REFER layout")
    p.add_argument("--out", required=True, help="output folder (gets <name>/ and images/)")
    p.add_argument("--name", default="synthref", help="dataset name")
    p.add_argument("--seed", type=int, default=0, help="random seed of the images and expressions")
    for split, n in (("train", 800), ("val", 100), ("testA", 100), ("testB", 100)):
        p.add_argument(f"--{split}", type=int, default=n, help=f"images in {split}")
    p.add_argument("--min-size", type=int, default=176, help="smallest image side in pixels")
    p.add_argument("--max-size", type=int, default=224, help="largest image side in pixels")
    p.add_argument("--no-target", type=float, default=0.0,
                   help="share of the refs naming nothing in the image (with --multi-target: gRefCOCO's layout, "
                        "<out>/grefcoco/grefs(unc).json + instances.json)")
    p.add_argument("--multi-target", type=float, default=0.0,
                   help="share of the refs naming every shape that fits a description (\"all the red shapes\")")
    p.add_argument("--empty-images", type=float, default=0.0,
                   help="share of the images with no shape at all, every expression on them naming nothing "
                        "(with --no-target or --multi-target)")
    p.set_defaults(run=_synth)

    p = commands.add_parser("prepare", help="check a dataset and write vglaw's prepared form")
    p.add_argument("--format", choices=DATA_FORMATS, default="refer",
                   help="the annotation format of --data-root (jsonl, csv, parquet: your own file, one record per "
                        "expression: image, text, box_xyxy or boxes, optional mask_rle or polygon, no_target, split, "
                        "id; own: the same, the table's kind from the file's suffix)")
    p.add_argument("--data-root", required=True,
                   help="refer: folder with <dataset>/refs(<splitBy>).p; grefcoco: folder with "
                        "<dataset>/grefs(<splitBy>).json (or .p) and instances.json; transvg: folder with "
                        "<dataset>/<dataset>_<split>.pth; seqtr: the instances.json file or the folder with "
                        "<dataset>/instances.json; hf-parquet: the Hub dataset folder (its .parquet files); "
                        "jsonl/csv/parquet/own: the annotation file")
    p.add_argument("--dataset", default=None,
                   help="refcoco, refcoco+, refcocog, refclef, grefcoco, synthref, ... (your own file: default its name)")
    p.add_argument("--exif", choices=["displayed", "stored"], default=None,
                   help="own: the frame of the boxes and masks of images with an EXIF orientation tag other "
                        "than 1: displayed (as viewers show them) or stored (the pixels as stored); needed "
                        "when there are such images")
    p.add_argument("--split-by", default="unc", help="REFER splitBy: unc, google, umd, berkeley")
    p.add_argument("--images", default=None,
                   help="folder of the image files (not needed for parquet files that embed them)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--skip-bad", action="store_true", help="drop bad records (listed in dropped.json)")
    p.set_defaults(run=_prepare)

    p = commands.add_parser("leakage", help="how many images of each split a COCO annotation file contains")
    p.add_argument("--data", nargs="+", required=True,
                   help="prepared dataset folders and/or REFER dataset folders (<root>/refcoco, ...)")
    p.add_argument("--coco", required=True, help="a COCO annotation file, e.g. instances_train2017.json")
    p.add_argument("--write-clean", default=None, metavar="OUT.json",
                   help="write the COCO file without the images of any val/test split (for pretraining)")
    p.add_argument("--json", default=None, help="also write the report as JSON")
    p.set_defaults(run=_leakage)


def _add_weights_commands(commands) -> None:
    """convert, export, push"""
    p = commands.add_parser("convert", help="convert another implementation's checkpoint to vglaw's format")
    p.add_argument("--from", dest="source", choices=["mindspore"], required=True,
                   help="format of CHECKPOINT (the authors' MindSpore .ckpt)")
    p.add_argument("checkpoint", help="the checkpoint file")
    p.add_argument("--out", required=True, help="output vglaw checkpoint directory")
    p.set_defaults(run=_convert)

    p = commands.add_parser("export", help="the whole model as one ONNX graph (needs the export extra)")
    p.add_argument("--checkpoint", default=None, help=DEMO_HELP)
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the parity check (by default onnxruntime is checked against PyTorch on one random input)")
    p.set_defaults(run=_export)

    p = commands.add_parser("push", help="upload a checkpoint directory to a Hugging Face Hub model repo")
    p.add_argument("--checkpoint", required=True, help="a vglaw checkpoint directory (config, weights, README.md)")
    p.add_argument("--repo-id", required=True, help="USER/NAME (created when missing; needs `hf auth login`)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.set_defaults(run=_push)


def _add_training_commands(commands) -> None:
    """train, eval"""
    p = commands.add_parser("train", help="train a model (also under torchrun --nproc_per_node N -m vglaw train)")
    p.add_argument("--config", required=True, help="YAML config (a diff over the defaults, see configs/)")
    p.add_argument("--resume", action="store_true", help="continue the run in run.out from checkpoints/last.pt")
    p.add_argument("overrides", nargs="*",
                   help="config overrides key=value, e.g. optim.lr=2e-4 run.epochs=5 run.device=cuda")
    p.set_defaults(run=_train)

    p = commands.add_parser("eval", help="REC/RES metrics of a checkpoint on prepared splits")
    p.add_argument("--checkpoint", required=True, help="a vglaw checkpoint directory, training .pt or Hub id")
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--splits", nargs="+", default=["val"], help="the splits to evaluate")
    p.add_argument("--mask-threshold", type=_probability, default=None, help=MASK_HELP)
    p.add_argument("--min-exists", type=_probability, default=MIN_EXISTS, help=MIN_EXISTS_HELP)
    p.add_argument("--batch-size", type=_at_least(1), default=16, help="expressions per forward pass")
    p.add_argument("--num-workers", type=_at_least(0), default=2, help="data loader processes")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    p.add_argument("--protocol", choices=list(PROTOCOL_HELP), default="original",
                   help="how boxes and masks are scored: " + "; ".join(f"{k}: {v}" for k, v in PROTOCOL_HELP.items()))
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="score the answers with this calibrator (from vglaw calibrate) instead of the checkpoint's own")
    p.add_argument("--json", default=None,
                   help="where to write the results (default: eval_<checkpoint folder>_<name>.json in the current "
                        "folder, refused when it holds another checkpoint's); with a calibrator the score plots go "
                        "beside it (.png), and a .png there from an earlier eval is replaced or removed")
    p.set_defaults(run=_eval)

    p = commands.add_parser("calibrate", help="fit a checkpoint's confidence calibrator (answers' scores) on a split")
    p.add_argument("--checkpoint", required=True, help="a vglaw checkpoint directory or training .pt")
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--split", default="val", help="the labelled split to fit on (not one you report results on)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", default=None,
                       help="the calibrator file to write (default: calibration_<checkpoint folder>_<name>.json in the "
                            "current folder); use it with vglaw eval --calibration FILE")
    where.add_argument("--replace", action="store_true",
                       help="write it in place of the checkpoint's own calibrator (calibration.json beside its "
                            "weights, what predict, serve and eval read)")
    p.add_argument("--batch-size", type=_at_least(1), default=16, help="expressions per forward pass")
    p.add_argument("--num-workers", type=_at_least(0), default=2, help="data loader processes")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    p.set_defaults(run=_calibrate)


def _add_inference_commands(commands) -> None:
    """predict, serve, visualize, demo"""
    p = commands.add_parser("predict", help="ground expressions in your own image, or the pairs of a file")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", default=None, help=DEMO_HELP)
    model.add_argument("--onnx", default=None, help="instead of --checkpoint: a model from vglaw export (onnxruntime)")
    p.add_argument("--image", default=None, help="the image file (JPEG, PNG, ...)")
    p.add_argument("--text", action="append", default=[], help="an expression (repeat for several)")
    p.add_argument("--out", default=None, help="picture to write (default: <image name>.vglaw.png here); with "
                                               "--pairs the JSONL results (default: <pairs name>.vglaw.jsonl here)")
    p.add_argument("--json", default=None, help="JSON to write (default: beside --out)")
    p.add_argument("--heatmap", action="store_true",
                   help="also write <out>.heatmap.png: where the box head looks for each expression")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    p.add_argument("--mask-threshold", type=_probability, default=None, help=MASK_HELP)
    p.add_argument("--min-score", type=_probability, default=None, help=MIN_SCORE_HELP)
    p.add_argument("--min-exists", type=_probability, default=MIN_EXISTS, help=MIN_EXISTS_HELP)
    p.add_argument("--max-pixels", type=_at_least(1), default=MAX_PIXELS,
                   help="refuse images with more pixels (width x height), read from the file's header before decoding")
    pairs = p.add_argument_group("many pairs from a file (resumable; shards over torchrun --nproc_per_node N)")
    pairs.add_argument("--pairs", default=None,
                       help="a JSONL, CSV or parquet file with columns image and text (and optionally id)")
    pairs.add_argument("--image-root", default=None,
                       help="where the pairs' image paths start (default: the pairs file's folder)")
    pairs.add_argument("--masks", action="store_true", help="also write each mask as COCO RLE")
    pairs.add_argument("--coco-results", default=None, help="also write a COCO-style results JSON (bbox, score)")
    pairs.add_argument("--batch-size", type=_at_least(1), default=32, help="expressions per forward pass")
    pairs.add_argument("--num-workers", type=_at_least(0), default=2, help="image-decoding processes")
    p.set_defaults(run=_predict)

    p = commands.add_parser("serve", help="a web page and HTTP API for grounding (needs the demo extra)")
    p.add_argument("--checkpoint", default=None, help=DEMO_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    p.add_argument("--min-score", type=_probability, default=None, help=MIN_SCORE_HELP)
    p.add_argument("--min-exists", type=_probability, default=MIN_EXISTS, help=MIN_EXISTS_HELP)
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="also accept API calls and uploads from web pages on this origin (e.g. https://app.example.com; "
                        "repeatable); requests from other pages' origins are refused")
    p.set_defaults(run=_serve)

    p = commands.add_parser("visualize", help="ground truth vs prediction panels for dataset samples")
    p.add_argument("--checkpoint", default=None, help=DEMO_HELP)
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--split", default="val", help="the split the indexes refer to")
    p.add_argument("--index", type=int, nargs="+", required=True, help="sample indexes in the split")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--law", action="store_true", help="also show LAW on/off feature maps for each image")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--mask-threshold", type=_probability, default=None, help=MASK_HELP)
    p.set_defaults(run=_visualize)

    p = commands.add_parser("demo", help="run the bundled demo model on a fresh synthetic set")
    p.add_argument("--out", default="vglaw-demo",
                   help="output folder: new or empty, or a previous demo's (only its own files are replaced)")
    p.add_argument("--checkpoint", default=None, help="another checkpoint to demo")
    p.add_argument("--images", type=_at_least(1), default=100, help="images in the fresh set")
    p.add_argument("--seed", type=int, default=20261127, help="seed of the fresh set (the model was trained on 0)")
    p.add_argument("--train", action="store_true", help="retrain the bundled checkpoint instead (from a repo checkout)")
    p.add_argument("--calibrate", action="store_true",
                   help="refit the bundled checkpoint's confidence calibrator instead (seed 11, 300 images)")
    p.add_argument("--work", default="data/demo-train", help="with --train or --calibrate: where data and run go")
    p.add_argument("overrides", nargs="*", help="with --train: config overrides key=value")
    p.set_defaults(run=_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vglaw", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_weights_commands, _add_data_commands, _add_training_commands, _add_inference_commands):
        add(commands)
    for sub in commands.choices.values():
        sub.formatter_class = _Help
    return parser


def _check_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Name the first option in ``argv`` that its command does not have (with a suggestion), as
    that command's usage error. argparse would first complain that a required option is missing
    (``predict --txt x``: "required: --text") and never name the misspelled one."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    position = next((i for i, arg in enumerate(argv) if arg in commands.choices), None)
    if position is None:
        return
    command = commands.choices[argv[position]]
    known = [o for a in command._actions for o in a.option_strings]
    for arg in argv[position + 1:]:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if not name.startswith("--") or name in known:
            continue
        if any(o.startswith(name) for o in known):  # an abbreviation: argparse takes it or names the ambiguity
            continue
        close = difflib.get_close_matches(name, known, n=1)
        command.error(f"unrecognized option {name}" + (f" (did you mean {close[0]}?)" if close else ""))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # other libraries: warnings only
    logging.getLogger("vglaw").setLevel(logging.INFO)  # vglaw's own progress lines
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    _check_options(parser, argv)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except VglawError as e:
        # what the user can fix (a file, config, checkpoint, image, a missing extra): one line;
        # anything else is a bug and keeps its traceback
        if os.environ.get("VGLAW_DEBUG"):
            raise
        print(f"vglaw {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: one line (with what was kept, where the command knows), no traceback
        if os.environ.get("VGLAW_DEBUG"):
            raise
        print(f"vglaw {args.command}: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
