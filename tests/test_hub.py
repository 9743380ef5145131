"""Checkpoints as Hugging Face Hub repos: model cards, repo ids resolved through the local Hub
cache (offline), strict loading."""
import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from vglaw import build_model, from_pretrained
from vglaw.cli import main
from vglaw.config import load_config
from vglaw.engine.train import train
from vglaw.inference import Grounder
from vglaw.hub import DEMO_CHECKPOINT

from conftest import randomize_, write_run_config

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_hub_cache(cache, repo_id: str, checkpoint) -> None:
    """The Hub cache's layout for one snapshot of a model repo: refs/main names the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs/main").write_text(COMMIT)
    shutil.copytree(checkpoint, repo / "snapshots" / COMMIT)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_a_repo_id_loads_from_the_local_hub_cache_strictly(tmp_path, offline_cache, capsys):
    torch.manual_seed(0)
    model = randomize_(build_model("tiny", img_size=64, pretrain_img_size=64, window_size=2)).eval()
    model.save_pretrained(tmp_path / "ck")
    card = (tmp_path / "ck/README.md").read_text()
    assert "license: apache-2.0" in card and "library_name: vglaw" in card and "`law_type: svd`, rank 8" in card
    assert "Not recorded with this checkpoint" in card
    lay_out_hub_cache(offline_cache, "someone/vglaw-tiny", tmp_path / "ck")
    loaded = from_pretrained("someone/vglaw-tiny").eval()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    image = torch.randint(0, 255, (40, 50, 3), dtype=torch.uint8).numpy()
    a = Grounder.from_pretrained(tmp_path / "ck").predict(image, "the red circle")
    b = Grounder.from_pretrained("someone/vglaw-tiny").predict(image, "the red circle")
    assert a.box == b.box
    with pytest.raises(ValueError, match="'someone/absent' is not in the local Hub cache.*HF_HUB_OFFLINE"):
        from_pretrained("someone/absent")
    Image.fromarray(image).save(tmp_path / "photo.png")  # a real image: only the checkpoint is missing
    capsys.readouterr()
    assert main(["predict", "--checkpoint", "someone/absent", "--image", str(tmp_path / "photo.png"), "--text", "x"]) == 2
    assert "'someone/absent' is not in the local Hub cache" in capsys.readouterr().err
    weights = offline_cache / "models--someone--vglaw-tiny/snapshots" / COMMIT / "model.safetensors"
    state = load_file(str(weights))
    del state["box_head.q_proj.weight"]
    save_file(state, str(weights))
    with pytest.raises(ValueError, match="missing.*box_head.q_proj.weight"):
        from_pretrained("someone/vglaw-tiny")


def test_a_training_run_writes_a_model_card_naming_its_data_and_metrics(tmp_path, synth_prepared):
    cfg = load_config(write_run_config(tmp_path / "cfg.yaml", synth_prepared, tmp_path / "run", epochs=1))
    metrics = train(cfg)
    card = (tmp_path / "run/best/README.md").read_text()
    n_train = sum(1 for _ in open(synth_prepared / "train.jsonl"))
    assert "- dataset: synthref (refer format" in card and f"- train: {n_train:,} expressions" in card
    assert f"| val | {metrics['val']['samples']} | {metrics['val']['prec@0.5']:.4f} |" in card
    assert f"vglaw train --config {tmp_path / 'run/config.yaml'}" in card
    assert "datasets:\n- synthref" in card
    record = json.loads((tmp_path / "run/best/training.json").read_text())  # what the card is rendered from
    assert record["splits"]["train"] == n_train and record["metrics"]["val"] == metrics["val"]
    from vglaw.inference.serve import trained_on  # what the page says, read from the record

    assert trained_on(tmp_path / "run/best").startswith("dataset: synthref (refer format")


def test_the_bundled_demo_checkpoint_has_its_model_card():
    card = (DEMO_CHECKPOINT / "README.md").read_text()
    log = [json.loads(line) for line in (DEMO_CHECKPOINT / "train_log.jsonl").read_text().splitlines()]
    best = max((r for r in log if r["eval"]), key=lambda r: r["eval"]["val"]["prec@0.5"])  # the first stage's
    assert "- dataset: synthref, then grefcoco" in card and f"{best['eval']['val']['prec@0.5']:.4f}" in card
    assert "vglaw demo --train" in card
