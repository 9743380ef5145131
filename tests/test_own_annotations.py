"""`vglaw prepare --format own`: your own annotation files (JSONL, CSV, parquet), bad records,
EXIF orientation, and fine-tuning a checkpoint on the result."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vglaw.cli import main
from vglaw.data.masks import decode_rle
from vglaw.data.prepare import BadRecordsError, load_split, prepare
from vglaw.data.transforms import load_image
from vglaw.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "vglaw" / "assets" / "examples"
DEMO = ROOT / "vglaw" / "assets" / "demo"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def red_square_photo(path: Path, orientation: int, box=(5, 10, 25, 20), size=(60, 40)) -> None:
    """A stored ``size`` image, red inside ``box`` (x0, y0, x1, y1 of the stored pixels), tagged
    with an EXIF ``orientation``."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[box[1]:box[3], box[0]:box[2], 0] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=100)


def red_extent(image: Image.Image) -> list[float]:
    """x0, y0, x1, y1 (pixel edges) of the red pixels of an image, as it is displayed."""
    ys, xs = np.nonzero(np.asarray(image)[..., 0] > 128)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_predict_results_are_prepared_as_they_are_and_fine_tune_the_demo(tmp_path):
    results = tmp_path / "results.jsonl"
    assert main(["predict", "--checkpoint", str(DEMO), "--pairs", str(EXAMPLES / "pairs.jsonl"), "--masks",
                 "--out", str(results), "--num-workers", "0"]) == 0
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert all("mask_rle" in line for line in lines)
    prepared = tmp_path / "prepared"
    assert main(["prepare", "--format", "own", "--data-root", str(results), "--images", str(EXAMPLES),
                 "--out", str(prepared)]) == 0
    meta, records = load_split(prepared, "train")
    assert meta["format"] == "own" and meta["splits"] == {"train": len(lines)}
    for line, record in zip(lines, records):
        # the target set the answer names (the demo model has the existence output): its boxes
        xywh = [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in line["boxes"]]
        if line["no_target"]:
            assert record["no_target"] and record["boxes"] == []
        elif len(xywh) == 1:  # one object: the box head's box, as a plain record
            assert line["boxes"] == [line["box_xyxy"]] and record["box"] == pytest.approx(xywh[0])
        else:
            assert record["boxes"] == xywh  # whole pixels: the parts of the mask
        assert (record["sentence"], record["image"]) == (line["text"], line["image"])
        assert (record["width"], record["height"]) == (line["width"], line["height"])
        assert decode_rle(record["mask"]).sum() == line["mask_area"]
    out = tmp_path / "run"
    assert main(["train", "--config", str(ROOT / "configs" / "finetune.yaml"), f"model.init_from={DEMO}",
                 f"data.prepared={prepared}", "data.eval_splits=[train]", "run.max_steps=2", f"run.out={out}",
                 "data.num_workers=0", "optim.batch_size=2", "optim.effective_batch=2"]) == 0
    assert (out / "checkpoints" / "last.pt").is_file()


def test_bad_records_are_listed_with_their_reasons_and_skip_bad_keeps_the_rest(tmp_path):
    good = {"image": "shapes_0.jpg", "text": "the leftmost shape", "box_xyxy": [8, 133, 52, 173], "split": "val"}
    rows = [good,
            {"image": "shapes_0.jpg", "box_xyxy": [8, 133, 52, 173]},  # no text
            {"image": "shapes_0.jpg", "text": "x"},  # no box
            {"image": "shapes_0.jpg", "text": 7, "box_xyxy": [8, 133, 52, 173]},
            {"image": "shapes_0.jpg", "text": "x", "box_xyxy": ["a", 1, 2, 3]},
            {"image": "shapes_0.jpg", "text": "x", "box_xyxy": [50, 1, 50, 3]},
            {"image": "shapes_0.jpg", "text": "x", "box_xyxy": [1, 2, 3]},
            {"image": "shapes_0.jpg", "text": "x", "box_xyxy": [8, 133, 500, 173]},
            {"image": "shapes_0.jpg", "text": "x", "boxes": [[1, 2, 3, 4], [5, 6, 7]]},
            {"image": "shapes_0.jpg", "text": "nothing there", "no_target": True, "boxes": [[1, 2, 3, 4]]},
            {"image": "nowhere.jpg", "text": "x", "box_xyxy": [1, 2, 3, 4]},
            {"text": "x", "box_xyxy": [1, 2, 3, 4]},
            {"image": "shapes_0.jpg", "text": "x", "box_xyxy": [math.nan, 2, 3, 4]}]  # JSON's NaN
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    with pytest.raises(BadRecordsError) as e:
        prepare(fmt="own", data_root=path, dataset="mine", image_root=EXAMPLES, out=tmp_path / "out", progress=False)
    reasons = [b["reason"] for b in e.value.bad]
    assert len(reasons) == len(rows) - 1  # every row but the good one
    assert reasons[0] == "no text"
    assert reasons[1] == "no box_xyxy (nor boxes, nor no_target: true)"
    assert reasons[2] == "text must be a string, got 7"
    assert reasons[3].startswith("box_xyxy must be four numbers")
    assert reasons[4] == "box_xyxy [50, 1, 50, 3] needs x1 > x0 and y1 > y0"
    assert reasons[5].startswith("box_xyxy must be four numbers")
    assert reasons[6] == "box_xyxy [8, 133, 500, 173] lies outside the 213x194 image frame"
    assert reasons[7] == "each of boxes must be four numbers x0, y0, x1, y1, got [5, 6, 7]"
    assert reasons[8] == "a no_target record names no box (it has boxes)"
    assert reasons[9].startswith("image file missing")
    assert reasons[10].startswith("image must be a path")
    assert reasons[11] == "box_xyxy [nan, 2, 3, 4] is not finite"
    assert not (tmp_path / "out").exists()
    meta = prepare(fmt="own", data_root=path, dataset="mine", image_root=EXAMPLES, out=tmp_path / "out",
                   skip_bad=True, progress=False)
    assert meta["splits"] == {"val": 1}
    assert len(json.loads((tmp_path / "out" / "dropped.json").read_text())) == len(rows) - 1


def test_csv_and_parquet_hold_boxes_and_masks_as_json(tmp_path):
    polygon = [[10, 140, 50, 140, 50, 170, 10, 170]]
    (tmp_path / "mine.csv").write_text('image,text,box_xyxy,polygon,split\n'
                                       f'shapes_0.jpg,the leftmost shape,"[10, 140, 50, 170]","{polygon}",val\n'
                                       'shapes_1.jpg,the topmost shape,"[1, 2, 3, 4]",,\n')  # empty: absent
    prepare(fmt="own", data_root=tmp_path / "mine.csv", dataset="mine", image_root=EXAMPLES, out=tmp_path / "csv",
            progress=False)
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist([{"image": "shapes_0.jpg", "text": "the leftmost shape",
                                          "box_xyxy": [10.0, 140.0, 50.0, 170.0], "split": "val"}]),
                   tmp_path / "mine.parquet")
    prepare(fmt="own", data_root=tmp_path / "mine.parquet", dataset="mine", image_root=EXAMPLES,
            out=tmp_path / "parquet", progress=False)
    assert load_split(tmp_path / "csv", "train")[1][0]["mask"] is None
    (record,), (same,) = load_split(tmp_path / "csv", "val")[1], load_split(tmp_path / "parquet", "val")[1]
    assert record["box"] == same["box"] == [10.0, 140.0, 40.0, 30.0]
    assert decode_rle(record["mask"])[140:170, 10:50].all() and decode_rle(record["mask"]).sum() == 40 * 30


@pytest.mark.parametrize("orientation", [3, 6, 8, 5])
def test_exif_orientation_needs_the_frame_and_stored_boxes_and_masks_are_turned_as_the_loader_turns_the_image(
        tmp_path, orientation):
    images = tmp_path / "images"
    images.mkdir()
    red_square_photo(images / "phone.jpg", orientation)
    red_square_photo(images / "plain.jpg", 1)
    stored_box, polygon = [5, 10, 25, 20], [[5, 10, 25, 10, 25, 20, 5, 20]]
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"image": "plain.jpg", "text": "the red square", "box_xyxy": stored_box},
        {"image": "phone.jpg", "text": "the red square", "box_xyxy": stored_box, "polygon": polygon},
        {"image": "phone.jpg", "text": "the red square again", "box_xyxy": stored_box}])
    with pytest.raises(InputError) as e:
        prepare(fmt="own", data_root=path, dataset="mine", image_root=images, out=tmp_path / "out", progress=False)
    message = str(e.value)
    assert "\n" not in message and "1 image(s)" in message and "phone.jpg" in message
    assert f"orientation {orientation}" in message and "--exif" in message
    assert not (tmp_path / "out").exists()

    prepare(fmt="own", data_root=path, dataset="mine", image_root=images, out=tmp_path / "stored", exif="stored",
            progress=False)
    plain, phone, _ = load_split(tmp_path / "stored", "train")[1]
    shown = load_image(images / "phone.jpg")  # what training reads: the image as displayed
    x0, y0, x1, y1 = red_extent(shown)
    assert plain["box"] == [5.0, 10.0, 20.0, 10.0]
    assert (phone["width"], phone["height"]) == shown.size
    assert phone["box"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
    mask = decode_rle(phone["mask"]).astype(bool)
    assert mask.shape == (shown.height, shown.width)
    assert (mask == (np.asarray(shown)[..., 0] > 128)).mean() > 0.98  # JPEG edges aside

    prepare(fmt="own", data_root=path, dataset="mine", image_root=images, out=tmp_path / "displayed",
            exif="displayed", progress=False)
    assert load_split(tmp_path / "displayed", "train")[1][1]["box"] == [5.0, 10.0, 20.0, 10.0]


def test_a_box_outside_the_displayed_frame_of_a_rotated_photo_is_a_bad_record(tmp_path):
    red_square_photo(tmp_path / "phone.jpg", 6)  # stored 60x40, displayed 40x60
    path = write_jsonl(tmp_path / "mine.jsonl", [{"image": "phone.jpg", "text": "x", "box_xyxy": [45, 5, 55, 15]}])
    with pytest.raises(BadRecordsError) as e:
        prepare(fmt="own", data_root=path, dataset="mine", image_root=tmp_path, out=tmp_path / "out",
                exif="displayed", progress=False)
    assert e.value.bad[0]["reason"] == "box_xyxy [45, 5, 55, 15] lies outside the 40x60 displayed frame"
    prepare(fmt="own", data_root=path, dataset="mine", image_root=tmp_path, out=tmp_path / "out", exif="stored",
            progress=False)


def test_cli_one_line_for_an_exif_photo(tmp_path, capsys):
    red_square_photo(tmp_path / "phone.jpg", 8)
    path = write_jsonl(tmp_path / "mine.jsonl", [{"image": "phone.jpg", "text": "x", "box_xyxy": [5, 10, 25, 20]}])
    assert main(["prepare", "--format", "own", "--data-root", str(path), "--images", str(tmp_path),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "phone.jpg" in err and "--exif" in err
    assert main(["prepare", "--format", "own", "--data-root", str(path), "--images", str(tmp_path),
                 "--out", str(tmp_path / "out"), "--exif", "stored"]) == 0
    assert math.isclose(load_split(tmp_path / "out", "train")[1][0]["box"][2], 10.0)
