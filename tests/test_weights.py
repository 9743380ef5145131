"""Checkpoint formats round-trip from files written here; malicious pickles are refused."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from vglaw import build_model
from vglaw.model import ViT
from vglaw.model.io import from_pretrained
from vglaw.unpickle import safe_pickle_load
from vglaw.weights.text import load_text_encoder
from vglaw.weights.vit import load_detectron2_vit, load_mae_vit

from conftest import randomize_, text_batch


def small_vit(img_size=64, **kw) -> ViT:
    return ViT(img_size=img_size, embed_dim=32, depth=2, num_heads=2, window_size=2, global_blocks=(1,),
               pretrain_img_size=64, **kw)


def test_detectron2_pickle_round_trip_with_resize(tmp_path):
    src = randomize_(small_vit(), seed=1)  # pretrain grid 4, window 2, global grid 4
    weights = {f"backbone.net.{k}": v.numpy() for k, v in src.state_dict().items()}
    weights["roi_heads.box_predictor.cls_score.weight"] = np.zeros((3, 4), np.float32)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "test"}, f)

    same = small_vit()
    report = load_detectron2_vit(same, path)
    assert report.unexpected == ["roi_heads.box_predictor.cls_score.weight"] and not report.missing
    for k, v in src.state_dict().items():
        assert torch.equal(same.state_dict()[k], v), k

    # a model with another pretrain grid and window: tables are resized and reported
    other = ViT(img_size=96, embed_dim=32, depth=2, num_heads=2, window_size=3, global_blocks=(1,),
                pretrain_img_size=96)
    report = load_detectron2_vit(other, path)
    assert any(r.startswith("pos_embed: (1, 17, 32) -> (1, 37, 32)") for r in report.resized)
    assert any(r.startswith("blocks.0.attn.rel_pos_h: (3, 16) -> (5, 16)") for r in report.resized)
    assert any(r.startswith("blocks.1.attn.rel_pos_h: (7, 16) -> (11, 16)") for r in report.resized)
    assert torch.equal(other.pos_embed[:, 0], src.pos_embed[:, 0])  # cls slot kept


def test_mae_checkpoint_round_trip_reports_extra_and_missing(tmp_path):
    src = randomize_(small_vit(), seed=2)
    state = {k: v for k, v in src.state_dict().items() if "rel_pos" not in k}  # MAE has no rel-pos
    state.update(cls_token=torch.zeros(1, 1, 32), **{"norm.weight": torch.ones(32)})
    torch.save({"model": state, "epoch": 7}, tmp_path / "mae.pth")
    dst = small_vit()
    report = load_mae_vit(dst, tmp_path / "mae.pth")
    assert sorted(report.unexpected) == ["cls_token", "norm.weight"]
    assert sorted(report.missing) == sorted(k for k in src.state_dict() if "rel_pos" in k)
    assert torch.equal(dst.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight)
    with pytest.raises(ValueError, match="missing"):
        load_mae_vit(small_vit(), tmp_path / "mae.pth", strict=True)


def test_mis_shaped_keys_are_named(tmp_path):
    state = small_vit().state_dict()
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(5, 32)
    torch.save(state, tmp_path / "bad.pth")
    report = load_mae_vit(small_vit(), tmp_path / "bad.pth")
    assert report.mismatched == ["blocks.0.mlp.fc1.weight: checkpoint (5, 32) vs model (128, 32)"]


def test_malicious_pickle_is_refused_without_running(tmp_path, payload):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"backbone.net.pos_embed": payload}}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*open"):
        load_detectron2_vit(small_vit(), path)
    with pytest.raises(pickle.UnpicklingError, match=str(path)):
        safe_pickle_load(path)
    assert not payload.marker.exists()


def test_python2_style_numpy_pickle_loads(tmp_path):
    path = tmp_path / "p2.pkl"
    with open(path, "wb") as f:
        pickle.dump({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [1, "x"]}, f, protocol=2)
    data = safe_pickle_load(path)
    assert data["a"].shape == (2, 3) and data["b"] == [1, "x"]


def test_hf_bert_directory(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=256)
    bert = BertModel(config)
    bert.save_pretrained(tmp_path / "bert")
    model = build_model("tiny")  # 2 text layers
    report = load_text_encoder(model, tmp_path / "bert")
    assert not report.missing
    want = bert.encoder.layer[1].output.dense.weight
    assert torch.equal(model.text_encoder.bert.encoder.layer[1].output.dense.weight, want)
    # the same directory as the model's pretrained text encoder: Dt follows its config
    other = build_model("tiny", text_encoder=str(tmp_path / "bert"), text_config=None)
    assert other.text_encoder.hidden_size == 128 and len(other.text_encoder.bert.encoder.layer) == 2


@pytest.mark.parametrize("law_type", ["svd", "od2", "none"])
def test_save_and_from_pretrained_round_trip(tmp_path, law_type):
    torch.manual_seed(0)
    model = randomize_(build_model("tiny", law_type=law_type), seed=4).eval()
    model.save_pretrained(tmp_path / "ck")
    assert sorted(os.listdir(tmp_path / "ck")) == ["README.md", "config.json", "model.safetensors"]  # + the model card
    loaded = from_pretrained(tmp_path / "ck").eval()
    ids, mask = text_batch(2, 20, (9, 20))
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        a, b = model(images, ids, mask), loaded(images, ids, mask)
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["mask_logits"], b["mask_logits"])


def test_from_pretrained_names_bad_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a vglaw checkpoint"):
        from_pretrained(tmp_path)
    model = build_model("tiny")
    model.save_pretrained(tmp_path / "ck")
    config = json.loads((tmp_path / "ck/config.json").read_text())
    (tmp_path / "ck/config.json").write_text(json.dumps({**config, "depth": 3, "global_blocks": [1]}))
    with pytest.raises(ValueError, match="unexpected.*backbone.blocks.3"):
        from_pretrained(tmp_path / "ck")
    (tmp_path / "ck/config.json").write_text(json.dumps({**config, "embed_dim": 64}))
    with pytest.raises(ValueError, match="mismatched.*backbone.patch_embed.proj.weight"):
        from_pretrained(tmp_path / "ck")
    (tmp_path / "ck/config.json").write_text(json.dumps({**config, "windw_size": 2}))
    with pytest.raises(ValueError, match="windw_size"):
        from_pretrained(tmp_path / "ck")
    (tmp_path / "ck/config.json").write_text(json.dumps({**config, "depth": "4"}))
    with pytest.raises(TypeError, match="'depth'"):
        from_pretrained(tmp_path / "ck")


def test_vglaw_from_pretrained_is_the_one_loader(tmp_path):
    """The Hugging Face way: VGLAW.from_pretrained reads a save_pretrained directory and a
    training checkpoint file; vglaw.from_pretrained and Grounder.from_pretrained go through it."""
    import vglaw
    from vglaw.inference import Grounder
    from vglaw.model import VGLAW

    torch.manual_seed(0)
    model = randomize_(build_model("tiny", img_size=64, pretrain_img_size=64, window_size=2), seed=5)
    model.save_pretrained(tmp_path / "dir")
    torch.save({"model": model.state_dict(), "model_config": model.config_dict(), "epoch": 3}, tmp_path / "last.pt")
    want = model.state_dict()
    for loaded in (VGLAW.from_pretrained(tmp_path / "dir", device="cpu"), VGLAW.from_pretrained(tmp_path / "last.pt"),
                   vglaw.from_pretrained(tmp_path / "last.pt"), Grounder.from_pretrained(tmp_path / "dir").model):
        assert isinstance(loaded, VGLAW) and loaded.state_dict().keys() == want.keys()
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in want.items())
    dropped = next(k for k in want if k.startswith("box_head."))
    state = {k: v for k, v in want.items() if k != dropped}
    torch.save({"model": state, "model_config": model.config_dict()}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=f"missing .*{dropped}"):
        VGLAW.from_pretrained(tmp_path / "partial.pt")
    assert isinstance(VGLAW.from_pretrained(tmp_path / "partial.pt", strict=False), VGLAW)
