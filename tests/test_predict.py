"""The front door: the predictor, `vglaw predict` and `vglaw visualize`."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from safetensors.torch import load_file, save_file

from vglaw.cli import main
from vglaw.commands import predict as predict_command
from vglaw.data.masks import decode_rle
from vglaw.fileio import json_text
from vglaw.inference.batch import parts_folder, predict_pairs
from vglaw.inference.predictor import Grounder
from vglaw.model import build_model
from vglaw.model.io import checkpoint_files

from conftest import randomize_


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_(build_model("tiny", img_size=64, pretrain_img_size=64, window_size=2), seed=3)
    path = tmp_path_factory.mktemp("ck") / "tiny"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def grounder(checkpoint):
    return Grounder.from_pretrained(checkpoint)


@pytest.mark.parametrize("size", [(37, 81), (120, 33), (1, 1), (501, 64)])
def test_boxes_inside_and_masks_at_original_size(grounder, size):
    w, h = size
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    texts = ["the red circle", "a blue square on the left", "rightmost thing"]
    preds = grounder.predict(image, texts)
    assert [p.text for p in preds] == texts
    for p in preds:
        x0, y0, x1, y1 = p.box
        assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
        assert p.mask.shape == p.prob.shape == (h, w) and p.mask.dtype == bool
        assert np.array_equal(p.mask, p.prob > 0.35)
    single = grounder.predict(Image.fromarray(image), texts[1])
    assert single.box == preds[1].box  # a batch of expressions = each one alone


def test_expressions_in_one_batch_differ(grounder):
    image = np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    texts = ["the red circle", "the green triangle at the bottom"]
    a, b = grounder.predict(image, texts)
    # each is exactly the expression's own answer, in either order of the batch, and they differ
    assert a.box == grounder.predict(image, texts[0]).box and b.box == grounder.predict(image, texts[1]).box
    assert [p.box for p in grounder.predict(image, texts[::-1])] == [b.box, a.box]
    assert a.box != b.box


def test_predict_cli_writes_png_and_json(tmp_path, checkpoint):
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (45, 60, 3), dtype=np.uint8)).save(tmp_path / "x.jpg")
    assert main(["predict", "--checkpoint", str(checkpoint), "--image", str(tmp_path / "x.jpg"), "--text", "a cat",
                 "--text", "the dog", "--out", str(tmp_path / "out.png")]) == 0
    picture = Image.open(tmp_path / "out.png")
    picture.verify()
    result = json.loads((tmp_path / "out.json").read_text())
    assert (result["width"], result["height"]) == (60, 45) and len(result["predictions"]) == 2
    for p in result["predictions"]:
        mask = decode_rle(p["mask_rle"])
        assert mask.shape == (45, 60) and mask.sum() == p["mask_area"]
        assert mask_utils.area(dict(p["mask_rle"], counts=p["mask_rle"]["counts"].encode())) == p["mask_area"]


def test_attention_maps_are_the_box_heads_at_the_original_size(tmp_path, grounder, checkpoint):
    image = np.random.default_rng(3).integers(0, 255, (50, 90, 3), dtype=np.uint8)
    texts = ["the red circle", "a blue square on the left"]
    preds = grounder.predict(image, texts)
    with torch.inference_mode():
        images, ids, mask, letterbox = grounder.inputs(Image.fromarray(image), texts)
        raw = grounder.model(images, ids, mask, box_attention=True)["box_attention"]  # (2, 8, 8) token weights
    for p, weights in zip(preds, raw):
        assert p.attention.shape == (50, 90) and p.attention.dtype == np.float32
        assert 0 <= p.attention.min() and p.attention.max() <= 1 + 1e-6
        # the hottest place of the map is the hottest token of the head (the image fills the canvas' width)
        row, col = np.unravel_index(p.attention.argmax(), p.attention.shape)
        cell = 64 / weights.shape[0]
        canvas_y, canvas_x = row * letterbox.scale[1] + letterbox.offset[1], col * letterbox.scale[0]
        assert weights[int(canvas_y // cell), int(canvas_x // cell)] >= 0.9 * weights.max()
    assert not np.allclose(preds[0].attention, preds[1].attention)
    Image.fromarray(image).save(tmp_path / "x.png")
    assert main(["predict", "--checkpoint", str(checkpoint), "--image", str(tmp_path / "x.png"), "--text", texts[0],
                 "--text", texts[1], "--out", str(tmp_path / "out.png"), "--heatmap"]) == 0
    heat = Image.open(tmp_path / "out.heatmap.png")
    assert heat.width > 2 * 90


def test_predict_errors_are_clear(tmp_path, checkpoint, capsys):
    Image.new("RGB", (10, 10)).save(tmp_path / "ok.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    cases = [
        (["--image", str(tmp_path / "missing.jpg"), "--text", "x"], "missing.jpg"),
        (["--image", str(tmp_path / "broken.jpg"), "--text", "x"], "broken.jpg"),
        (["--image", str(tmp_path / "ok.png"), "--text", "   "], "empty expression"),
    ]
    for args, message in cases:
        assert main(["predict", "--checkpoint", str(checkpoint)] + args) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "notack").mkdir()
    assert main(["predict", "--checkpoint", str(tmp_path / "notack"), "--image", str(tmp_path / "ok.png"),
                 "--text", "x"]) == 2
    assert "not a vglaw checkpoint" in capsys.readouterr().err
    (tmp_path / "random.pt").write_bytes(b"\x00" * 10)
    assert main(["predict", "--checkpoint", str(tmp_path / "random.pt"), "--image", str(tmp_path / "ok.png"),
                 "--text", "x"]) == 2
    assert "random.pt" in capsys.readouterr().err


def test_predict_never_writes_over_its_image_nor_a_picture_as_json(tmp_path, checkpoint, capsys):
    image = tmp_path / "photo.png"
    Image.new("RGB", (10, 10), "red").save(image)
    before = image.read_bytes()
    (tmp_path / "link.png").symlink_to(image)
    cases = [(["--out", str(image)], f"--out {image} is the input file {image}"),
             (["--json", str(image)], f"--json {image} is the input file {image}"),
             (["--out", str(tmp_path / "link.png")], "is the input file"),
             (["--out", str(tmp_path / "a.png"), "--json", str(tmp_path / "a.png")], "is the --out picture"),
             (["--out", str(tmp_path / "res.json")], "not a picture file name"),  # its JSON would be res.json too
             (["--out", str(tmp_path / "res")], "not a picture file name")]
    for args, message in cases:
        assert main(["predict", "--checkpoint", str(checkpoint), "--image", str(image), "--text", "x"] + args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert image.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.png", "photo.png"]


def test_visualize_cli(tmp_path, checkpoint):
    from vglaw.data import prepare
    from vglaw.data.synth import generate

    generate(tmp_path / "s", seed=4, split_sizes={"val": 2}, progress=False)
    prepare(fmt="refer", data_root=tmp_path / "s", dataset="synthref", image_root=tmp_path / "s/images",
            out=tmp_path / "p", progress=False)
    assert main(["visualize", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "p"), "--split", "val",
                 "--index", "0", "3", "--out", str(tmp_path / "viz"), "--law"]) == 0
    entries = json.loads((tmp_path / "viz/visualize.json").read_text())
    assert [e["index"] for e in entries] == [0, 3]
    for e in entries:
        assert 0 <= e["box_iou"] <= 1 and 0 <= e["mask_iou"] <= 1
        Image.open(e["png"]).verify()
        Image.open(e["law_png"]).verify()


def test_the_mask_threshold_lives_on_the_model_config(tmp_path):
    """Saved with the checkpoint, read by the predictor (and evaluation, export) unless given; a
    checkpoint saved before the field existed gets the authors' 0.35."""
    torch.manual_seed(0)
    model = randomize_(build_model("tiny", img_size=64, pretrain_img_size=64, window_size=2, mask_threshold=0.6),
                       seed=3)
    model.save_pretrained(tmp_path / "ck")
    assert json.loads((tmp_path / "ck/config.json").read_text())["mask_threshold"] == 0.6
    grounder = Grounder.from_pretrained(tmp_path / "ck")
    image = np.random.default_rng(4).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    pred = grounder.predict(image, "the red circle")
    assert grounder.mask_threshold == 0.6 and np.array_equal(pred.mask, pred.prob > 0.6)
    assert Grounder.from_pretrained(tmp_path / "ck", mask_threshold=0.2).mask_threshold == 0.2
    config = json.loads((tmp_path / "ck/config.json").read_text())
    del config["mask_threshold"]
    (tmp_path / "ck/config.json").write_text(json.dumps(config))
    assert Grounder.from_pretrained(tmp_path / "ck").mask_threshold == 0.35


def test_a_checkpoint_with_a_non_finite_weight_is_refused_naming_it(tmp_path, checkpoint, capsys):
    """A checkpoint folder with one NaN, a training .pt with one infinity: predict exits with one
    line naming the tensor, and writes nothing."""
    Image.new("RGB", (10, 10)).save(tmp_path / "ok.png")
    state = load_file(str(checkpoint / "model.safetensors"))
    folder = shutil.copytree(checkpoint, tmp_path / "nan")
    bad = {k: v.clone() for k, v in state.items()}
    bad["box_head.mlp.layers.0.weight"].view(-1)[5] = float("nan")
    save_file(bad, str(folder / "model.safetensors"))
    config = json.loads((checkpoint / "config.json").read_text())
    bad = {k: v.clone() for k, v in state.items()}
    bad["backbone.blocks.1.attn.qkv.bias"][0] = float("inf")
    torch.save({"model": bad, "model_config": config}, tmp_path / "last.pt")
    for path, name in [(folder, "box_head.mlp.layers.0.weight"),
                       (tmp_path / "last.pt", "backbone.blocks.1.attn.qkv.bias")]:
        assert main(["predict", "--checkpoint", str(path), "--image", str(tmp_path / "ok.png"), "--text", "x",
                     "--out", str(tmp_path / "out.png")]) == 2
        err = capsys.readouterr().err
        assert f"weight {name} holds 1 non-finite value(s) (NaN or infinity)" in err and err.count("\n") == 1, err
        assert not (tmp_path / "out.png").exists() and not (tmp_path / "out.json").exists()


def test_no_json_file_is_written_with_nan_in_it(tmp_path, checkpoint, monkeypatch):
    """A model that answers NaN (its weights broken after loading): predict and predict --pairs
    stop with an error naming where the NaN is, and write no file holding it (JSON has no NaN)."""
    with pytest.raises(ValueError, match=r"^predictions\[0\]\.box_xyxy\[1\] is not a finite number"):
        json_text({"predictions": [{"box_xyxy": [1.0, float("nan")]}]})
    with pytest.raises(ValueError, match=r"^\[0\]\.score is not a finite number"):
        json_text([{"score": float("-inf")}])
    grounder = Grounder.from_pretrained(checkpoint)
    with torch.no_grad():
        grounder.model.box_head.mlp.layers[0].weight.fill_(float("nan"))
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    monkeypatch.setattr(predict_command, "load_grounder", lambda *args, **kwargs: grounder)
    with pytest.raises(ValueError, match=r"box_xyxy\[0\] is not a finite number"):
        predict_command.predict(checkpoint, tmp_path / "x.png", ["the red circle"], out=tmp_path / "out.png")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"id": 1, "image": "x.png", "text": "the red circle"}) + "\n")
    with pytest.raises(ValueError, match=r"box_xyxy\[0\] is not a finite number"):
        predict_pairs(grounder, tmp_path / "pairs.jsonl", tmp_path / "out.jsonl",
                      model_files=checkpoint_files(checkpoint), num_workers=0)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl")]
    assert all("NaN" not in p.read_text() for p in written)
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "out.png").exists()
    assert not (tmp_path / "out.jsonl").exists()
    assert not (parts_folder(tmp_path / "out.jsonl") / "rank0.jsonl").read_text()
