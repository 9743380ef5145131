"""GRES and GREC metrics for no-target and multi-target expressions, against numbers worked out
by hand from the published evaluators' definitions (ReLA's refer_evaluation.py for GRES, the
gRefCOCO mdetr RefExpEvaluator for GREC; plain N-acc / T-acc as InstanceVG's gres_evaluate)."""
import numpy as np
import pytest
import torch

from vglaw.engine.gref_metrics import grec_score, grec_summary, gres_score, gres_summary
from vglaw.errors import InputError


def mask(*pixels, size=(4, 4)):
    """A bool mask with the listed (row, col) pixels set."""
    m = np.zeros(size, bool)
    for r, c in pixels:
        m[r, c] = True
    return m


EMPTY = mask()
SQUARE = mask((0, 0), (0, 1), (1, 0), (1, 1))  # 4 pixels


def test_gres_all_no_target_split():
    scores = [gres_score(EMPTY, EMPTY, True), gres_score(EMPTY, EMPTY, True),
              gres_score(mask((3, 0), (3, 1), (3, 2)), EMPTY, True)]
    out = gres_summary(scores)
    # TP = 2 (IoU 1, nothing added), FN = 1 (IoU 0, U += |pred| = 3)
    assert (out["TP"], out["FN"], out["TN"], out["FP"], out["I"], out["U"]) == (2, 1, 0, 0, 0, 3)
    assert out["gIoU"] == pytest.approx(100 * 2 / 3)  # (1 + 1 + 0) / 3
    assert out["cIoU"] == 0.0  # 0 / 3
    assert out["Pr@0.7"] is out["Pr@0.8"] is out["Pr@0.9"] is None  # over no target sample
    assert out["N-acc"] == pytest.approx(100 * 2 / 3)  # TP / (TP + FN)
    assert out["T-acc"] is None  # TN + FP = 0
    assert out["N-acc (ReLA code)"] == pytest.approx(50.0)  # 2 / (2 + 1 + 1)
    assert out["T-acc (ReLA code)"] == pytest.approx(100 * 2 / 3)  # TP / (TP + FP + 1) = 2 / 3
    # every no-target sample predicted empty: gIoU 100, cIoU 0 / 0 (undefined)
    perfect = gres_summary([gres_score(EMPTY, EMPTY, True)] * 3)
    assert perfect["gIoU"] == 100.0 and perfect["cIoU"] is None and perfect["U"] == 0


def test_gres_all_target_split():
    big_gt = mask(*[(r, c) for r in range(2) for c in range(5)], size=(10, 10))  # 10 pixels
    scores = [
        gres_score(SQUARE | mask((3, 3)), SQUARE, False),  # I 4, U 5, IoU 0.8
        gres_score(EMPTY, SQUARE, False),  # predicted empty: FP, I 0, U 4, IoU 0
        gres_score(big_gt & ~mask((1, 4), size=(10, 10)), big_gt, False),  # I 9, U 10, IoU 0.9
    ]
    out = gres_summary(scores)
    assert (out["TP"], out["FN"], out["TN"], out["FP"], out["I"], out["U"]) == (0, 0, 2, 1, 13, 19)
    assert out["gIoU"] == pytest.approx(100 * 1.7 / 3)  # (0.8 + 0 + 0.9) / 3
    assert out["cIoU"] == pytest.approx(100 * 13 / 19)  # (4 + 0 + 9) / (5 + 4 + 10)
    assert out["Pr@0.7"] == pytest.approx(100 * 2 / 3)  # 0.8 and 0.9
    assert out["Pr@0.8"] == pytest.approx(100 * 2 / 3)  # IoU >= t: 0.8 counts
    assert out["Pr@0.9"] == pytest.approx(100 / 3)
    assert out["N-acc"] is None  # no no-target sample
    assert out["T-acc"] == pytest.approx(100 * 2 / 3)  # TN / (TN + FP) = 2 / 3
    assert out["N-acc (ReLA code)"] == out["T-acc (ReLA code)"] == 0.0  # ReLA: 0 without no-target samples


def test_gres_mixed_split_where_relas_code_differs_from_the_plain_definitions():
    scores = [
        gres_score(EMPTY, EMPTY, True),  # TP: IoU 1, I 0, U 0
        gres_score(mask((3, 2), (3, 3)), EMPTY, True),  # FN: IoU 0, U 2
        gres_score(SQUARE, SQUARE, False),  # TN: I 4, U 4, IoU 1
        gres_score(EMPTY, SQUARE, False),  # FP: I 0, U 4, IoU 0
        gres_score(mask((0, 0), (0, 1), (2, 2), (2, 3)), SQUARE, False),  # TN: I 2, U 6, IoU 1/3
    ]
    out = gres_summary(scores)
    assert (out["samples"], out["no-target samples"], out["target samples"]) == (5, 2, 3)
    assert (out["TP"], out["FN"], out["TN"], out["FP"], out["I"], out["U"]) == (1, 1, 2, 1, 6, 16)
    assert out["gIoU"] == pytest.approx(100 * (7 / 3) / 5)  # (1 + 0 + 1 + 0 + 1/3) / 5 = 46.67
    assert out["cIoU"] == pytest.approx(37.5)  # (4 + 2) / (2 + 4 + 4 + 6)
    for t in ("0.7", "0.8", "0.9"):
        assert out[f"Pr@{t}"] == pytest.approx(100 / 3)  # of 3 target samples, only IoU 1
    assert out["N-acc"] == pytest.approx(50.0)  # 1 / (1 + 1)
    assert out["T-acc"] == pytest.approx(100 * 2 / 3)  # 2 / (2 + 1)
    assert out["N-acc (ReLA code)"] == pytest.approx(100 / 3)  # 1 / (1 + 1 + 1)
    # ReLA's "T_acc" is TP / (TP + FP + 1) = 1 / 3, not TN / (TN + FP + 1) = 2 / 4
    assert out["T-acc (ReLA code)"] == pytest.approx(100 / 3)


def test_gres_with_an_existence_decision_the_mask_does_not_carry():
    # an existence output says "no target" on a target sample whose mask is right: FP, I = 0, U kept
    fp = gres_score(SQUARE, SQUARE, False, pred_no_target=True)
    assert (fp.inter, fp.union, fp.iou) == (0, 4, 0.0)
    # it says "no target" on a no-target sample with stray pixels: TP, nothing added to U
    tp = gres_score(mask((2, 2)), EMPTY, True, pred_no_target=True)
    assert (tp.inter, tp.union, tp.iou) == (0, 0, 1.0)
    # it says "a target" on a no-target sample with an empty mask: FN, IoU 0, U += 0
    fn = gres_score(EMPTY, EMPTY, True, pred_no_target=False)
    assert (fn.union, fn.iou, fn.pred_no_target) == (0, 0.0, False)


def test_gres_accepts_torch_masks():
    s = gres_score(torch.from_numpy(SQUARE | mask((3, 3))).to(torch.uint8), torch.from_numpy(SQUARE), False)
    assert (s.inter, s.union, s.iou) == (4, 5, 0.8)


# GREC: boxes x1 y1 x2 y2 pixels. Boxes spanning the same rows [0, 10] that overlap in x have an
# enclosing box equal to their union, so their generalized IoU is the plain IoU of the x-ranges.
G1, G2 = [5, 0, 15, 10], [8, 0, 18, 10]
P1, P2 = [6, 0, 16, 10], [2, 0, 12, 10]


def test_grec_greedy_matching_takes_the_largest_giou_first():
    # GIoU: P1-G1 9/11 = 0.818, P1-G2 8/12 = 0.667, P2-G1 7/13 = 0.538, P2-G2 4/16 = 0.25.
    # Greedy takes P1-G1 first; P2-G2 (0.25) < 0.5 stops it: TP 1, FP 1, FN 1, F1 = 2/4 = 0.5: wrong.
    # (Matching in score order, P2 first, or an optimal assignment would match both.)
    s = grec_score([P1, P2], [0.9, 0.95], [G1, G2], False)
    assert (s.kept, s.matched, s.annotated, s.right) == (2, 1, 2, False)


def test_grec_multi_target_all_matched_and_low_scores_dropped():
    gts = [[0, 0, 10, 10], [20, 0, 30, 10]]
    # [0, 0, 10, 10] GIoU 1 with the first; [21, 0, 31, 10] 9/11 with the second; the third box
    # (score 0.69 < 0.7) is dropped, else it would be an FP: F1 = 4 / 5
    s = grec_score([[0, 0, 10, 10], [21, 0, 31, 10], [40, 0, 50, 10]], [0.8, 0.75, 0.69], gts, False)
    assert (s.kept, s.matched, s.right) == (2, 2, True)
    s = grec_score([[0, 0, 10, 10], [21, 0, 31, 10], [40, 0, 50, 10]], [0.8, 0.75, 0.7], gts, False)
    assert (s.kept, s.matched, s.right) == (3, 2, False)


def test_grec_matches_on_generalized_iou_not_iou():
    # [9, 9, 59, 59] vs [0, 0, 50, 50]: I = 41^2 = 1681, U = 5000 - 1681 = 3319, IoU = 0.5065;
    # enclosing 59^2 = 3481: GIoU = 0.5065 - (3481 - 3319) / 3481 = 0.4599 < 0.5: unmatched
    s = grec_score([[9, 9, 59, 59]], [0.9], [[0, 0, 50, 50]], False)
    assert (s.matched, s.right) == (0, False)


def test_grec_no_target_scores_and_the_summary():
    scores = [
        grec_score([P1, P2], [0.9, 0.95], [G1, G2], False),  # TN, wrong (greedy)
        grec_score([[0, 0, 10, 10]], [0.99], [[1, 0, 10, 10]], False),  # TN, right (GIoU 0.9)
        grec_score([[9, 9, 59, 59]], [0.9], [[0, 0, 50, 50]], False),  # TN, wrong (GIoU < 0.5)
        grec_score([[0, 0, 5, 5], [1, 1, 4, 4]], [0.69, 0.5], [], True),  # TP, right: none kept
        grec_score([[0, 0, 5, 5]], [0.7], np.zeros((0, 4)), True),  # FN, wrong: one kept
        grec_score(np.zeros((0, 4)), [], [G1], False),  # FP, wrong: no box at all
    ]
    out = grec_summary(scores)
    assert (out["TP"], out["FN"], out["TN"], out["FP"], out["right"]) == (1, 1, 3, 1, 2)
    assert out["Precision@(F1=1, IoU>=0.5)"] == pytest.approx(100 * 2 / 6)
    assert out["N-acc"] == pytest.approx(50.0)  # TP / (TP + FN) = 1 / 2
    assert out["T-acc"] == pytest.approx(75.0)  # TN / (TN + FP) = 3 / 4
    only_nt = grec_summary(scores[3:5])
    assert only_nt["T-acc"] is None and only_nt["N-acc"] == pytest.approx(50.0)


def test_grec_float32_score_of_0_7_is_below_the_threshold_as_in_the_evaluator():
    # float32(0.7) = 0.699999988..., compared with 0.7 in float64 (the evaluator's .tolist() + numpy)
    s = grec_score(torch.tensor([[0, 0, 5, 5]], dtype=torch.float32), torch.tensor([0.7]), [], True)
    assert (s.kept, s.right) == (0, True)


@pytest.mark.parametrize("call, message", [
    (lambda: gres_score(np.zeros((4, 4), bool), np.zeros((4, 5), bool), False, sample_id=7),
     "sample 7: predicted mask (4, 4) and ground-truth mask (4, 5)"),
    (lambda: gres_score(EMPTY, SQUARE, True, sample_id="a"), "sample 'a': a no-target sample has a non-empty"),
    (lambda: grec_score([G1], [0.9], [], False), "a target sample has no annotated box"),
    (lambda: grec_score([], [], [G1], True), "a no-target sample has annotated boxes"),
    (lambda: grec_score([[5, 0, 1, 10]], [0.9], [G1], False), "predicted boxes must be finite (x1, y1, x2, y2)"),
    (lambda: grec_score([G1, G2], [0.9], [G1], False), "2 predicted boxes but 1 scores"),
    (lambda: gres_summary([]), "no samples to score"),
])
def test_bad_input_is_one_line_naming_it(call, message):
    with pytest.raises(InputError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)
