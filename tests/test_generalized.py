"""Expressions that name nothing or several objects: gRefCOCO as it ships, the existence output
(off by default), its loss, negatives, the answers, the synthetic gRefCOCO-layout set and eval."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_convert, generalized_box_iou_loss

from conftest import text_batch, write_run_config
from vglaw.cli import main
from vglaw.config import LossSection
from vglaw.data import GroundingDataset, collate, load_tokenizer, prepare
from vglaw.data.masks import component_boxes, decode_rle
from vglaw.data.prepare import BadRecordsError, load_split
from vglaw.data.synth import COLOURS, SHAPES, SIZES
from vglaw.data.transforms import swap_left_right
from vglaw.engine.losses import grounding_loss
from vglaw.model.build import build_model

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- gRefCOCO as it ships
def square(x, y, s):
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


def write_grefcoco(root: Path, *, pickled: bool = False) -> Path:
    """A small gRefCOCO download: ``grefcoco/grefs(unc).json`` (or ``.p``) + ``instances.json``,
    images in ``train2014/``. Refs as the release has them: a list ``ann_id`` (multi-target), a
    scalar ``ann_id`` and ``category_id``, ``[-1]`` with ``no_target``, a one-item list, a crowd
    annotation inside a multi-target ref, a ref whose only annotation is crowd; an RLE
    segmentation beside polygons; REFER's suffixed ``file_name`` on refs."""
    folder = root / "grefcoco"
    folder.mkdir(parents=True)
    (root / "train2014").mkdir()
    images = []
    for image_id, (w, h) in ((1, (64, 48)), (2, (50, 60))):
        name = f"COCO_train2014_{image_id:012d}.jpg"
        Image.new("RGB", (w, h), (90, 120, 150)).save(root / "train2014" / name)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    # uncompressed, column-major: a 5 x 5 block at x 12..16, y 10..14 of the 50 x 60 image
    rle = {"size": [60, 50], "counts": [730, 5, 55, 5, 55, 5, 55, 5, 55, 5, 2025]}
    annotations = [
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "segmentation": square(2, 2, 10),
         "area": 100, "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 1, "bbox": [30, 20, 8, 8], "segmentation": square(30, 20, 8),
         "area": 64, "iscrowd": 0},
        {"id": 13, "image_id": 1, "category_id": 2, "bbox": [40, 5, 20, 30], "segmentation": square(40, 5, 20),
         "area": 400, "iscrowd": 1},
        {"id": 21, "image_id": 2, "category_id": 3, "bbox": [12, 10, 5, 5], "segmentation": rle,
         "area": 25, "iscrowd": 0},
        {"id": 22, "image_id": 2, "category_id": 2, "bbox": [1, 1, 5, 5], "segmentation": square(1, 1, 5),
         "area": 25, "iscrowd": 1},
    ]

    def sentences(*texts, start):
        return [{"sent_id": start + k, "sent": t, "raw": t, "tokens": t.split()} for k, t in enumerate(texts)]

    refs = [
        {"ref_id": 1, "image_id": 1, "split": "val", "ann_id": [11, 12, 13], "category_id": [1, 1, 2],
         "file_name": "COCO_train2014_000000000001_11.jpg", "no_target": False, "sent_ids": [1, 2],
         "sentences": sentences("both squares", "all small things", start=1)},
        {"ref_id": 2, "image_id": 1, "split": "val", "ann_id": [-1], "category_id": [-1],
         "file_name": "COCO_train2014_000000000001_-1.jpg", "no_target": True, "sent_ids": [3],
         "sentences": sentences("the purple elephant", start=3)},
        {"ref_id": 3, "image_id": 2, "split": "val", "ann_id": 21, "category_id": 3,
         "file_name": "COCO_train2014_000000000002_21.jpg", "no_target": False, "sent_ids": [4],
         "sentences": sentences("the small one", start=4)},
        {"ref_id": 4, "image_id": 2, "split": "train", "ann_id": [12 * 0 + 21], "category_id": [3],
         "file_name": "COCO_train2014_000000000002_21.jpg", "no_target": False, "sent_ids": [5],
         "sentences": sentences("that thing", start=5)},
        {"ref_id": 5, "image_id": 2, "split": "train", "ann_id": [22], "category_id": [2],
         "file_name": "COCO_train2014_000000000002_22.jpg", "no_target": False, "sent_ids": [6],
         "sentences": sentences("the crowd", start=6)},
    ]
    if pickled:
        (folder / "grefs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    else:
        (folder / "grefs(unc).json").write_text(json.dumps(refs))
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": [{"id": i, "name": str(i)} for i in (1, 2, 3)]}))
    return root


def test_grefcoco_as_shipped_prepares_target_sets_with_union_masks_and_crowds_left_out(tmp_path):
    root = write_grefcoco(tmp_path / "d")
    with pytest.raises(BadRecordsError) as e:  # ref 5: its only annotation is a crowd one
        prepare(fmt="grefcoco", data_root=root, dataset="grefcoco", image_root=root / "train2014", out=tmp_path / "p",
                progress=False)
    assert [b["reason"] for b in e.value.bad] == ["every annotation of ref 5 ([22]) is a crowd annotation"]
    meta = prepare(fmt="grefcoco", data_root=root, dataset="grefcoco", image_root=root / "train2014",
                   out=tmp_path / "p", progress=False, skip_bad=True)
    assert meta["targets"]["val"] == {"no-target": 1, "single-target": 1, "multi-target": 2}
    _, val = load_split(tmp_path / "p", "val")
    multi, multi2, none, single = val
    assert multi["sentence"] == "both squares" and multi2["sentence"] == "all small things"
    assert multi["boxes"] == [[2, 2, 10, 10], [30, 20, 8, 8]]  # the crowd annotation 13 left out
    assert multi["box"] == [2, 2, 36, 26] and multi["no_target"] is False  # the union of the boxes
    mask = decode_rle(multi["mask"])
    assert mask.shape == (48, 64) and mask.sum() == 10 * 10 + 8 * 8  # the union of the two squares, not the crowd
    assert mask[2:12, 2:12].all() and mask[20:28, 30:38].all() and not mask[5:35, 40:60].any()
    assert none["no_target"] is True and none["boxes"] == [] and none["box"] is None
    assert decode_rle(none["mask"]).shape == (48, 64) and decode_rle(none["mask"]).sum() == 0
    assert single["boxes"] == [[12, 10, 5, 5]] and decode_rle(single["mask"]).sum() == 25  # scalar ann_id, RLE
    assert single["image"] == "COCO_train2014_000000000002.jpg"  # the image's file, not the ref's file_name


def test_grefcoco_reads_the_pickle_first_as_relas_loader_does(tmp_path):
    root = write_grefcoco(tmp_path / "d", pickled=True)
    (root / "grefcoco" / "grefs(unc).json").write_text("[]")  # the .p wins when both are there
    prepare(fmt="grefcoco", data_root=root, dataset="grefcoco", image_root=root / "train2014", out=tmp_path / "p",
            progress=False, skip_bad=True)
    assert len(load_split(tmp_path / "p", "val")[1]) == 4


def test_a_broken_grefcoco_download_is_one_line_naming_the_file(tmp_path, capsys):
    root = write_grefcoco(tmp_path / "d")
    args = ["prepare", "--format", "grefcoco", "--data-root", str(root), "--dataset", "grefcoco",
            "--images", str(root / "train2014"), "--out", str(tmp_path / "p")]
    (root / "grefcoco" / "grefs(unc).json").write_text('[{"ref_id": 1, ')  # cut short
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grefs(unc).json is not valid JSON" in err[0]
    (root / "grefcoco" / "grefs(unc).json").unlink()
    assert main(args) == 2
    assert "grefs(unc).json not found (gRefCOCO layout" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("argv", [["predict", "--image", "x.jpg", "--text", "a", "--min-exists", "1.5"],
                                  ["eval", "--checkpoint", "x", "--data", "y", "--min-exists", "-0.1"],
                                  ["train", "--config", "configs/synth_gref.yaml", "data.negatives=1.5"]])
def test_values_out_of_range_are_one_line(argv, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusal: usage and one error line
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert ("--min-exists" in err or "data.negatives" in err) and "Traceback" not in err


def test_refer_data_prepares_exactly_as_before(synth_prepared):
    # single-target data: no target-set fields, no "targets" in meta.json, items without existence targets
    meta, records = load_split(synth_prepared, "train")
    assert "targets" not in meta and not any("boxes" in r or "no_target" in r for r in records)
    ds = GroundingDataset(synth_prepared, "train", tokenizer=load_tokenizer(), img_size=64, max_len=12)
    assert "exists" not in ds[0] and "exists" not in collate([ds[0], ds[1]])


# ----------------------------------------------------------------------------- the model and its loss
def test_existence_output_is_off_by_default_and_the_model_saves_as_before(tmp_path):
    plain = build_model("tiny")
    assert not plain.has_existence and "existence" not in plain.config_dict()
    assert not any(k.startswith("exists_head") for k in plain.state_dict())
    ids, mask = text_batch(2, 12)
    out = plain.eval()(torch.zeros(2, 3, 128, 128), ids, mask)
    assert set(out) == {"boxes", "box_logits", "mask_logits", "features"}
    with_it = build_model("tiny", existence=True).eval()
    out = with_it(torch.zeros(2, 3, 128, 128), ids, mask)
    assert out["exists_logits"].shape == (2,)
    with_it.save_pretrained(tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["existence"] is True
    from vglaw import VGLAW

    plain.save_pretrained(tmp_path / "plain")
    added = VGLAW.from_pretrained(tmp_path / "plain", existence=True)  # fine-tuning start: a new head, rest loaded
    assert added.has_existence
    assert torch.equal(added.state_dict()["box_head.q_proj.weight"], plain.state_dict()["box_head.q_proj.weight"])


def _outputs(batch: int = 3, size: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"boxes": torch.rand(batch, 4, generator=g) * 0.5 + 0.25,
            "mask_logits": torch.randn(batch, 1, size, size, generator=g),
            "exists_logits": torch.randn(batch, generator=g)}


def _batch(batch: int = 3, size: int = 8, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"box": torch.rand(batch, 4, generator=g) * 0.5 + 0.25,
            "mask": (torch.rand(batch, size, size, generator=g) > 0.5).to(torch.uint8),
            "has_mask": torch.ones(batch, dtype=torch.bool)}


def test_single_target_loss_is_the_papers_formula():
    out, batch = _outputs(), _batch()
    del out["exists_logits"]
    got = grounding_loss(out, batch, LossSection())
    pred, target = out["boxes"], batch["box"]
    l1 = (pred - target).abs().sum(1).mean()
    giou = generalized_box_iou_loss(box_convert(pred, "cxcywh", "xyxy"), box_convert(target, "cxcywh", "xyxy")).mean()
    assert set(got) == {"loss", "l1", "giou", "focal", "dice"}
    assert torch.allclose(got["l1"], l1) and torch.allclose(got["giou"], giou)


def test_no_target_and_multi_target_samples_have_no_box_loss_and_existence_is_bce():
    out, batch = _outputs(), _batch()
    batch["exists"] = torch.tensor([1.0, 0.0, 1.0])
    batch["box_weight"] = torch.tensor([1.0, 0.0, 0.0])  # single, no-target, multi-target
    got = grounding_loss(out, batch, LossSection())
    moved = {**batch, "box": batch["box"].clone()}
    moved["box"][1:] = torch.tensor([0.9, 0.9, 0.1, 0.1])  # the other samples' box targets change nothing
    again = grounding_loss(out, moved, LossSection())
    assert torch.equal(got["l1"], again["l1"]) and torch.equal(got["giou"], again["giou"])
    assert torch.allclose(got["l1"], (out["boxes"][0] - batch["box"][0]).abs().sum())
    bce = -(torch.log(torch.sigmoid(out["exists_logits"][[0, 2]])).sum()
            + torch.log(1 - torch.sigmoid(out["exists_logits"][1]))) / 3
    assert torch.allclose(got["exists"], bce)
    assert torch.allclose(got["loss"], got["l1"] + got["giou"] + got["focal"] + got["dice"] + got["exists"])


# ----------------------------------------------------------------------------- data: negatives, own files
def test_negatives_show_the_expression_with_another_image_holding_none_of_its_category(synth_prepared):
    tok = load_tokenizer()
    ds = GroundingDataset(synth_prepared, "train", tokenizer=tok, img_size=64, max_len=12, train=True,
                          negatives=1.0, seed=3)
    seen = 0
    for i in range(len(ds)):
        item, record = ds[i], ds.records[i]
        assert item["meta"]["text"] in (record["sentence"], swap_left_right(record["sentence"]))
        if item["exists"] == 0:
            seen += 1
            image = Path(item["meta"]["image_path"]).name
            assert image != record["image"]
            assert record["category_id"] not in ds.image_categories[image]
            # every object of that image, referred to or not (instances.json), is of another category
            assert record["category_id"] not in ds.records[ds.image_records[image]]["image_categories"]
            assert item["mask"].sum() == 0 and item["box_weight"] == 0
    assert seen > len(ds) // 2  # a few may find no image free of the category
    again = GroundingDataset(synth_prepared, "train", tokenizer=tok, img_size=64, max_len=12, train=True,
                             negatives=1.0, seed=3)
    assert all(torch.equal(ds[i]["image"], again[i]["image"]) for i in range(4))  # repeatable
    off = GroundingDataset(synth_prepared, "train", tokenizer=tok, img_size=64, max_len=12, train=True, seed=3,
                           existence=True)
    assert all(off[i]["exists"] == 1 for i in range(len(off)))


def test_negatives_need_the_existence_output(tmp_path, synth_prepared, capsys):
    cfg = write_run_config(tmp_path / "c.yaml", synth_prepared, tmp_path / "run")
    assert main(["train", "--config", str(cfg), "data.negatives=0.2"]) == 2
    assert "data.negatives" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_own_no_target_and_multi_target_records_prepare_and_train(tmp_path):
    from PIL import ImageDraw

    (tmp_path / "img").mkdir()
    img = Image.new("RGB", (80, 60), (200, 200, 200))
    ImageDraw.Draw(img).rectangle([5, 5, 20, 20], fill=(255, 0, 0))
    ImageDraw.Draw(img).rectangle([50, 30, 70, 50], fill=(255, 0, 0))
    img.save(tmp_path / "img" / "a.png")
    rows = [{"image": "a.png", "text": "both red squares", "boxes": [[5, 5, 21, 21], [50, 30, 71, 51]]},
            {"image": "a.png", "text": "the blue circle", "no_target": True},
            {"image": "a.png", "text": "the left red square", "box_xyxy": [5, 5, 21, 21], "split": "train"}]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["prepare", "--format", "jsonl", "--data-root", str(path), "--images", str(tmp_path / "img"),
                 "--out", str(tmp_path / "p")]) == 0
    meta, records = load_split(tmp_path / "p", "train")
    assert meta["targets"]["train"] == {"no-target": 1, "single-target": 1, "multi-target": 1}
    assert records[0]["boxes"] == [[5.0, 5.0, 16.0, 16.0], [50.0, 30.0, 21.0, 21.0]]
    assert records[1]["no_target"] and decode_rle(records[1]["mask"]).shape == (60, 80)
    assert "boxes" not in records[2]  # one box: the plain single-target record
    cfg = write_run_config(tmp_path / "c.yaml", tmp_path / "p", tmp_path / "run", effective_batch=2, epochs=1)
    assert main(["train", "--config", str(cfg), "model.overrides.existence=true", "data.eval_splits=[]"]) == 0
    log = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert "exists" in log["train"]


# ----------------------------------------------------------------------------- synthetic gRefCOCO layout
def test_synth_writes_grefcoco_layout_with_ground_truth_that_fits_the_expressions(tmp_path):
    assert main(["synth", "--out", str(tmp_path), "--train", "0", "--val", "40", "--testA", "0", "--testB", "0",
                 "--no-target", "0.3", "--multi-target", "0.3", "--seed", "4"]) == 0
    folder = tmp_path / "grefcoco"
    refs = json.loads((folder / "grefs(unc).json").read_text())
    anns = {a["id"]: a for a in json.loads((folder / "instances.json").read_text())["annotations"]}
    kinds = {"none": 0, "multi": 0, "single": 0}
    for ref in refs:
        assert isinstance(ref["ann_id"], list) and isinstance(ref["no_target"], bool)
        if ref["no_target"]:
            kinds["none"] += 1
            assert ref["ann_id"] == [-1] and ref["category_id"] == [-1]
            shapes = [SHAPES[a["category_id"] - 1] for a in anns.values() if a["image_id"] == ref["image_id"]]
            for s in ref["sentences"]:  # "the [size] [colour] [shape]": a shape it names is not there, or
                words = s["sent"].split()[1:]  # another attribute is absent (checked by the generator itself)
                assert all(w in (*SIZES, *COLOURS, *SHAPES, "shape") for w in words)
                if words[-1] in SHAPES and len(words) == 1:
                    assert words[-1] not in shapes
        elif len(ref["ann_id"]) > 1:
            kinds["multi"] += 1
            assert all(s["sent"].startswith(("all ", "both ", "the two ")) for s in ref["sentences"])
            named = [SHAPES[anns[a]["category_id"] - 1] for a in ref["ann_id"]]
            for s in ref["sentences"]:
                last = s["sent"].split()[-1]
                if last != "shapes":  # "all the circles": every target is a circle
                    assert all(last == n + "s" for n in named)
        else:
            kinds["single"] += 1
    assert kinds["none"] and kinds["multi"] and kinds["single"]
    assert main(["prepare", "--format", "grefcoco", "--data-root", str(tmp_path), "--dataset", "grefcoco",
                 "--images", str(tmp_path / "images"), "--out", str(tmp_path / "p")]) == 0


def test_synth_expressions_name_what_the_generator_placed():
    from vglaw.data.synth import Shape, absent_expressions, group_expressions

    shapes = [Shape("circle", "red", "small", 20, 20, 5), Shape("circle", "blue", "large", 60, 20, 8),
              Shape("square", "red", "large", 40, 60, 8)]
    absent = absent_expressions(shapes)
    assert {"the triangle", "the blue square", "the small blue circle", "the small square"} <= set(absent)
    assert not {"the circle", "the red circle", "the small red circle", "the large shape", "the red shape",
                "the large red square"} & set(absent)
    groups = dict(group_expressions(shapes))
    assert groups["all the circles"] == [0, 1] and groups["both red shapes"] == [0, 2]
    assert groups["all the large shapes"] == [1, 2] and "all the shapes" not in groups  # all three: not a group


def test_synth_refuses_shares_outside_zero_to_one(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "s"), "--no-target", "0.8", "--multi-target", "0.5"]) == 2
    assert "--no-target" in capsys.readouterr().err and not (tmp_path / "s" / "images").exists()


# ----------------------------------------------------------------------------- answers
def test_component_boxes_are_the_parts_of_the_mask_largest_first():
    mask = np.zeros((20, 30), bool)
    mask[2:5, 3:7] = True  # 12 px
    mask[10:18, 20:28] = True  # 64 px
    mask[0, 25:29] = True  # 4 px: a speck under 10 % of the largest part (6 px would be kept)
    assert component_boxes(mask) == [(20.0, 10.0, 28.0, 18.0), (3.0, 2.0, 7.0, 5.0)]
    assert component_boxes(np.zeros((4, 4), bool)) == []


class Fixed(torch.nn.Module):
    """A model whose answers are given: every expression gets ``exists`` and a mask of the image's
    pixels inside ``blobs`` (canvas fractions), on a canvas of 32 px."""

    def __init__(self, base, exists: float, blobs):
        super().__init__()
        self.base, self.exists, self.blobs = base, exists, blobs
        self.has_existence = True

    def forward(self, images, input_ids, attention_mask, **kw):
        out = self.base(images, input_ids, attention_mask, **kw)
        logits = torch.full_like(out["mask_logits"], -20.0)
        S = logits.shape[-1]
        for x0, y0, x1, y1 in self.blobs:
            logits[..., int(y0 * S):int(y1 * S), int(x0 * S):int(x1 * S)] = 20.0
        return {**out, "mask_logits": logits,
                "exists_logits": torch.full((len(images),), float(np.log(self.exists / (1 - self.exists))))}

    @property
    def spec(self):
        return self.base.spec

    @property
    def config(self):
        return self.base.config


def test_answers_carry_exists_boxes_per_part_and_not_found_below_min_exists():
    from vglaw.inference.postprocess import prediction_json
    from vglaw.inference.predictor import Grounder

    base = build_model("tiny", img_size=32, patch_size=8, pretrain_img_size=32, window_size=2, existence=True).eval()
    image = np.full((32, 32, 3), 128, np.uint8)
    two = Grounder(Fixed(base, 0.9, [(0.0, 0.0, 0.25, 0.25), (0.5, 0.5, 1.0, 1.0)]), load_tokenizer(), device="cpu")
    p = two.predict(image, "all the squares")
    assert p.exists == 0.9 and p.found and not p.no_target
    assert p.boxes == [(16.0, 16.0, 32.0, 32.0), (0.0, 0.0, 8.0, 8.0)]
    line = prediction_json(p)
    assert line["boxes"] == [[16.0, 16.0, 32.0, 32.0], [0.0, 0.0, 8.0, 8.0]] and line["no_target"] is False
    absent = Grounder(Fixed(base, 0.2, [(0.0, 0.0, 0.25, 0.25)]), load_tokenizer(), device="cpu")
    q = absent.predict(image, "the purple elephant")
    assert q.exists == 0.2 and q.no_target and not q.found and q.boxes == []
    assert prediction_json(q)["no_target"] is True and prediction_json(q)["boxes"] == []
    lenient = Grounder(Fixed(base, 0.2, [(0.0, 0.0, 0.25, 0.25)]), load_tokenizer(), device="cpu", min_exists=0.1)
    assert lenient.predict(image, "the purple elephant").found


def test_sample_panels_of_no_target_and_multi_target_records(tmp_path):
    from vglaw.inference.pictures import record_panel
    from vglaw.inference.predictor import Grounder

    root = write_grefcoco(tmp_path / "d")
    prepare(fmt="grefcoco", data_root=root, dataset="grefcoco", image_root=root / "train2014", out=tmp_path / "p",
            progress=False, skip_bad=True)
    _, (multi, _, none, _) = load_split(tmp_path / "p", "val")
    base = build_model("tiny", img_size=32, patch_size=8, pretrain_img_size=32, window_size=2, existence=True).eval()
    image = Image.open(root / "train2014" / none["image"]).convert("RGB")
    absent = Grounder(Fixed(base, 0.1, [(0.0, 0.0, 0.5, 0.5)]), load_tokenizer(), device="cpu")
    present = Grounder(Fixed(base, 0.9, [(0.0, 0.0, 0.5, 0.5)]), load_tokenizer(), device="cpu")
    assert record_panel(absent, image, none)[1]["box_iou"] == 1.0  # nothing named, nothing found: right
    assert record_panel(present, image, none)[1]["box_iou"] == 0.0
    assert record_panel(absent, image, multi)[1]["box_iou"] == 0.0
    panel, ious = record_panel(present, image, multi)  # the boxes' union against the answer's box
    assert panel.width > image.width and 0.0 <= ious["box_iou"] <= 1.0


def test_coco_results_leave_out_no_target_answers_and_list_each_part():
    from vglaw.inference.batch import coco_results

    lines = [{"id": 1, "box_xyxy": [0, 0, 4, 4], "score": 0.5, "no_target": True, "boxes": []},
             {"id": 2, "box_xyxy": [0, 0, 9, 9], "score": None, "no_target": False,
              "boxes": [[0, 0, 4, 4], [5, 5, 9, 9]]},
             {"id": 3, "box_xyxy": [1, 1, 3, 3], "score": 0.7, "mask_rle": {"size": [4, 4], "counts": "0"}}]
    got = coco_results(lines)
    assert [(r["image_id"], r["bbox"]) for r in got] == [(2, [0, 0, 4, 4]), (2, [5, 5, 4, 4]), (3, [1, 1, 2, 2])]
    assert "segmentation" not in got[0] and got[2]["segmentation"] == {"size": [4, 4], "counts": "0"}


# ----------------------------------------------------------------------------- eval
def test_eval_reports_gres_and_grec_as_computed_by_hand(tmp_path):
    """A model that says "no target" to everything: no-target samples score IoU 1, target ones 0;
    N-acc 100, T-acc 0, gIoU = the share of no-target samples; no box is kept, so GREC is right on
    exactly the no-target samples."""
    from vglaw.engine.loop import eval_loader, evaluate

    root = write_grefcoco(tmp_path / "d")
    prepare(fmt="grefcoco", data_root=root, dataset="grefcoco", image_root=root / "train2014", out=tmp_path / "p",
            progress=False, skip_bad=True)
    base = build_model("tiny", img_size=32, patch_size=8, pretrain_img_size=32, window_size=2, existence=True).eval()
    ds = GroundingDataset(tmp_path / "p", "val", tokenizer=load_tokenizer(), img_size=32, max_len=20)
    for exists, expect in ((0.1, {"gIoU": 25.0, "N-acc": 100.0, "T-acc": 0.0, "cIoU": 0.0}),
                           (0.9, {"N-acc": 0.0, "T-acc": 100.0})):
        metrics = evaluate(Fixed(base, exists, [(0.0, 0.0, 1.0, 1.0)]), eval_loader(ds, 2, 0), ds,
                           device=torch.device("cpu"))
        for key, value in expect.items():
            assert metrics[key] == pytest.approx(value), (exists, key)
        assert metrics["gres"]["samples"] == 4 and metrics["grec"]["no-target samples"] == 1
        assert metrics["samples"] == 1  # the single-target expression's box and mask metrics
    # everything called present with a whole-canvas mask: U of the no-target sample is its image's pixels
    gres = metrics["gres"]
    assert gres["FN"] == 1 and gres["TN"] == 3 and gres["U"] >= 48 * 64
    assert metrics["grec"]["Precision@(F1=1, IoU>=0.5)"] == 0.0


def test_eval_cli_prints_the_generalized_table(tmp_path, capsys):
    root = write_grefcoco(tmp_path / "d")
    prepare(fmt="grefcoco", data_root=root, dataset="grefcoco", image_root=root / "train2014", out=tmp_path / "p",
            progress=False, skip_bad=True)
    model = build_model("tiny", img_size=32, patch_size=8, pretrain_img_size=32, window_size=2, existence=True)
    model.save_pretrained(tmp_path / "ck")
    assert main(["eval", "--checkpoint", str(tmp_path / "ck"), "--data", str(tmp_path / "p"), "--json",
                 str(tmp_path / "e.json"), "--num-workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "GRES gIoU" in printed and "N-acc" in printed
    val = json.loads((tmp_path / "e.json").read_text())["results"]["val"]
    assert {"gIoU", "cIoU", "N-acc", "T-acc", "gres", "grec", "min_exists"} <= set(val)
    assert val["gres"]["N-acc (ReLA code)"] <= val["N-acc"] or val["N-acc"] == 0
