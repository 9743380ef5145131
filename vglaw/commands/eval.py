"""``vglaw eval``: REC and RES metrics of a checkpoint on prepared splits, under either protocol
of :mod:`vglaw.engine.metrics`; and the output names that eval and calibrate share. Torch and
the model are imported by the functions that run it, so that ``vglaw --help`` does not wait."""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from ..config import MIN_EXISTS
from ..errors import InputError
from ..fileio import json_text
from .checks import input_checkpoint, input_file, input_folder, output_file
from .options import add_answer_options, add_runtime_options

log = logging.getLogger(__name__)

PROTOCOL_HELP = {  # vglaw.engine.metrics says exactly what each computes
    "original": "box and mask IoU in original image pixels (vglaw's default)",
    "authors": "box and mask IoU on the padded canvas, computed as the authors' MindSpore evaluation does (box hit: "
               "IoU >= 0.5; mask Prec@t: IoU > t; no oIoU)",
}
# expressions that may name no object or several (gRefCOCO): GRES as ReLA's evaluator computes it
# (plain N-acc / T-acc; the ReLA-code variants are in the JSON under "gres") and GREC's precision
GREF_COLUMNS = [("gIoU", "GRES gIoU", "{:.2f}"), ("cIoU", "GRES cIoU", "{:.2f}"), ("N-acc", "N-acc", "{:.2f}"),
                ("T-acc", "T-acc", "{:.2f}")] + [(f"Pr@{t}", f"Pr@{t}", "{:.2f}") for t in (0.7, 0.8, 0.9)] + [
                ("grec_precision", "GREC Prec@(F1=1, IoU>=0.5)", "{:.2f}")]
# how well the calibrated score tells right boxes from wrong ones (a calibrated checkpoint only)
SCORE_COLUMNS = [("auroc", "score AUROC", "{:.4f}"), ("ece", "score ECE", "{:.4f}")] + [
    (f"prec@0.5@{c}%", f"box P@0.5 at {c}%", "{:.4f}") for c in (50, 80, 100)]


def box_mask_columns() -> list[tuple[str, str, str]]:
    """(metric, column title, format) of the box and mask metrics: REC is the box's Prec@0.5; RES
    the mask's IoUs and Prec@t (also as ``COLUMNS``)."""
    from ..engine.metrics import MASK_THRESHOLDS  # imports torch: not at `vglaw --help`

    return [("samples", "expressions", "{:d}"), ("prec@0.5", "box P@0.5", "{:.4f}"), ("mIoU", "mask mIoU", "{:.4f}"),
            ("oIoU", "mask oIoU", "{:.4f}")] + [(f"mask_prec@{t}", f"mask P@{t}", "{:.4f}") for t in MASK_THRESHOLDS]


def __getattr__(name: str):
    """``COLUMNS``: :func:`box_mask_columns`, made when asked for (its thresholds import torch)."""
    if name == "COLUMNS":
        return box_mask_columns()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def format_table(results: dict, columns=None) -> str:
    """The results as a Markdown table, one row per split; ``columns`` default: the box and mask
    metrics (:func:`box_mask_columns`)."""
    columns = columns or box_mask_columns()
    lines = ["| split | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for split, m in results.items():
        m = {**m, "grec_precision": m.get("grec", {}).get("Precision@(F1=1, IoU>=0.5)")}
        cells = [fmt.format(m[key]) if m.get(key) is not None else "-" for key, _, fmt in columns]
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_samples(model, prepared, split: str, *, device, batch_size: int = 16, num_workers: int = 2,
                  precision: str = "fp32", mask_threshold: float | None = None, tokenizer=None,
                  protocol: str = "original", min_exists: float = MIN_EXISTS) -> tuple[dict, dict]:
    """``(metrics, samples)`` of ``model`` on a prepared split under ``protocol`` (see
    :func:`evaluate`); the model's calibrator, when it has one, adds the score's metrics.
    ``tokenizer``: a loaded tokenizer (default: the model's)."""
    import torch

    from ..data import GroundingDataset, load_tokenizer
    from ..engine.loop import eval_loader, evaluate

    if tokenizer is None:
        tokenizer = load_tokenizer(model.spec.tokenizer)
    ds = GroundingDataset(prepared, split, tokenizer=tokenizer, img_size=model.spec.img_size, max_len=model.spec.max_len)
    with torch.inference_mode():
        return evaluate(model, eval_loader(ds, batch_size, num_workers), ds, device=device, precision=precision,
                        mask_threshold=mask_threshold, desc=f"eval {split}", calibrator=model.calibrator,
                        with_samples=True, protocol=protocol, min_exists=min_exists)


def run_eval(checkpoint: str | os.PathLike, prepared: str | os.PathLike, splits: list[str], *,
             mask_threshold: float | None = None, batch_size: int = 16, device: str = "auto", precision: str = "fp32",
             num_workers: int = 2, tokenizer: str | None = None, protocol: str = "original",
             calibration: str | os.PathLike | None = None, with_plot: bool = False, min_exists: float = MIN_EXISTS):
    """Metrics per split under ``protocol`` (with the mask threshold used: by default the
    checkpoint's), and the score's metrics when the model has a calibrator: the checkpoint's, or
    the file ``calibration`` (from ``vglaw calibrate --out``) in its place. With ``with_plot``,
    returns ``(results, plot)``: the score's reliability and coverage picture (a PIL image; None
    without a calibrator). Runs distributed when launched with torchrun (each sample once). A split
    that ``prepared`` does not have is refused before the model loads."""
    from .. import distributed as dist
    from ..data import load_tokenizer
    from ..data.prepare import load_split
    from ..model import VGLAW
    from ..model.confidence import Calibrator

    for split in splits:  # a misspelt split is the one line before any split is evaluated
        load_split(prepared, split)
    calibrator = Calibrator.load(calibration) if calibration is not None else None  # a bad file: before the model
    device = dist.init(device)
    model = VGLAW.from_pretrained(checkpoint, device=device).eval()
    if calibrator is not None:
        model.calibrator = calibrator
    if mask_threshold is None:
        mask_threshold = model.spec.mask_threshold
    tok = load_tokenizer(tokenizer or model.spec.tokenizer)
    results, curves = {}, {}
    for split in splits:
        if model.calibrator is not None and fitted_here(model.calibrator.fitted_on, prepared, split) and dist.is_main():
            log.warning("the calibrator was fitted on %s of %s: its score metrics there are optimistic (evaluate it on "
                        "another split)", split, prepared)
        results[split], samples = split_samples(model, prepared, split, device=device, batch_size=batch_size,
                                                num_workers=num_workers, precision=precision,
                                                mask_threshold=mask_threshold, tokenizer=tok, protocol=protocol,
                                                min_exists=min_exists)
        results[split]["mask_threshold"] = mask_threshold
        if "gres" in results[split] and model.has_existence:
            results[split]["min_exists"] = min_exists
        single = samples["single"]  # the score's metrics: on the single-target expressions
        if model.calibrator is not None and single.any():
            curves[split] = (samples["score"][single].numpy(), (samples["box_iou"][single] >= 0.5).numpy())
        if dist.is_main():
            log.info("%s: %d single-target expressions, box P@0.5 %s", split, results[split]["samples"],
                     results[split]["prec@0.5"])
    if not with_plot:
        return results
    plot = None
    if curves and dist.is_main():
        from ..inference.pictures import confidence_plot

        plot = confidence_plot(curves)
    return results, plot


def fitted_here(fitted_on: dict, prepared, split: str) -> bool:
    """Was a calibrator fitted on this split of this prepared data?"""
    return fitted_on.get("split") == split and Path(fitted_on.get("data", "")).resolve() == Path(prepared).resolve()


# ----------------------------------------------------------------------------- output files
def checkpoint_label(checkpoint: str | os.PathLike) -> str:
    """The checkpoint's folder and name, for default output names: ``runs/refcoco/best`` ->
    ``refcoco_best`` (every run's best model is called ``best``), ``runs/x/checkpoints/last.pt``
    -> ``checkpoints_last``, a Hub id ``user/name`` -> ``user_name``."""
    path = Path(checkpoint)
    path = path.resolve() if path.exists() else path
    return "_".join(part for part in (path.parent.name, path.stem) if part)


def same_checkpoint(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Do two checkpoint names (paths, relative to the current folder, or Hub ids) mean the same one?"""
    where = lambda c: Path(c).resolve() if Path(c).exists() else str(c)  # noqa: E731
    return where(a) == where(b)


def check_default_output(path: Path, checkpoint: str | os.PathLike, recorded, option: str) -> None:
    """Refuse a default output file that already holds another checkpoint's results (``recorded``:
    the checkpoint its content names, from the parsed file; None when unreadable). Changes nothing."""
    if not path.exists():
        return
    try:
        other = recorded(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError, AttributeError):
        other = None
    if other is None or not same_checkpoint(other, checkpoint):
        raise InputError(f"{path} already holds " + (f"the results of checkpoint {other}" if other else
                         "a file this command did not write") + f"; give {option} FILE to write {checkpoint}'s "
                         "elsewhere (nothing was changed)")


def plot_path(path: str | os.PathLike) -> Path:
    """Where the score plot of the results file ``path`` goes: beside it, ``.png``."""
    return Path(path).with_suffix(".png")


def write_results(results: dict, path: str | os.PathLike, plot=None, **info) -> None:
    """The results JSON (``info`` and ``results``) and the score plot beside it (:func:`plot_path`),
    together: both are made in memory, then both files replace the old ones; without a ``plot``
    an old one is removed, so a PNG beside the JSON is always that JSON's."""
    path, png = Path(path), plot_path(path)
    text = json_text({**info, "plot": png.name if plot is not None else None, "results": results}, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temps = {path: path.with_name(f".{path.name}.tmp{os.getpid()}")}
    if plot is not None:
        temps[png] = png.with_name(f".{png.name}.tmp{os.getpid()}")
    try:
        temps[path].write_text(text)
        if plot is not None:
            plot.save(temps[png], format="PNG")
        else:
            png.unlink(missing_ok=True)
        for final, temp in reversed(temps.items()):  # the PNG first: the JSON last names it
            os.replace(temp, final)
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a vglaw checkpoint directory, training .pt or Hub id")
    parser.add_argument("--data", required=True, help="prepared dataset folder")
    parser.add_argument("--splits", nargs="+", default=["val"], help="the splits to evaluate")
    add_answer_options(parser, min_score=False)
    add_runtime_options(parser, batch_size=16, num_workers=2)
    parser.add_argument("--protocol", choices=list(PROTOCOL_HELP), default="original",
                        help="how boxes and masks are scored: " + "; ".join(f"{k}: {v}" for k, v in PROTOCOL_HELP.items()))
    parser.add_argument("--calibration", default=None, metavar="FILE",
                        help="score the answers with this calibrator (from vglaw calibrate) instead of the "
                             "checkpoint's own")
    parser.add_argument("--json", default=None,
                        help="where to write the results (default: eval_<checkpoint folder>_<name>.json in the "
                             "current folder, refused when it holds another checkpoint's); with a calibrator the score "
                             "plots go beside it (.png), and a .png there from an earlier eval is replaced or removed")


def run(args: argparse.Namespace) -> None:
    input_checkpoint(args.checkpoint)
    input_folder("--data", args.data, "a prepared dataset folder")
    input_file("--calibration", args.calibration, "a calibrator file")
    output_file("--json", args.json, "a JSON file")
    out = Path(args.json or f"eval_{checkpoint_label(args.checkpoint)}.json")  # never inside the checkpoint or package
    if args.json is None:
        check_default_output(out, args.checkpoint, lambda d: d["checkpoint"], "--json")
    elif plot_path(out) == out:
        raise InputError(f"--json {out}: the score plot goes beside the results as {out.name}; name the results .json")
    from .. import distributed

    with distributed.group():
        results, plot = run_eval(args.checkpoint, args.data, args.splits, mask_threshold=args.mask_threshold,
                                 batch_size=args.batch_size, device=args.device, precision=args.precision,
                                 num_workers=args.num_workers, protocol=args.protocol, calibration=args.calibration,
                                 with_plot=True, min_exists=args.min_exists)
        if distributed.is_main():
            _report(results, plot, out, args)


def _report(results: dict, plot, out: Path, args: argparse.Namespace) -> None:
    """What ``vglaw eval`` prints and writes (rank 0)."""
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
