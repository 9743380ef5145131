"""Every reader on files laid out as the downloads ship them, not as the readers read them.

The trees, file names and columns follow the releases: REFER's refs(<splitBy>).p and
instances.json (a ref's own ``file_name`` is suffixed with its annotation and names no file),
COCO's ``train2014/COCO_train2014_<12-digit id>.jpg``, REFER's ``saiapr_tc-12.zip`` (the SAIAPR
TC-12 tree ``<id // 1000, 2 digits>/images/<id>.jpg``) and the flat ReSC/TransVG repack
(``referit/images/<id>.jpg``), TransVG's ``<dataset>/<dataset>_<split>.pth`` 5-tuples, SeqTR's
``annotations/<dataset>/instances.json`` with its ``images/mscoco/train2014`` and
``images/saiaprtc12`` folders, and the Hub's jxu124/refcoco (``file_name``, ``image_path``,
``raw_image_info``) and lmms-lab/RefCOCO (embedded JPEGs) parquet files. Each image is painted in
a colour of its own id, so a sample that opens the wrong image fails as surely as a missing one.
"""
import io
import json
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from vglaw.data import load_split, prepare

COCO_IDS, SAIAPR_IDS = (581857, 9, 304122), (25075, 8756, 40012)
SPLITS = {0: "train", 1: "train", 2: "val"}


def colour(image_id: int) -> tuple[int, int, int]:
    return (image_id * 37 % 200 + 30, image_id * 91 % 200 + 30, image_id * 53 % 200 + 30)


def world(ids) -> list[dict]:
    """Images (each a size of its own) with two annotated objects each, two expressions per object."""
    images = []
    for k, image_id in enumerate(ids):
        w, h = 64 + 8 * k, 48 + 4 * k
        anns = [{"id": image_id * 10 + j, "bbox": [4.0 + 10 * j, 5.0, 12.0, 20.0 + j],
                 "sentences": [f"thing {j} of image {image_id}, take {t}" for t in range(2)]} for j in range(2)]
        images.append({"id": image_id, "width": w, "height": h, "split": SPLITS[k], "anns": anns})
    return images


def paint(path: Path, img: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (img["width"], img["height"]), colour(img["id"])).save(path, quality=95)


def coco_name(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


def saiapr_nested(image_id: int) -> str:
    return f"{image_id // 1000:02d}/images/{image_id}.jpg"


def polygon(box, img=None) -> list[list[float]]:
    x, y, w, h = box
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def expected(images) -> dict[str, tuple[int, list[float]]]:
    return {s: (img["id"], ann["bbox"]) for img in images for ann in img["anns"] for s in ann["sentences"]}


def assert_every_sample_opens_its_image(out: Path, images) -> None:
    """Every prepared sample: its image opens, is the sample's image (colour, size), and its box
    is the annotation's. Nothing is missing."""
    want = expected(images)
    meta = json.loads((out / "meta.json").read_text())
    root = Path(meta["image_root"])
    seen = 0
    for split in meta["splits"]:
        for r in load_split(out, split)[1]:
            image_id, box = want[r["sentence"]]
            with Image.open(root / r["image"]) as img:
                img.load()
                assert img.size == (r["width"], r["height"]), r
                assert max(abs(a - b) for a, b in zip(img.getpixel((2, 2)), colour(image_id))) <= 6, r
            assert r["box"] == pytest.approx(box, abs=1e-4)
            seen += 1
    assert seen == len(want)


def prepared_opens_every_image(out: Path, images, *, image_root: Path, name_of, **prepare_args) -> None:
    """Paint ``images`` under ``image_root`` as ``name_of(id)``, prepare, and check every sample."""
    for img in images:
        paint(image_root / name_of(img["id"]), img)
    prepare(image_root=image_root, out=out, progress=False, **prepare_args)
    assert_every_sample_opens_its_image(out, images)


def refer_files(root: Path, dataset: str, split_by: str, images, *, image_file_name, ann_id=lambda a: a["id"],
                segmentation=polygon) -> None:
    """REFER's refs(<splitBy>).p (a protocol-2 pickle, as its Python 2 tools wrote it) and instances.json."""
    refs, annotations = [], []
    for img in images:
        for j, ann in enumerate(img["anns"]):
            sentences = [{"sent_id": img["id"] * 100 + j * 10 + t, "sent": s, "raw": s, "tokens": s.split()}
                         for t, s in enumerate(ann["sentences"])]
            suffixed = f"{Path(image_file_name(img['id'])).stem.split('/')[-1]}_{j + 1}.jpg"
            refs.append({"ref_id": img["id"] * 10 + j, "ann_id": ann_id(ann), "image_id": img["id"], "split": img["split"],
                         "category_id": 1, "file_name": suffixed, "sent_ids": [s["sent_id"] for s in sentences],
                         "sentences": sentences})
            annotations.append({"id": ann_id(ann), "image_id": img["id"], "bbox": ann["bbox"], "category_id": 1,
                                "segmentation": segmentation(ann["bbox"], img), "area": ann["bbox"][2] * ann["bbox"][3],
                                "iscrowd": 0})
    folder = root / dataset
    folder.mkdir(parents=True)
    (folder / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=2))
    (folder / "instances.json").write_text(json.dumps({
        "images": [{"id": img["id"], "file_name": image_file_name(img["id"]), "width": img["width"],
                    "height": img["height"]} for img in images],
        "annotations": annotations, "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}]}))


def test_refer_refcoco_with_coco_train2014(tmp_path):
    images = world(COCO_IDS)
    refer_files(tmp_path / "refer", "refcoco", "unc", images, image_file_name=coco_name)
    for img in images:
        paint(tmp_path / "coco/train2014" / coco_name(img["id"]), img)
    prepare(fmt="refer", data_root=tmp_path / "refer", dataset="refcoco", split_by="unc",
            image_root=tmp_path / "coco/train2014", out=tmp_path / "p", progress=False)
    assert_every_sample_opens_its_image(tmp_path / "p", images)


def rle_list(box, img) -> list[dict]:
    """ReferItGame's segmentation: a list of RLE dicts (compressed counts as str) over the image."""
    import numpy as np
    from pycocotools import mask as mask_utils

    x, y, w, h = (int(v) for v in box)
    m = np.zeros((img["height"], img["width"]), np.uint8)
    m[y:y + h, x:x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return [{"size": rle["size"], "counts": rle["counts"].decode()}]


@pytest.mark.parametrize("tree", ["saiapr_tc-12.zip", "ReSC repack"])
@pytest.mark.parametrize("listed", ["<id>.jpg", "nested"])
def test_refer_refclef_in_both_saiapr_trees(tmp_path, tree, listed):
    images = world(SAIAPR_IDS)
    name = (lambda i: f"{i}.jpg") if listed == "<id>.jpg" else saiapr_nested
    refer_files(tmp_path / "refer", "refclef", "berkeley", images, image_file_name=name,
                ann_id=lambda a: f"{a['id'] // 10}_{a['id'] % 10 + 1}", segmentation=rle_list)
    if tree == "saiapr_tc-12.zip":  # unzipped: saiapr_tc-12/25/images/25075.jpg
        root = tmp_path / "images/saiapr_tc-12"
        for img in images:
            paint(root / saiapr_nested(img["id"]), img)
    else:  # ln_data/referit/images/25075.jpg
        root = tmp_path / "ln_data/referit/images"
        for img in images:
            paint(root / f"{img['id']}.jpg", img)
    prepare(fmt="refer", data_root=tmp_path / "refer", dataset="refclef", split_by="berkeley", image_root=root,
            out=tmp_path / "p", progress=False)
    assert_every_sample_opens_its_image(tmp_path / "p", images)


def test_refclef_without_its_images_names_every_path_tried(tmp_path):
    images = world(SAIAPR_IDS)
    refer_files(tmp_path / "refer", "refclef", "berkeley", images, image_file_name=lambda i: f"{i}.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as err:
        prepare(fmt="refer", data_root=tmp_path / "refer", dataset="refclef", split_by="berkeley",
                image_root=tmp_path / "empty", out=tmp_path / "p", progress=False)
    first = images[0]["id"]
    for path in (f"empty/{saiapr_nested(first)}", f"empty/{first}.jpg"):
        assert path in str(err.value)


def transvg_files(folder: Path, dataset: str, images, *, img_file, xyxy: bool) -> None:
    """TransVG / ReSC split files: (img_file, mask_file, bbox, phrase, attri) per expression."""
    folder.mkdir(parents=True)
    for split in ("train", "val"):
        items = []
        for img in (i for i in images if i["split"] == split):
            for ann in img["anns"]:
                x, y, w, h = ann["bbox"]
                box = [x, y, x + w, y + h] if xyxy else [x, y, w, h]
                items += [(img_file(img["id"]), f"{ann['id']}.pth", box, s, []) for s in ann["sentences"]]
        torch.save(items, folder / f"{dataset}_{split}.pth")


def test_transvg_unc_with_coco_and_referit_with_its_flat_images(tmp_path):
    images = world(COCO_IDS)
    transvg_files(tmp_path / "data/unc", "unc", images, img_file=coco_name, xyxy=False)
    prepared_opens_every_image(tmp_path / "p", images, name_of=coco_name, fmt="transvg", data_root=tmp_path / "data",
                               dataset="unc", image_root=tmp_path / "ln_data/other/images/mscoco/images/train2014")
    images = world(SAIAPR_IDS)
    transvg_files(tmp_path / "data/referit", "referit", images, img_file=lambda i: f"{i}.jpg", xyxy=True)
    prepared_opens_every_image(tmp_path / "q", images, name_of=lambda i: f"{i}.jpg", fmt="transvg",
                               data_root=tmp_path / "data", dataset="referit",
                               image_root=tmp_path / "ln_data/referit/images")


def seqtr_file(path: Path, images, *, masks: bool) -> None:
    """SeqTR's instances.json: {split: [{image_id, bbox, expressions, width, height, mask}]}."""
    data: dict = {}
    for img in images:
        for ann in img["anns"]:
            data.setdefault(img["split"], []).append(
                {"image_id": img["id"], "ann_id": ann["id"], "bbox": ann["bbox"], "expressions": ann["sentences"],
                 "width": img["width"], "height": img["height"], "category_id": 1,
                 **({"mask": polygon(ann["bbox"])} if masks else {})})
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))


def test_seqtr_refcoco_and_referitgame_with_their_image_folders(tmp_path):
    images = world(COCO_IDS)
    seqtr_file(tmp_path / "data/annotations/refcoco-unc/instances.json", images, masks=True)
    prepared_opens_every_image(tmp_path / "p", images, name_of=coco_name, fmt="seqtr",
                               data_root=tmp_path / "data/annotations", dataset="refcoco-unc",
                               image_root=tmp_path / "data/images/mscoco/train2014")
    images = world(SAIAPR_IDS)
    seqtr_file(tmp_path / "data/annotations/referitgame-berkeley/instances.json", images, masks=False)
    prepared_opens_every_image(tmp_path / "q", images, name_of=lambda i: f"{i}.jpg", fmt="seqtr",
                               data_root=tmp_path / "data/annotations", dataset="referitgame-berkeley",
                               image_root=tmp_path / "data/images/saiaprtc12")


def test_jxu124_parquet_takes_the_image_from_raw_image_info(tmp_path):
    images = world(COCO_IDS)
    file_split = {"train": "train", "val": "validation"}
    rows: dict = {}
    for img in images:
        info = {"license": 3, "file_name": coco_name(img["id"]), "height": img["height"], "width": img["width"],
                "id": img["id"]}
        for j, ann in enumerate(img["anns"]):
            x, y, w, h = ann["bbox"]
            coco_ann = {"id": ann["id"], "image_id": img["id"], "bbox": ann["bbox"], "segmentation": polygon(ann["bbox"]),
                        "area": w * h, "iscrowd": 0, "category_id": 1}
            sentences = [{"raw": s, "sent": s, "sent_id": img["id"] * 100 + t, "tokens": s.split()}
                         for t, s in enumerate(ann["sentences"])]
            rows.setdefault(file_split[img["split"]], []).append({
                "sent_ids": [s["sent_id"] for s in sentences], "file_name": f"{coco_name(img['id'])[:-4]}_{j + 1}.jpg",
                "ann_id": ann["id"], "ref_id": img["id"] * 10 + j, "image_id": img["id"], "split": img["split"],
                "sentences": sentences, "category_id": 1, "raw_anns": json.dumps(coco_ann),
                "raw_image_info": json.dumps(info), "raw_sentences": json.dumps(sentences),
                "image_path": f"coco/train2014/{coco_name(img['id'])}", "bbox": [x, y, x + w, y + h],
                "captions": ann["sentences"], "global_image_id": f"coco.{img['id']}", "anns_id": str(ann["id"])})
    for split, split_rows in rows.items():
        (tmp_path / "refcoco/data").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(split_rows), tmp_path / f"refcoco/data/{split}-00000-of-00001.parquet")
    for img in images:
        paint(tmp_path / "coco/train2014" / coco_name(img["id"]), img)
    prepare(fmt="hf-parquet", data_root=tmp_path / "refcoco", dataset="refcoco", image_root=tmp_path / "coco/train2014",
            out=tmp_path / "p", progress=False)
    assert_every_sample_opens_its_image(tmp_path / "p", images)


def test_lmms_parquet_with_its_embedded_images(tmp_path):
    images = world(COCO_IDS)
    rows = []
    for img in images:
        buf = io.BytesIO()
        Image.new("RGB", (img["width"], img["height"]), colour(img["id"])).save(buf, "JPEG", quality=95)
        for ann in img["anns"]:
            rows.append({"question_id": str(ann["id"]), "image": {"bytes": buf.getvalue(), "path": None},
                         "question": "Please provide the bounding box coordinate of the region this sentence "
                                     "describes:", "answer": ann["sentences"],
                         "segmentation": polygon(ann["bbox"])[0], "bbox": ann["bbox"], "iscrowd": 0,
                         "file_name": coco_name(img["id"])})
    (tmp_path / "RefCOCO/data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "RefCOCO/data/val-00000-of-00001.parquet")
    prepare(fmt="hf-parquet", data_root=tmp_path / "RefCOCO", dataset="refcoco", image_root=None,
            out=tmp_path / "p", progress=False)
    assert_every_sample_opens_its_image(tmp_path / "p", images)
