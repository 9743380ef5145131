"""Data as users have it: every COCO segmentation form (ReferItGame's list of RLEs included),
SeqTR's annotation folders, the Hugging Face Hub's parquet copies, and pretraining leakage."""
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from vglaw.cli import main
from vglaw.data import BadRecordsError, load_split, prepare
from vglaw.data.leakage import leakage
from vglaw.data.masks import decode_rle, encode_rle
from vglaw.data.readers import read_refer, read_seqtr
from vglaw.data.synth import generate


def rle_of(mask: np.ndarray, counts_as_str: bool = True) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode() if counts_as_str else rle["counts"]}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths of the column-major mask, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], changes])).tolist()}


def refer_api_mask(segmentation, h: int, w: int) -> np.ndarray:
    """The REFER API's getMask, written out: polygons through frPyObjects, RLEs as given, the
    decoded masks summed over the last axis."""
    rle = mask_utils.frPyObjects(segmentation, h, w) if isinstance(segmentation[0], list) else segmentation
    m = mask_utils.decode(rle)
    return (np.sum(m, axis=2) if m.ndim == 3 else m).astype(np.uint8)


# ----------------------------------------------------------------------------- segmentation forms
def test_refclef_segmentations_in_every_form_decode_to_the_refer_apis_masks(tmp_path):
    h, w = 30, 40
    left, right = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    left[5:20, 2:15] = 1
    right[10:25, 12:30] = 1  # overlaps left in rows 10-19, columns 12-14
    polygon = [[2, 5, 15, 5, 15, 20, 2, 20]]
    forms = {1: polygon, 2: rle_of(left), 3: {**rle_of(left, counts_as_str=False)}, 4: uncompressed_rle(right),
             5: [rle_of(left), rle_of(right)], 6: "not a segmentation"}
    refs = [{"ref_id": i, "ann_id": i, "image_id": 77, "split": "test", "category_id": 1,
             "sentences": [{"sent_id": i, "sent": f"thing {i}"}]} for i in forms]
    anns = [{"id": i, "image_id": 77, "bbox": [2, 5, 28, 20], "segmentation": seg, "category_id": 1}
            for i, seg in forms.items()]
    anns[2]["segmentation"] = {**rle_of(left), "counts": rle_of(left)["counts"]}  # a dict with str counts
    (tmp_path / "refclef").mkdir()
    (tmp_path / "refclef/refs(berkeley).p").write_bytes(pickle.dumps(refs, protocol=2))
    (tmp_path / "refclef/instances.json").write_text(json.dumps(
        {"images": [{"id": 77, "width": w, "height": h}], "annotations": anns, "categories": [{"id": 1}]}))
    records = {r["ann_id"]: r for r in read_refer(tmp_path, "refclef", "berkeley")}
    assert records[1]["image"] == "77.jpg"  # saiapr_tc-12 names
    # polygons and the list of RLEs as the REFER API decodes them; single RLE dicts as drawn
    expected = {1: refer_api_mask(polygon, h, w) > 0, 2: left > 0, 3: left > 0, 4: right > 0,
                5: refer_api_mask(forms[5], h, w) > 0}
    for i, mask in expected.items():
        assert np.array_equal(decode_rle(records[i]["mask"]) > 0, mask), i
    union = decode_rle(records[5]["mask"])
    assert union.sum() == (left | right).sum() == left.sum() + right.sum() - 10 * 3
    assert np.array_equal(decode_rle(records[4]["mask"]), right)
    assert "annotation 6" in records[6]["error"] and "unsupported segmentation" in records[6]["error"]
    (tmp_path / "img").mkdir()
    Image.new("RGB", (w, h)).save(tmp_path / "img/77.jpg")
    with pytest.raises(BadRecordsError, match="annotation 6 in .*instances.json: unsupported segmentation"):
        prepare(fmt="refer", data_root=tmp_path, dataset="refclef", split_by="berkeley", image_root=tmp_path / "img",
                out=tmp_path / "p", progress=False)
    assert main(["prepare", "--data-root", str(tmp_path), "--dataset", "refclef", "--split-by", "berkeley",
                 "--images", str(tmp_path / "img"), "--out", str(tmp_path / "p"), "--skip-bad"]) == 0
    assert json.loads((tmp_path / "p/meta.json").read_text())["splits"] == {"test": 5}
    with pytest.raises(ValueError, match="unsupported segmentation"):
        encode_rle([{"size": [2, 2]}], 2, 2)


# ----------------------------------------------------------------------------- SeqTR folders
def test_seqtr_annotations_folder_file_and_a_clear_error(tmp_path):
    data = {"val": [{"image_id": 9, "bbox": [1, 1, 4, 4], "expressions": ["a", "b"], "width": 10, "height": 8,
                     "mask": [[1, 1, 5, 1, 5, 5, 1, 5]]}]}
    (tmp_path / "annotations/refcoco-unc").mkdir(parents=True)
    (tmp_path / "annotations/refcoco-unc/instances.json").write_text(json.dumps(data))
    from_folder = read_seqtr(tmp_path / "annotations", "refcoco-unc")
    from_file = read_seqtr(tmp_path / "annotations/refcoco-unc/instances.json", "refcoco-unc")
    assert from_folder == from_file and [r["sentence"] for r in from_folder] == ["a", "b"]
    assert from_folder[0]["image"] == "COCO_train2014_000000000009.jpg"
    with pytest.raises(FileNotFoundError, match="tried: .*refcoco-umd/instances.json, .*annotations/instances.json"):
        read_seqtr(tmp_path / "annotations", "refcoco-umd")
    Image.new("RGB", (10, 8)).save(tmp_path / "COCO_train2014_000000000009.jpg")
    assert main(["prepare", "--format", "seqtr", "--data-root", str(tmp_path / "annotations"), "--dataset",
                 "refcoco-unc", "--images", str(tmp_path), "--out", str(tmp_path / "p")]) == 0
    assert load_split(tmp_path / "p", "val")[1][0]["sentence"] == "a"


# ----------------------------------------------------------------------------- Hub parquet
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    generate(root, seed=5, split_sizes={"train": 4, "val": 2, "testA": 2, "testB": 1}, min_size=48, max_size=64,
             progress=False)
    refs = pickle.loads((root / "synthref/refs(unc).p").read_bytes())
    instances = json.loads((root / "synthref/instances.json").read_text())
    prepare(fmt="refer", data_root=root, dataset="synthref", image_root=root / "images", out=root / "refer_prep",
            progress=False)
    return root, refs, instances


JXU124_FILE_SPLIT = {"train": "train", "val": "validation", "testA": "test", "testB": "testB"}


def jxu124_rows(refs, instances):
    """Rows of jxu124/refcoco's schema (one per ref) for the synthetic refs."""
    images = {img["id"]: img for img in instances["images"]}
    anns = {a["id"]: a for a in instances["annotations"]}
    rows = []
    for ref in refs:
        ann, img = anns[ref["ann_id"]], images[ref["image_id"]]
        x, y, bw, bh = ann["bbox"]
        rows.append({"ref_id": ref["ref_id"], "ann_id": ref["ann_id"], "image_id": ref["image_id"],
                     "category_id": ref["category_id"], "split": ref["split"],
                     "sent_ids": [s["sent_id"] for s in ref["sentences"]],
                     "sentences": [{"raw": s["raw"], "sent": s["sent"], "sent_id": s["sent_id"],
                                    "tokens": s["tokens"]} for s in ref["sentences"]],
                     "file_name": ref["file_name"],  # the ref's, suffixed: no such file
                     "image_path": f"coco/train2014/{img['file_name']}",
                     "raw_anns": json.dumps(ann), "raw_image_info": json.dumps(img),
                     "raw_sentences": json.dumps(ref["sentences"]),
                     "bbox": [x, y, x + bw, y + bh],  # xyxy, as third parties describe it: not to be used
                     "captions": [s["sent"] for s in ref["sentences"]], "global_image_id": f"coco.{ref['image_id']}",
                     "anns_id": str(ref["ann_id"])})
    return rows


def write_parquet(folder, file_split, rows):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{file_split}-00000-of-00001.parquet")


def comparable(records):
    return sorted((r["split"], r["sent_id"], r["image"], r["box"], r["sentence"], r["mask"]["counts"],
                   r["width"], r["height"]) for r in records)


def test_jxu124_parquet_gives_the_refer_records_maps_splits_and_reports_counts(tmp_path, synth):
    root, refs, instances = synth
    rows = jxu124_rows(refs, instances)
    for split, file_split in JXU124_FILE_SPLIT.items():
        write_parquet(tmp_path / "refcoco/data", file_split, [r for r in rows if r["split"] == split])
    assert main(["prepare", "--format", "hf-parquet", "--data-root", str(tmp_path / "refcoco"), "--dataset", "refcoco",
                 "--images", str(root / "images"), "--out", str(tmp_path / "p")]) == 0
    meta = json.loads((tmp_path / "p/meta.json").read_text())
    refer_meta = json.loads((root / "refer_prep/meta.json").read_text())
    assert meta["splits"] == refer_meta["splits"] and set(meta["splits"]) == {"train", "val", "testA", "testB"}
    for split in meta["splits"]:
        assert comparable(load_split(tmp_path / "p", split)[1]) == comparable(load_split(root / "refer_prep", split)[1])
    # each split's ref count is reported against the REFER release's, not corrected
    check = meta["split_check"]
    assert check["val"]["refer_refs"] == 3811 and check["val"]["refs"] == sum(r["split"] == "val" for r in rows)
    assert "not the benchmark split" in check["val"]["note"]
    # the row's own split column wins; without it, the file split is mapped (test -> testA)
    for r in rows:
        r["split"] = ""
    write_parquet(tmp_path / "nosplit/data", "test", [r for r in rows if r["ref_id"] == refs[0]["ref_id"]])
    meta = prepare(fmt="hf-parquet", data_root=tmp_path / "nosplit", dataset="refcoco", image_root=root / "images",
                   out=tmp_path / "p2", progress=False)
    assert list(meta["splits"]) == ["testA"]


def test_parquet_records_are_validated_like_every_reader(tmp_path, synth):
    root, refs, instances = synth
    rows = jxu124_rows(refs, instances)[:3]
    rows[0]["raw_image_info"] = json.dumps({**json.loads(rows[0]["raw_image_info"]),
                                            "file_name": "COCO_train2014_000000099999.jpg"})  # missing image
    ann = json.loads(rows[1]["raw_anns"])
    rows[1]["raw_anns"] = json.dumps({**ann, "bbox": [1, 1, 0, 4]})  # zero-width box
    rows[2]["sentences"] = [{**rows[2]["sentences"][0], "sent": "  "}]  # empty sentence
    write_parquet(tmp_path / "bad/data", "train", rows)
    kwargs = dict(fmt="hf-parquet", data_root=tmp_path / "bad", dataset="refcoco", image_root=root / "images",
                  progress=False)
    with pytest.raises(BadRecordsError) as err:
        prepare(out=tmp_path / "p", **kwargs)
    reasons = " | ".join(b["reason"] for b in err.value.bad)
    assert "image file missing" in reasons and "zero or negative size" in reasons and "empty sentence" in reasons
    prepare(out=tmp_path / "p", skip_bad=True, **kwargs)
    assert len(json.loads((tmp_path / "p/dropped.json").read_text())) == len(err.value.bad)
    (tmp_path / "odd/data").mkdir(parents=True)
    pq.write_table(pa.table({"question": ["x"]}), tmp_path / "odd/data/val-00000-of-00001.parquet")
    with pytest.raises(ValueError, match="not a known RefCOCO parquet layout; its columns are \\['question'\\]"):
        prepare(out=tmp_path / "q", **{**kwargs, "data_root": tmp_path / "odd"})
    with pytest.raises(ValueError, match="--images is required"):
        prepare(out=tmp_path / "q", **{**kwargs, "image_root": None})


def test_lmms_parquet_writes_its_embedded_images_and_gives_the_refer_records(tmp_path, synth):
    root, refs, instances = synth
    images = {img["id"]: img for img in instances["images"]}
    anns = {a["id"]: a for a in instances["annotations"]}
    rows = []
    for ref in (r for r in refs if r["split"] == "val"):
        ann, img = anns[ref["ann_id"]], images[ref["image_id"]]
        rows.append({"question_id": str(ref["ref_id"]),
                     "image": {"bytes": (root / "images" / img["file_name"]).read_bytes(), "path": img["file_name"]},
                     "question": "Please carefully observe the area circled in the image ...",
                     "answer": [s["sent"] for s in ref["sentences"]], "segmentation": ann["segmentation"][0],
                     "bbox": ann["bbox"], "iscrowd": 0, "file_name": img["file_name"]})
    table = pa.Table.from_pylist(rows).cast(pa.schema([
        ("question_id", pa.string()), ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("question", pa.string()), ("answer", pa.list_(pa.string())), ("segmentation", pa.list_(pa.float32())),
        ("bbox", pa.list_(pa.float32())), ("iscrowd", pa.int8()), ("file_name", pa.string())]))
    (tmp_path / "RefCOCO/data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "RefCOCO/data/val-00000-of-00001.parquet")
    meta = prepare(fmt="hf-parquet", data_root=tmp_path / "RefCOCO", dataset="RefCOCO", image_root=None,
                   out=tmp_path / "p", progress=False)
    assert meta["image_root"] == str((tmp_path / "p/images").resolve())
    ours, theirs = load_split(tmp_path / "p", "val")[1], load_split(root / "refer_prep", "val")[1]
    assert len(ours) == len(theirs) and meta["split_check"]["val"]["refer_refs"] == 3811
    by_text = {(r["image"], r["sentence"]): r for r in theirs}
    for r in ours:
        ref = by_text[(r["image"], r["sentence"])]
        assert (tmp_path / "p/images" / r["image"]).read_bytes() == (root / "images" / r["image"]).read_bytes()
        assert r["box"] == pytest.approx(ref["box"], abs=1e-4) and (r["width"], r["height"]) == (ref["width"], ref["height"])
        iou = mask_utils.iou([r["mask"]], [ref["mask"]], [0])[0, 0]  # float32 polygon vertices
        assert iou > 0.99


# ----------------------------------------------------------------------------- leakage
def test_leakage_counts_images_in_a_coco_file_and_writes_it_clean(tmp_path, synth):
    root, refs, instances = synth
    by_split: dict = {}
    for ref in refs:
        by_split.setdefault(ref["split"], set()).add(ref["image_id"])
    val_image, train_image = sorted(by_split["val"])[0], sorted(by_split["train"])[0]
    coco = {"info": {"description": "a COCO train2017 stand-in"}, "categories": [{"id": 1, "name": "thing"}],
            "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (val_image, train_image, 999_999)],
            "annotations": [{"id": 10 + k, "image_id": i, "bbox": [0, 0, 1, 1]}
                            for k, i in enumerate((val_image, val_image, train_image, 999_999))]}
    (tmp_path / "train2017.json").write_text(json.dumps(coco))
    assert main(["leakage", "--data", str(root / "refer_prep"), str(root / "synthref"), "--coco",
                 str(tmp_path / "train2017.json"), "--write-clean", str(tmp_path / "clean.json"), "--json",
                 str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    for name in ("synthref (refer_prep)", "synthref(unc)"):
        val = report["datasets"][name]["val"]
        assert (val["images"], val["images_in_file"]) == (len(by_split["val"]), 1)
        n_val_sents = sum(len(r["sentences"]) for r in refs if r["image_id"] == val_image)
        assert val["expressions_in_file"] == n_val_sents
        assert report["datasets"][name]["testB"]["images_in_file"] == 0
    clean = json.loads((tmp_path / "clean.json").read_text())
    assert [img["id"] for img in clean["images"]] == [train_image, 999_999]
    assert [a["image_id"] for a in clean["annotations"]] == [train_image, 999_999]
    assert clean["info"] == coco["info"] and clean["categories"] == coco["categories"]
    with pytest.raises(FileNotFoundError, match="neither a prepared dataset"):
        leakage([tmp_path], tmp_path / "train2017.json")
