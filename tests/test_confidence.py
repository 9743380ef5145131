"""Confidence: the features against a hand-written reference, the calibrator's file, the score
everywhere an answer goes, ``--min-score``, and the metrics that judge the score."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from vglaw.cli import main
from vglaw.data.transforms import image_region
from vglaw.engine.calibrate import fit_calibrator
from vglaw.engine.metrics import confidence_metrics
from vglaw.errors import InputError
from vglaw.hub import DEMO_CHECKPOINT
from vglaw.inference.pictures import colour
from vglaw.inference.predictor import Grounder
from vglaw.model import VGLAW, build_model
from vglaw.model.confidence import CALIBRATION_NAME, FEATURES, Calibrator, confidence_features

IMAGE = DEMO_CHECKPOINT.parents[1] / "assets" / "examples" / "shapes_0.jpg"


def reference_features(box_cxcywh, logits, attention, extent) -> dict:
    """Each feature written out pixel by pixel for one answer (S x S canvas)."""
    S = logits.shape[0]
    dx, dy, w, h = extent
    cx, cy, bw, bh = (v * S for v in box_cxcywh)
    x0, y0, x1, y1 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
    prob = 1 / (1 + np.exp(-logits.astype(np.float64)))
    fg, inbox, image = [], [], []
    for y in range(S):
        for x in range(S):
            if not (dx <= x < dx + w and dy <= y < dy + h):
                continue
            image.append((y, x))
            if prob[y, x] > 0.5:
                fg.append((y, x))
            if x0 <= x + 0.5 <= x1 and y0 <= y + 0.5 <= y1:
                inbox.append((y, x))
    mx0, my0 = min(x for _, x in fg), min(y for y, _ in fg)
    mx1, my1 = max(x for _, x in fg) + 1, max(y for y, _ in fg) + 1
    ix = max(0, min(x1, mx1) - max(x0, mx0)) * max(0, min(y1, my1) - max(y0, my0))
    union = (x1 - x0) * (y1 - y0) + (mx1 - mx0) * (my1 - my0) - ix
    a = attention.astype(np.float64).ravel()
    return {
        "box_mask_iou": ix / union,
        "mask_confidence": np.mean([prob[p] for p in fg]),
        "box_probability": np.mean([prob[p] for p in inbox]),
        "mass_in_box": sum(prob[p] for p in inbox) / sum(prob[p] for p in image),
        "mask_peak": max(prob[p] for p in image),
        "mask_logit_peak": max(logits[p] for p in image),
        "mask_logit_mean": np.mean([logits[p] for p in fg]),
        "attention_entropy": -sum(v * math.log(v) for v in a) / math.log(a.size),
        "attention_peak": a.max(),
    }


def test_features_equal_a_pixel_by_pixel_reference():
    g = torch.Generator().manual_seed(0)
    S = 24
    logits = torch.randn(2, 1, S, S, generator=g) * 3
    logits[:, :, 6:14, 8:18] += 6  # an object, partly in the padding of the second image
    logits[1, 0, :, 20:] = 9.0  # high logits in the padding must not count
    attention = torch.rand(2, 3, 3, generator=g).flatten(1).softmax(1).view(2, 3, 3)
    boxes = torch.tensor([[0.5, 0.4, 0.4, 0.3], [0.45, 0.45, 0.3, 0.5]])
    extents = torch.tensor([[0, 0, 24, 24], [0, 3, 20, 18]])
    got = confidence_features(boxes, logits, attention, image_region(extents, S))
    assert list(got) == list(FEATURES)
    for b in range(2):
        want = reference_features(boxes[b].tolist(), logits[b, 0].numpy(), attention[b].numpy(), extents[b].tolist())
        for name in FEATURES:
            assert got[name][b].item() == pytest.approx(want[name], rel=1e-4, abs=1e-5), (b, name)


def empty_answer() -> dict:
    """The features of an answer whose mask is empty (every logit -5), attention spread evenly,
    from a model whose existence output is sure that something is there (logit +3)."""
    return confidence_features(torch.tensor([[0.5, 0.5, 0.2, 0.2]]), torch.full((1, 1, 8, 8), -5.0),
                               torch.full((1, 10, 10), 0.01), image_region(torch.tensor([[0, 0, 8, 8]]), 8),
                               torch.tensor([3.0]))


def test_an_empty_mask_gives_zeros_not_nans():
    got = empty_answer()
    assert got["box_mask_iou"].item() == got["mask_confidence"].item() == got["mask_logit_mean"].item() == 0.0
    assert got["exists_logit"].item() == 3.0
    assert all(torch.isfinite(v).all() for v in got.values())
    assert got["attention_entropy"].item() == pytest.approx(1.0)  # uniform over 100 tokens
    # and scores low: mask_peak is sigmoid(-5) = 0.007 here, fitted on 0.98 to 1.0 with scale 0.001
    # and weight -0.016; unclipped, it alone added +14 to the logit (a score of 1.00)
    assert Calibrator.load(DEMO_CHECKPOINT / CALIBRATION_NAME)(got).item() < 0.5


def random_features(n: int = 400, seed: int = 0) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = {name: torch.rand(n, generator=g) for name in FEATURES}
    iou = (feats["mask_confidence"] + 0.3 * torch.randn(n, generator=g)).clamp(0, 1)  # one feature informs
    return feats, iou


def test_the_calibrator_round_trips_through_its_file_and_a_checkpoint(tmp_path):
    feats, iou = random_features()
    calibrator = fit_calibrator(feats, iou, fitted_on={"data": "random", "split": "val"})
    calibrator.save(tmp_path / "c.json")
    loaded = Calibrator.load(tmp_path / "c.json")
    assert loaded == calibrator
    assert torch.equal(loaded(feats), calibrator(feats))
    saved = json.loads((tmp_path / "c.json").read_text())
    assert [row["name"] for row in saved["features"]] == list(FEATURES)
    assert saved["fitted_on"] == {"data": "random", "split": "val", "samples": 400}
    assert saved["metrics"]["auroc"] > 0.7
    model = build_model("tiny", img_size=32, pretrain_img_size=32, window_size=2, depth=2, global_blocks=(1,))
    model.calibrator = calibrator
    model.save_pretrained(tmp_path / "ck")
    assert (tmp_path / "ck" / CALIBRATION_NAME).is_file()
    assert VGLAW.from_pretrained(tmp_path / "ck").calibrator == calibrator


def test_the_score_is_a_probability_even_for_extreme_features():
    calibrator = Calibrator.load(DEMO_CHECKPOINT / CALIBRATION_NAME)
    extreme = {name: torch.tensor([-1e6, -1.0, 0.0, 1.0, 1e6]) for name in calibrator.features}
    scores = calibrator(extreme)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    preds = Grounder.from_pretrained(DEMO_CHECKPOINT).predict(IMAGE, ["the leftmost shape", "the topmost circle"])
    assert all(isinstance(p.score, float) and 0.0 <= p.score <= 1.0 for p in preds)


def test_a_feature_beyond_its_fitted_range_counts_as_the_end_of_that_range():
    feats, iou = random_features()
    calibrator = fit_calibrator(feats, iou)
    assert calibrator.low == tuple(feats[n].min().item() for n in FEATURES)
    assert calibrator.high == tuple(feats[n].max().item() for n in FEATURES)
    by_hand = lambda x: 1 / (1 + math.exp(-calibrator.intercept - sum(  # noqa: E731
        c * (min(max(x[n], lo), hi) - m) / s for n, m, s, c, lo, hi in zip(
            FEATURES, calibrator.mean, calibrator.scale, calibrator.coef, calibrator.low, calibrator.high))))
    inside = {n: 0.5 for n in FEATURES}
    for far in (-1e6, -3.0, 4.0, 1e6):
        x = dict(inside, mask_confidence=far, mask_peak=-far)
        score = calibrator({n: torch.tensor([v]) for n, v in x.items()}).item()
        assert score == pytest.approx(by_hand(x), rel=1e-6)
        ends = dict(inside, mask_confidence=calibrator.low[1] if far < 0 else calibrator.high[1],
                    mask_peak=calibrator.high[4] if far < 0 else calibrator.low[4])
        assert score == pytest.approx(by_hand(ends), rel=1e-6)
    # the fitting data lie inside their own range: the clip leaves their scores as fitted
    unclipped = dataclasses.replace(calibrator, low=(-math.inf,) * len(FEATURES), high=(math.inf,) * len(FEATURES))
    assert torch.equal(unclipped(feats), calibrator(feats))


def test_a_calibrator_file_without_ranges_clips_at_five_scales_and_says_so(tmp_path, caplog):
    d = Calibrator.load(DEMO_CHECKPOINT / CALIBRATION_NAME).to_dict()
    assert all("low" in row and "high" in row for row in d["features"])  # the bundled one has them
    for row in d["features"]:
        del row["low"], row["high"]
    (tmp_path / "old.json").write_text(json.dumps(d))
    with caplog.at_level("WARNING"):
        old = Calibrator.load(tmp_path / "old.json")
    assert [r.getMessage() for r in caplog.records if "no fitted feature ranges" in r.getMessage()] == [
        f"note: {tmp_path / 'old.json'} has no fitted feature ranges (an older vglaw wrote it), so each feature is "
        "clipped to its mean +- 5 scales; refit it with vglaw calibrate to store them"]
    assert old.low == old.high == () and "low" not in old.to_dict()["features"][0]  # saved as it was read
    low, high = old.ranges()
    assert low == pytest.approx([m - 5 * s for m, s in zip(old.mean, old.scale)])
    assert high == pytest.approx([m + 5 * s for m, s in zip(old.mean, old.scale)])
    assert old(empty_answer()).item() < 0.5
    d["features"][0].update(low=0.0, high=1.0)  # ranges for some features only: not a calibrator
    with pytest.raises(InputError, match="not a vglaw calibrator"):
        Calibrator.from_dict(d)


def blank_images(tmp_path) -> dict:
    """Images with nothing on them: uniform colours of several sizes (none a colour of the demo
    set's shapes), a 16-bit grey PNG, and noise."""
    rng = np.random.default_rng(0)
    Image.fromarray(np.full((90, 130), 30000, np.uint16)).save(tmp_path / "grey16.png")
    images = {f"{c} {h}x{w}": np.full((h, w, 3), c, np.uint8) for c, (h, w) in [
        ((128, 128, 128), (150, 200)), ((255, 255, 255), (300, 120)), ((0, 0, 0), (64, 64)),
        ((140, 90, 170), (100, 100)), ((250, 240, 230), (40, 400))]}
    return {**images, "16-bit grey PNG": tmp_path / "grey16.png",
            "noise": rng.integers(0, 256, (160, 160, 3), dtype=np.uint8),
            "grey noise": np.repeat(rng.integers(0, 256, (120, 90, 1), dtype=np.uint8), 3, 2)}


def test_an_image_with_nothing_on_it_scores_low(tmp_path):
    grounder = Grounder.from_pretrained(DEMO_CHECKPOINT)
    texts = ["the red square", "the leftmost shape", "the big blue circle", "the topmost shape"]
    empty = 0
    for name, image in blank_images(tmp_path).items():
        for p in grounder.predict(image, texts):
            assert p.score < 0.5, (name, p.text, p.score, int(p.mask.sum()))
            empty += int(p.mask.sum()) == 0
    assert empty >= 10  # the case that scored 1.00: an empty mask
    # the command line, as reported: "the red square" on a blank 16-bit PNG with --min-score 0.9
    assert main(["predict", "--image", str(tmp_path / "grey16.png"), "--text", "the red square", "--min-score", "0.9",
                 "--out", str(tmp_path / "p.png")]) == 0
    [answer] = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert answer["mask_area"] == 0 and answer["score"] < 0.5 and answer["found"] is False


def test_features_are_applied_by_name_so_their_order_cannot_be_mixed_up(tmp_path):
    feats, iou = random_features()
    calibrator = fit_calibrator(feats, iou)
    reordered = dict(reversed(list(feats.items())))
    assert torch.equal(calibrator(reordered), calibrator(feats))
    # a file whose rows are shuffled (each name with its own numbers) gives the same scores
    d = calibrator.to_dict()
    d["features"] = d["features"][::-1]
    assert torch.allclose(Calibrator.from_dict(d)(feats), calibrator(feats), atol=1e-6)
    # names swapped while the numbers stay in place: a different calibrator, never the same one
    d = calibrator.to_dict()
    d["features"][0]["name"], d["features"][1]["name"] = d["features"][1]["name"], d["features"][0]["name"]
    assert not torch.allclose(Calibrator.from_dict(d)(feats), calibrator(feats))
    d["features"][0]["name"] = "peak_of_something"
    with pytest.raises(InputError, match="peak_of_something"):
        Calibrator.from_dict(d)
    with pytest.raises(InputError, match="missing"):
        calibrator({k: v for k, v in feats.items() if k != "mask_peak"})


def test_confidence_metrics_by_hand():
    scores = np.array([0.95, 0.9, 0.85, 0.6, 0.55, 0.3, 0.2, 0.05])
    right = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    m = confidence_metrics(scores, right)
    assert m["auroc"] == pytest.approx(roc_auc_score(right, scores))
    # bins [0.9, 1.0]: 0.95, 0.9 all right; [0.8, 0.9): 0.85 wrong; [0.6, 0.7): 0.6 right;
    # [0.5, 0.6): 0.55 wrong; [0.3, 0.4): 0.3 wrong; [0.2, 0.3): 0.2 right; [0.0, 0.1): 0.05 wrong
    ece = (2 * abs(1 - 0.925) + abs(0 - 0.85) + abs(1 - 0.6) + abs(0 - 0.55) + abs(0 - 0.3) + abs(1 - 0.2)
           + abs(0 - 0.05)) / 8
    assert m["ece"] == pytest.approx(ece)
    assert m["prec@0.5@50%"] == pytest.approx(3 / 4)  # the 4 most confident: right, right, wrong, right
    assert m["prec@0.5@80%"] == pytest.approx(4 / 7)  # ceil(6.4) = 7 answers, the last (0.05) left out
    assert m["prec@0.5@100%"] == pytest.approx(4 / 8)


def test_an_uncalibrated_checkpoint_scores_none_and_says_so_once(tmp_path, caplog):
    model = build_model("tiny", img_size=32, pretrain_img_size=32, window_size=2, depth=2, global_blocks=(1,))
    model.save_pretrained(tmp_path / "ck")
    with caplog.at_level("WARNING"):
        grounder = Grounder.from_pretrained(tmp_path / "ck")
        preds = grounder.predict(np.zeros((20, 30, 3), np.uint8), ["a", "b"]) + [grounder.predict(
            np.zeros((20, 30, 3), np.uint8), "c")]
    assert [p.score for p in preds] == [None, None, None] and all(p.found for p in preds)
    assert sum("no confidence calibrator" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(InputError, match="needs a calibrated checkpoint"):
        Grounder.from_pretrained(tmp_path / "ck", min_score=0.5)


def test_min_score_hides_exactly_the_answers_below_it(tmp_path):
    texts = ["the leftmost shape", "the bottommost shape", "the leftmost circle", "the yellow star",
             "the big purple hexagon", "the topmost shape"]
    scores = [p.score for p in Grounder.from_pretrained(DEMO_CHECKPOINT).predict(IMAGE, texts)]
    threshold = float(np.median(scores))
    args = ["predict", "--image", str(IMAGE), "--min-score", str(threshold), "--out", str(tmp_path / "p.png")]
    assert main(args + [a for t in texts for a in ("--text", t)]) == 0
    result = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert [p["score"] for p in result] == pytest.approx(scores, abs=1e-4)
    assert [p["found"] for p in result] == [s >= threshold for s in scores]
    assert 0 < sum(p["found"] for p in result) < len(texts)
    pixels = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    for i, p in enumerate(result):  # an answer is drawn (its box outline, in its colour) only when found
        drawn = (pixels == colour(i)).all(-1).sum()
        assert (drawn > 50) == p["found"], (i, p["text"], drawn)


def test_eval_reports_the_scores_and_draws_them(tmp_path, synth_prepared, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", str(DEMO_CHECKPOINT), "--data", str(synth_prepared), "--splits", "val",
                 "--num-workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "score ECE" in out and "box P@0.5 at 80%" in out
    results = json.loads((tmp_path / "eval_assets_demo.json").read_text())["results"]["val"]
    for key in ("auroc", "ece", "prec@0.5@50%", "prec@0.5@80%", "prec@0.5@100%"):
        assert key in results
    assert results["prec@0.5@100%"] == pytest.approx(results["prec@0.5"])
    picture = Image.open(tmp_path / "eval_assets_demo.png")
    assert picture.width > 400 and picture.height > 250
