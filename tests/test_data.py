"""Data: the synthetic REFER set, the readers, prepare's validation, the dataset and the
augmentations (box, mask and text stay consistent)."""
import io
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from torchvision.ops import box_convert

from vglaw.cli import main
from vglaw.data import BadRecordsError, GroundingDataset, collate, load_image, load_tokenizer, prepare
from vglaw.data.masks import decode_rle
from vglaw.data.readers import read_refer, read_seqtr, read_transvg
from vglaw.data.synth import generate
from vglaw.data.transforms import (TrainAugment, crop_keeping_box, eval_transform, has_spatial_word, make_sample,
                                   normalize_canvas, swap_left_right)
from vglaw.model import build_model


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=3, split_sizes={"train": 12, "val": 4, "testA": 2, "testB": 2}, progress=False)
    return root


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_synth_then_prepare_round_trips_every_record(synth, tmp_path):
    assert main(["prepare", "--data-root", str(synth), "--dataset", "synthref", "--images", str(synth / "images"),
                 "--out", str(tmp_path / "prep")]) == 0
    refs = pickle.load(open(synth / "synthref/refs(unc).p", "rb"))
    instances = json.load(open(synth / "synthref/instances.json"))
    anns = {a["id"]: a for a in instances["annotations"]}
    meta = json.loads((tmp_path / "prep/meta.json").read_text())
    expected = {}
    for ref in refs:
        for sent in ref["sentences"]:
            expected[sent["sent_id"]] = (ref, sent["sent"])
    assert sum(meta["splits"].values()) == len(expected)
    for split, count in meta["splits"].items():
        lines = (tmp_path / f"prep/{split}.jsonl").read_text().splitlines()
        assert len(lines) == count == sum(1 for r, _ in expected.values() if r["split"] == split)
        for line in lines:
            rec = json.loads(line)
            ref, sentence = expected[rec["sent_id"]]
            ann = anns[ref["ann_id"]]
            assert rec["sentence"] == sentence and rec["split"] == ref["split"] and rec["box"] == ann["bbox"]
            # the mask is the annotation's polygon, decoded by pycocotools
            h, w = rec["height"], rec["width"]
            poly = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w)))
            assert np.array_equal(decode_rle(rec["mask"]), poly)
            # ... which is the polygon as PIL draws it, up to the one-pixel band where rasterisers differ
            drawn = Image.new("L", (w, h))
            ImageDraw.Draw(drawn).polygon(ann["segmentation"][0], fill=1)
            drawn = torch.from_numpy(np.asarray(drawn).astype(np.float32))[None, None]
            t = torch.from_numpy(poly.astype(np.float32))[None, None]
            dilated = torch.nn.functional.max_pool2d(t, 3, 1, 1)
            eroded = -torch.nn.functional.max_pool2d(-t, 3, 1, 1)
            assert torch.all(drawn <= dilated) and torch.all(eroded <= drawn) and t.sum() > 50


def test_synth_is_deterministic_and_expressions_are_unique(tmp_path):
    a = generate(tmp_path / "a", seed=5, split_sizes={"train": 3}, progress=False)
    b = generate(tmp_path / "b", seed=5, split_sizes={"train": 3}, progress=False)
    assert (a / "refs(unc).p").read_bytes() == (b / "refs(unc).p").read_bytes()
    img_a = (tmp_path / "a/images/COCO_train2014_000000000001.jpg").read_bytes()
    assert img_a == (tmp_path / "b/images/COCO_train2014_000000000001.jpg").read_bytes()


def test_expressions_identify_the_target():
    from vglaw.data.synth import Shape, expressions
    a = Shape("circle", "red", "small", 20, 50, 8)
    b = Shape("circle", "blue", "small", 60, 50, 8)
    c = Shape("square", "red", "large", 100, 50, 15)
    sents = expressions(a, [a, b, c], 120, 100)
    assert {"the red circle", "the leftmost circle", "the red shape left of the blue shape"} <= set(sents)
    assert "the circle" not in sents and "the red shape" not in sents  # ambiguous
    assert "the small circle" not in sents and "the small shape" not in sents


def write_py2_pickle(obj, path):
    """Pickle as Python 2 did: str as byte strings (SHORT_BINSTRING), protocol 2."""
    class Py2Pickler(pickle._Pickler):
        dispatch = dict(pickle._Pickler.dispatch)

        def save_str(self, s):
            data = s.encode("latin1")
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
            self.memoize(s)
        dispatch[str] = save_str

    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def write_refer(root, refs, images, anns):
    (root / "refcoco").mkdir(parents=True)
    write_py2_pickle(refs, root / "refcoco/refs(unc).p")
    (root / "refcoco/instances.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                             "categories": [{"id": 1, "name": "person"}]}))


def make_image(path, w=40, h=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (120, 30, 200)).save(path)


def test_refer_reader_python2_pickle_rle_and_coco_file_names(tmp_path):
    rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((5, 6), np.uint8), ((2, 23), (3, 31)))))
    rle["counts"] = rle["counts"].decode()
    refs = [{"ref_id": 7, "ann_id": 3, "image_id": 42, "split": "testA", "category_id": 1,
             "sentences": [{"sent_id": 1, "sent": "man left", "raw": "Man left", "tokens": ["man", "left"]},
                           {"sent_id": 2, "sent": "guy", "raw": "guy", "tokens": ["guy"]}]}]
    write_refer(tmp_path, refs, [{"id": 42, "width": 40, "height": 30}],
                [{"id": 3, "image_id": 42, "bbox": [3, 2, 6, 5], "segmentation": rle, "category_id": 1}])
    records = read_refer(tmp_path, "refcoco", "unc")
    assert [r["sentence"] for r in records] == ["man left", "guy"]
    assert records[0]["image"] == "COCO_train2014_000000000042.jpg" and records[0]["split"] == "testA"
    assert decode_rle(records[0]["mask"]).sum() == 30 and records[0]["box"] == [3.0, 2.0, 6.0, 5.0]


def test_refer_refs_pickle_with_code_is_refused(tmp_path, payload):
    (tmp_path / "refcoco").mkdir()
    with open(tmp_path / "refcoco/refs(unc).p", "wb") as f:
        pickle.dump([{"ref_id": payload}], f)
    (tmp_path / "refcoco/instances.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(pickle.UnpicklingError, match="refs\\(unc\\).p.*refusing"):
        read_refer(tmp_path, "refcoco", "unc")
    assert not payload.marker.exists()


def test_transvg_reader_xywh_and_xyxy(tmp_path):
    (tmp_path / "unc").mkdir()
    (tmp_path / "referit").mkdir()
    torch.save([("COCO_train2014_000000000001.jpg", "1.pth", [1.0, 2.0, 10.0, 20.0], "a dog", [])],
               tmp_path / "unc/unc_val.pth")
    torch.save([("5.jpg", "5.mat", [1, 2, 11, 22], "sky")], tmp_path / "referit/referit_test.pth")
    unc = read_transvg(tmp_path, "unc")
    assert unc[0]["box"] == [1.0, 2.0, 10.0, 20.0] and unc[0]["split"] == "val" and unc[0]["mask"] is None
    referit = read_transvg(tmp_path, "referit")
    assert referit[0]["box"] == [1.0, 2.0, 10.0, 20.0] and referit[0]["sentence"] == "sky"


def test_seqtr_reader(tmp_path):
    data = {"val": [{"image_id": 9, "bbox": [1, 1, 4, 4], "expressions": ["a", "b"], "width": 10, "height": 8,
                     "mask": [[1, 1, 5, 1, 5, 5, 1, 5]]}]}
    (tmp_path / "instances.json").write_text(json.dumps(data))
    records = read_seqtr(tmp_path / "instances.json")
    assert [r["sentence"] for r in records] == ["a", "b"] and records[0]["image"] == "COCO_train2014_000000000009.jpg"
    assert decode_rle(records[0]["mask"]).shape == (8, 10)


def test_bad_records_are_listed_or_dropped(tmp_path):
    refs = [{"ref_id": i, "ann_id": i, "image_id": 1 if i != 4 else 2, "split": "train", "category_id": 1,
             "sentences": [{"sent_id": i, "sent": " " if i == 3 else "thing"}]} for i in range(1, 6)]
    anns = [{"id": 1, "image_id": 1, "bbox": [1, 1, 5, 5]}, {"id": 2, "image_id": 1, "bbox": [1, 1, 0, 5]},
            {"id": 3, "image_id": 1, "bbox": [1, 1, 5, 5]}, {"id": 4, "image_id": 2, "bbox": [1, 1, 5, 5]}]
    write_refer(tmp_path, refs, [{"id": 1, "width": 40, "height": 30}, {"id": 2, "width": 40, "height": 30}], anns)
    make_image(tmp_path / "img/COCO_train2014_000000000001.jpg")
    kwargs = dict(fmt="refer", data_root=tmp_path, dataset="refcoco", image_root=tmp_path / "img", progress=False)
    with pytest.raises(BadRecordsError) as err:
        prepare(out=tmp_path / "p", **kwargs)
    reasons = {b["ref_id"]: b["reason"] for b in err.value.bad}
    assert set(reasons) == {2, 3, 4, 5}
    assert "zero or negative size" in reasons[2] and reasons[3] == "empty sentence"
    assert "image file missing" in reasons[4] and "COCO_train2014_000000000002.jpg" in reasons[4]
    assert "annotation 5 missing" in reasons[5]
    meta = prepare(out=tmp_path / "p", skip_bad=True, **kwargs)
    assert meta["splits"] == {"train": 1}
    assert len(json.loads((tmp_path / "p/dropped.json").read_text())) == 4


# ----------------------------------------------------------------------------- augmentation
def box_sample(w=200, h=100, box=(20, 30, 40, 20), text="the cat on the left"):
    mask = np.zeros((h, w), np.uint8)
    x, y, bw, bh = box
    mask[y:y + bh, x:x + bw] = 1
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    return make_sample(image, box, mask, text)


def mask_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_text_flip_and_spatial_words():
    assert swap_left_right("the Left man, right of the leftmost dog, bright") == \
        "the Right man, left of the rightmost dog, bright"
    assert has_spatial_word("the topmost cup") and has_spatial_word("man in the middle")
    assert not has_spatial_word("the bright lamp")


def test_eval_letterbox_maps_back_exactly():
    sample = box_sample()
    out, lb = eval_transform(sample, 448)
    assert out.image.shape == (3, 448, 448)
    (sx, sy), (dx, dy) = lb.scale, lb.offset
    assert (sx, sy, dx, dy) == (448 / 200, 224 / 100, 0, 112)
    box = out.box[0]
    back = [(box[0] - dx) / sx, (box[1] - dy) / sy, (box[2] - dx) / sx, (box[3] - dy) / sy]
    assert torch.allclose(torch.stack(back), torch.tensor([20.0, 30, 60, 50]), atol=1e-4)
    # the mask moved with the box: box (20, 30)-(60, 50) -> (44.8, 179.2)-(134.4, 224) on the canvas
    assert torch.allclose(box, torch.tensor([44.8, 179.2, 134.4, 224.0]), atol=1e-4)
    assert (torch.tensor(mask_box(out.mask[0]), dtype=torch.float) - box).abs().max() <= 1
    assert torch.all(out.image[:, :112] == 0) and torch.all(out.image[:, 336:] == 0)  # zero padding
    assert out.image.dtype == torch.uint8 and lb.extent == (0, 112, 448, 224)


def test_flip_moves_box_and_mask_and_swaps_words():
    aug = TrainAugment(200, multiscale=False, crop_prob=0.0, flip_prob=1.0, translate=False)
    out, _ = aug(box_sample())
    assert out.text == "the cat on the right"
    assert out.box[0].tolist() == [140, 80, 180, 100]  # x mirrored: 200 - 60 .. 200 - 20; centred vertically
    assert mask_box(out.mask[0]) == [140, 80, 180, 100]


def test_crop_keeps_the_whole_box():
    sample = box_sample(text="a cat")
    for seed in range(20):
        out = crop_keeping_box(sample, torch.Generator().manual_seed(seed))
        h, w = out.size
        x0, y0, x1, y1 = out.box[0].tolist()
        assert 0 <= x0 and 0 <= y0 and x1 <= w and y1 <= h and (x1 - x0, y1 - y0) == (40, 20)
        assert out.mask.sum() == 800


def test_translation_moves_box_and_mask_together_and_spatial_words_cap_scale():
    aug = TrainAugment(256, scale_step=32, crop_prob=1.0, flip_prob=0.0)
    gen = torch.Generator().manual_seed(0)
    offsets = set()
    for _ in range(10):
        out, lb = aug(box_sample(text="the cat on the left"), gen)  # spatial: no crop, no up-scale
        offsets.add(lb.offset)
        assert out.image.shape == (3, 256, 256) and lb.scale[0] <= 256 / 200 + 1e-9
        x0, y0, x1, y1 = out.box[0].tolist()
        assert (torch.tensor(mask_box(out.mask[0]), dtype=torch.float) - out.box[0]).abs().max() <= 1
        assert abs((x1 - x0) / (y1 - y0) - 2.0) < 0.15  # no crop changed the box's shape
    assert len(offsets) > 1


def test_dataset_items_and_collate(synth, tmp_path, tokenizer):
    prepare(fmt="refer", data_root=synth, dataset="synthref", image_root=synth / "images", out=tmp_path / "p",
            progress=False)
    ds = GroundingDataset(tmp_path / "p", "val", tokenizer=tokenizer, img_size=128, max_len=20)
    items = [ds[i] for i in range(3)]
    batch = collate(items)
    longest = max(int(item["attention_mask"].sum()) for item in items)
    assert items[0]["input_ids"].shape == (20,) and longest < 20
    # the token columns are cut to the longest expression, and that one keeps its [SEP]
    assert batch["image"].shape == (3, 3, 128, 128) and batch["input_ids"].shape == (3, longest)
    assert batch["attention_mask"][:, -1].any() and (batch["input_ids"] == 102).sum() == 3
    assert batch["has_mask"].all() and batch["input_ids"][:, 0].eq(101).all()
    # the canvas box is the box of the canvas mask
    for i in range(3):
        xyxy = box_convert(batch["box"][i] * 128, "cxcywh", "xyxy")
        assert (xyxy - torch.tensor(mask_box(batch["mask"][i]), dtype=torch.float)).abs().max() <= 2.0
    train = GroundingDataset(tmp_path / "p", "train", tokenizer=tokenizer, img_size=128, max_len=20, train=True)
    assert train[0]["image"].shape == (3, 128, 128)


def test_cutting_the_padding_leaves_the_model_output_unchanged(synth, tmp_path, tokenizer):
    prepare(fmt="refer", data_root=synth, dataset="synthref", image_root=synth / "images", out=tmp_path / "p",
            progress=False)
    ds = GroundingDataset(tmp_path / "p", "val", tokenizer=tokenizer, img_size=64, max_len=20)
    items = [ds[i] for i in range(4)]
    full = {key: torch.stack([item[key] for item in items]) for key in ("image", "extent", "input_ids",
                                                                         "attention_mask")}
    cut = collate(items)
    assert cut["input_ids"].shape[1] < 20
    torch.manual_seed(0)
    model = build_model("tiny", img_size=64, pretrain_img_size=64).eval()
    with torch.no_grad():
        a = model(normalize_canvas(full["image"], full["extent"]), full["input_ids"], full["attention_mask"])
        b = model(normalize_canvas(cut["image"], cut["extent"]), cut["input_ids"], cut["attention_mask"])
    for key in ("boxes", "mask_logits", "features"):
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- image loading
def test_image_modes_load_as_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    Image.fromarray((np.arange(48).reshape(6, 8) * 1000).astype(np.uint16)).save(tmp_path / "16bit.png")
    for name in ("gray", "rgba", "pal", "16bit"):
        img = load_image(tmp_path / f"{name}.png")
        assert img.mode == "RGB" and img.size == (8, 6), name
    assert np.asarray(load_image(tmp_path / "rgba.png")).tolist() == rgb.tolist()
    sixteen = np.asarray(load_image(tmp_path / "16bit.png"))[..., 0]
    assert sixteen[0, 0] == 0 and sixteen[-1, -1] == round(47000 / 65535 * 255)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (8, 4))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (4, 8)


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(OSError, match="broken.jpg"):
        load_image(tmp_path / "broken.jpg")


def test_uint8_canvases_normalised_on_the_device_equal_the_float_canvases(synth, tmp_path, tokenizer):
    """Items carry a uint8 canvas and the image's extent on it; normalize_canvas gives what
    normalising the letterboxed image in float32 and then padding it with zeros gave."""
    from torchvision.transforms.v2 import functional as TF

    from vglaw.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    prepare(fmt="refer", data_root=synth, dataset="synthref", image_root=synth / "images", out=tmp_path / "p",
            progress=False)
    for train in (False, True):
        ds = GroundingDataset(tmp_path / "p", "train" if train else "val", tokenizer=tokenizer, img_size=96,
                              max_len=20, train=train)
        batch = collate([ds[i] for i in range(6)])
        assert batch["image"].dtype == torch.uint8 and batch["mask"].dtype == torch.uint8
        ours = normalize_canvas(batch["image"], batch["extent"])
        for canvas, (dx, dy, w, h), got in zip(batch["image"], batch["extent"].tolist(), ours):
            image = canvas[:, dy:dy + h, dx:dx + w]  # the letterboxed image, as uint8
            assert canvas.sum() == image.sum()  # nothing outside it
            floats = TF.normalize(TF.to_dtype(image, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)
            expected = TF.pad(floats, [dx, dy, 96 - w - dx, 96 - h - dy], fill=0)
            assert (got - expected).abs().max() <= 1e-6
        assert any(e[2] < 96 or e[3] < 96 for e in batch["extent"].tolist())  # some padding was checked
