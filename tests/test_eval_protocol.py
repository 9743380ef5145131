"""Evaluation protocols against hand-computed numbers, and where eval and calibrate write.

``original`` scores in original image pixels; ``authors`` scores on the padded canvas as the
authors' MindSpore evaluation does (box IoU of the unclipped canvas boxes, >= 0.5; mask IoU
(I + 1e-10) / (U + 1e-10) over the whole canvas, Prec@t with IoU > t; no oIoU).
"""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_synth_set
from vglaw.cli import main
from vglaw.data import GroundingDataset, load_tokenizer
from vglaw.data.masks import mask_to_rle
from vglaw.data.transforms import Letterbox
from vglaw.engine.calibrate import fit_calibrator
from vglaw.engine.loop import eval_loader, evaluate
from vglaw.engine.metrics import authors_box_iou, authors_target_box
from vglaw.hub import DEMO_CHECKPOINT
from vglaw.model.confidence import CALIBRATION_NAME, FEATURES


# ----------------------------------------------------------------------------- by hand
def test_authors_box_iou_on_the_canvas_by_hand():
    gt = torch.tensor([0.25, 0.5, 0.5, 0.5])  # canvas x 0.0-0.5, y 0.25-0.75
    # a box over the padding: intersection 0.5 x 0.5, union 0.6 x 1.0
    assert authors_box_iou(torch.tensor([0.3, 0.5, 0.6, 1.0]), gt) == pytest.approx(0.25 / 0.6, rel=1e-6)
    assert authors_box_iou(torch.tensor([0.25, 0.375, 0.5, 0.25]), gt) == 0.5  # exactly half: a hit (>=)
    # two empty boxes at one point: the union is clipped to 1e-6, so IoU 0 (not NaN)
    point = torch.tensor([0.5, 0.5, 0.0, 0.0])
    assert authors_box_iou(point, point) == 0.0


def test_authors_target_box_uses_one_ratio_and_the_centring_offset():
    # a 500 x 333 photo on a 448 canvas: ratio 448 / 500 = 0.896, resized to 448 x 298
    # (round(333 * 0.896) = 298), centred 75 px down; box x 100, y 100, w 50, h 100
    letterbox = Letterbox.centred((333, 500), 448)
    assert letterbox.offset == (0, 75)
    target = authors_target_box([100, 100, 50, 100], letterbox)
    # cx = 125 * 0.896 / 448; cy = (150 * 0.896 + 75) / 448; w = 50 * 0.896 / 448; h = 100 * 0.896 / 448
    assert target.tolist() == pytest.approx([0.25, 209.4 / 448, 0.1, 0.2], rel=1e-6)


# ----------------------------------------------------------------------------- a split made by hand
class FixedAnswers(torch.nn.Module):
    """Answers the i-th expression of a batch with a fixed canvas box and mask, whatever the input."""

    def __init__(self, boxes: torch.Tensor, masks: torch.Tensor) -> None:
        super().__init__()
        self.boxes, self.logits = boxes, torch.where(masks, 10.0, -10.0)[:, None]  # (N, 4), (N, 1, S, S)
        self.config = SimpleNamespace(mask_threshold=0.35)

    def forward(self, images, input_ids, attention_mask, box_attention=False):
        b = images.shape[0]
        return {"boxes": self.boxes[:b], "mask_logits": self.logits[:b], "box_attention": torch.full((b, 2, 2), 0.25)}


def hand_split(root: Path) -> Path:
    """A 200 x 100 image with two expressions: its left half and its right half (box and mask)."""
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (200, 100), (90, 120, 150)).save(root / "images" / "wide.png")
    halves = np.zeros((2, 100, 200), np.uint8)
    halves[0, :, :100], halves[1, :, 100:] = 1, 1
    records = [{"split": "val", "image": "wide.png", "width": 200, "height": 100, "box": box,
                "mask": mask_to_rle(mask), "sentence": text}
               for box, mask, text in (([0, 0, 100, 100], halves[0], "the left half"),
                                       ([100, 0, 100, 100], halves[1], "the right half"))]
    prepared = root / "prep"
    prepared.mkdir()
    (prepared / "meta.json").write_text(json.dumps({"dataset": "hand", "image_root": str(root / "images"),
                                                    "splits": {"val": 2}}))
    (prepared / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return prepared


def test_the_two_protocols_on_a_split_computed_by_hand(tmp_path):
    """On a 100 px canvas the image is 100 x 50 px, rows 25-74 (scale 0.5).

    Expression 1 (left half; on the canvas x 0-50, y 25-75): the box is canvas x 0-60, y 0-100
    (it covers the padding), the mask canvas columns 0-49 in every row.
      original: the box clipped to the image is (0, 0, 120, 100): IoU 10000 / 12000; the mask
        mapped back is the left 100 columns exactly: IoU 1.
      authors: box IoU (50 x 50) / (60 x 100) = 5 / 12, a miss; the mask's 5000 canvas pixels
        against the truth's 2500: IoU 0.5, not above 0.5.
    Expression 2 (right half): the box is canvas x 50-100, y 25-50, the mask canvas rows 25-49,
    columns 50-99: the image's top right quarter.
      both: box IoU exactly 0.5, a hit; mask IoU exactly 0.5 (5000 / 10000 px; 1250 / 2500 on
        the canvas): a hit at 0.5 in original (>=), a miss in authors (>)."""
    prepared = hand_split(tmp_path)
    ds = GroundingDataset(prepared, "val", tokenizer=load_tokenizer(), img_size=100, max_len=12)
    masks = torch.zeros(2, 100, 100, dtype=torch.bool)
    masks[0, :, :50] = True
    masks[1, 25:50, 50:] = True
    model = FixedAnswers(torch.tensor([[0.3, 0.5, 0.6, 1.0], [0.75, 0.375, 0.5, 0.25]]), masks)

    def run(protocol):
        return evaluate(model, eval_loader(ds, 2, 0), ds, device=torch.device("cpu"), protocol=protocol,
                        with_samples=True)

    original, samples = run("original")
    assert samples["box_iou"].tolist() == pytest.approx([10000 / 12000, 0.5])
    assert original == pytest.approx({"samples": 2, "prec@0.5": 1.0, "mask_samples": 2, "mIoU": 0.75,
                                      "oIoU": (10000 + 5000) / (10000 + 10000), "mask_prec@0.5": 1.0,
                                      "mask_prec@0.6": 0.5, "mask_prec@0.7": 0.5, "mask_prec@0.8": 0.5,
                                      "mask_prec@0.9": 0.5})
    authors, samples = run("authors")
    assert samples["box_iou"].tolist() == pytest.approx([5 / 12, 0.5])
    assert authors == pytest.approx({"samples": 2, "prec@0.5": 0.5, "mask_samples": 2, "mIoU": 0.5,
                                     "mask_prec@0.5": 0.0, "mask_prec@0.6": 0.0, "mask_prec@0.7": 0.0,
                                     "mask_prec@0.8": 0.0, "mask_prec@0.9": 0.0})
    # the boxes handed on (to pictures, the demo) stay in original pixels under either protocol
    assert samples["boxes"][0].tolist() == pytest.approx([0, 0, 120, 100])


# ----------------------------------------------------------------------------- output files
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs' best checkpoints (a tiny random model), both called best, and a small synthetic set."""
    from vglaw import build_model

    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    model = build_model("tiny", img_size=64, pretrain_img_size=64, window_size=2)
    for run in ("a", "b"):
        model.save_pretrained(root / run / "best")
    return root, make_synth_set(root / "synth", split_sizes={"val": 2})


def test_eval_names_its_results_after_the_run_and_records_the_protocol(runs, tmp_path, monkeypatch, capsys):
    root, prepared = runs
    monkeypatch.chdir(tmp_path)
    for run, protocol in (("a", "original"), ("b", "authors")):
        assert main(["eval", "--checkpoint", str(root / run / "best"), "--data", str(prepared), "--num-workers", "0",
                     "--protocol", protocol]) == 0
    a, b = (json.loads((tmp_path / f"eval_{run}_best.json").read_text()) for run in ("a", "b"))
    assert (a["protocol"], b["protocol"]) == ("original", "authors")
    assert a["checkpoint"] == str(root / "a" / "best") and b["checkpoint"] == str(root / "b" / "best")
    assert "oIoU" in a["results"]["val"] and "oIoU" not in b["results"]["val"]  # the authors compute none
    assert "protocol authors:" in capsys.readouterr().out
    # another run folder called a: its default name is taken by a's results, which are kept
    other = tmp_path / "elsewhere" / "a" / "best"
    shutil.copytree(root / "a" / "best", other)
    before = (tmp_path / "eval_a_best.json").read_text()
    assert main(["eval", "--checkpoint", str(other), "--data", str(prepared), "--num-workers", "0"]) == 2
    assert "already holds the results of checkpoint" in capsys.readouterr().err
    assert (tmp_path / "eval_a_best.json").read_text() == before


def test_a_missing_split_is_named_before_any_split_is_evaluated(runs, tmp_path, monkeypatch, capsys):
    from vglaw.commands import eval as eval_command

    root, prepared = runs
    monkeypatch.chdir(tmp_path)
    evaluated = []
    monkeypatch.setattr(eval_command, "split_samples", lambda *a, **k: evaluated.append(a[2]))
    assert main(["eval", "--checkpoint", str(root / "a" / "best"), "--data", str(prepared), "--num-workers", "0",
                 "--splits", "val", "tesA"]) == 2
    err = capsys.readouterr().err
    assert "tesA.jsonl not found; prepared splits: ['val']" in err and err.count("\n") == 1, err
    assert evaluated == [] and list(tmp_path.iterdir()) == []


def test_eval_json_and_plot_are_replaced_together(runs, tmp_path, monkeypatch):
    """A calibrator from a file scores the answers and draws the plot beside the JSON; a rerun
    without one leaves no plot of the earlier run beside its JSON."""
    root, prepared = runs
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    feats = {name: torch.rand(40, generator=g) for name in FEATURES}
    fit_calibrator(feats, (feats["mask_peak"] > 0.5).double(), fitted_on={"checkpoint": "x"}).save(tmp_path / "c.json")
    args = ["eval", "--checkpoint", str(root / "a" / "best"), "--data", str(prepared), "--num-workers", "0",
            "--json", "out.json"]
    assert main(args + ["--calibration", "c.json"]) == 0
    first = json.loads((tmp_path / "out.json").read_text())
    assert first["plot"] == "out.png" and first["calibration"] == "c.json" and "auroc" in first["results"]["val"]
    assert Image.open(tmp_path / "out.png").width > 400
    assert main(args) == 0
    second = json.loads((tmp_path / "out.json").read_text())
    assert second["plot"] is None and "auroc" not in second["results"]["val"]
    assert not (tmp_path / "out.png").exists()


def test_calibrate_writes_a_file_of_its_own_and_replaces_only_when_asked(synth_prepared, tmp_path, monkeypatch,
                                                                        capsys):
    checkpoint = tmp_path / "models" / "demo"  # a copy of the bundled model, with its calibrator
    shutil.copytree(DEMO_CHECKPOINT, checkpoint)
    bundled = (checkpoint / CALIBRATION_NAME).read_bytes()
    monkeypatch.chdir(tmp_path)
    args = ["calibrate", "--checkpoint", str(checkpoint), "--data", str(synth_prepared), "--num-workers", "0"]
    # an --out that is not a calibrator is refused before any work, and kept
    (tmp_path / "notes.json").write_text("my notes\n")
    assert main(args + ["--out", "notes.json"]) == 2
    assert "not replacing it" in capsys.readouterr().err and (tmp_path / "notes.json").read_text() == "my notes\n"
    # an --out that is the checkpoint's own calibrator (here through a link) is refused: that is --replace's job
    (tmp_path / "own.json").symlink_to(checkpoint / CALIBRATION_NAME)
    for own in (checkpoint / CALIBRATION_NAME, tmp_path / "own.json"):
        assert main(args + ["--out", str(own)]) == 2
        err = capsys.readouterr().err
        assert f"--out {own} is the checkpoint's own calibrator" in err and "--replace" in err, err
    assert (checkpoint / CALIBRATION_NAME).read_bytes() == bundled
    assert main(args) == 0
    written = tmp_path / "calibration_models_demo.json"
    assert json.loads(written.read_text())["fitted_on"]["checkpoint"] == str(checkpoint)
    assert (checkpoint / CALIBRATION_NAME).read_bytes() == bundled  # the checkpoint's own is untouched
    assert f"wrote {written.name}" in capsys.readouterr().out
    # --replace: in place of the checkpoint's own
    assert main(args + ["--replace"]) == 0
    replaced = json.loads((checkpoint / CALIBRATION_NAME).read_text())
    assert replaced == json.loads(written.read_text())  # the same fit, now where predict and serve read it
    assert sorted(tmp_path.glob("calibration_*.json")) == [written]


def test_calibrate_on_answers_all_wrong_is_one_line(runs, tmp_path, monkeypatch, capsys):
    root, synth = runs  # a random model: every box of the split is wrong
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", "--checkpoint", str(root / "a" / "best"), "--data", str(synth), "--num-workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs right and wrong answers" in err[0] and "boxes of the fitting split are wrong" in err[0], err
    assert not list(tmp_path.glob("calibration_*.json"))
