"""The demo: the bundled checkpoint on a fresh synthetic set, and the demo config's training."""
import dataclasses
import json
import re

import pytest

from vglaw.cli import main
from vglaw.config import load_config
from vglaw.data import prepare
from vglaw.data.synth import generate
from vglaw.engine.train import train
from vglaw.commands.demo import (DEMO_CHECKPOINT, GREF_CONFIG, GREF_TARGETS, REC_BEFORE, REPO_CONFIG, SCORE_TARGETS,
                                 THRESHOLDS, run_demo, shuffled)

needs_checkpoint = pytest.mark.skipif(not (DEMO_CHECKPOINT / "model.safetensors").is_file(),
                                      reason="no bundled demo checkpoint")


@needs_checkpoint
def test_demo_end_to_end_on_the_fresh_demo_set(tmp_path):
    result = run_demo(tmp_path / "demo")  # what `vglaw demo` runs: 100 images, seed 20261127
    out = tmp_path / "demo"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["checks"] == result["checks"]
    n = len((out / "data/prepared/val.jsonl").read_text().splitlines())
    for name, m in saved["results"].items():
        assert m["samples"] == m["mask_samples"] == n, name
        assert set(m) >= {"prec@0.5", "mIoU", "oIoU", "mask_prec@0.5", "mask_prec@0.9"}
        assert all(0 <= m[k] <= 1 for k in m if k not in ("samples", "mask_samples"))
        assert m["mask_prec@0.5"] >= m["mask_prec@0.7"] >= m["mask_prec@0.9"]
    drop = saved["results"]["val"]["prec@0.5"] - saved["results"]["val (expressions shuffled)"]["prec@0.5"]
    assert abs(drop - saved["shuffled_prec_drop"]) < 1e-12
    # the checks are what the metrics say against the thresholds
    val = saved["results"]["val"]
    scores = saved["scores"]
    assert all(saved["checks"].values()), saved["checks"]  # the bundled model passes every check
    assert saved["checks"].items() >= {"prec@0.5 >= 0.85": val["prec@0.5"] >= THRESHOLDS["prec@0.5"],
                               "mIoU >= 0.70": val["mIoU"] >= THRESHOLDS["mIoU"],
                               "shuffled prec@0.5 at least 0.40 lower": drop >= THRESHOLDS["shuffled_drop"],
                               "score AUROC >= 0.85": scores["auroc"] >= 0.85, "score ECE <= 0.05": scores["ece"] <= 0.05,
                               "box P@0.5 at 80% coverage >= 0.93": scores["prec@0.5@80%"] >= 0.93}.items()
    # the bundled calibrator on the fresh set (fitted on seed 11): the score's three targets
    assert scores["auroc"] >= SCORE_TARGETS["auroc"] and scores["ece"] <= SCORE_TARGETS["ece"]
    assert scores["prec@0.5@80%"] >= SCORE_TARGETS["prec@0.5@80%"]
    assert scores["prec@0.5@100%"] == pytest.approx(val["prec@0.5"])
    assert 0.5 < scores["shuffled_auroc"] <= 1 and scores["shuffled_wrong_mean_score"] < scores["right_mean_score"]
    assert "Expressions shuffled across samples: their wrong answers score" in (out / "summary.md").read_text()
    # the existence output on a fresh gRefCOCO-layout set: the targets of the second stage
    gref = saved["generalized"]
    assert gref["gres"]["samples"] == len((out / "data/gref/prepared/val.jsonl").read_text().splitlines())
    for key, target in GREF_TARGETS.items():
        assert gref[key] >= target, key
    assert val["prec@0.5"] >= REC_BEFORE
    assert gref["auroc"] >= SCORE_TARGETS["auroc"] and gref["ece"] <= SCORE_TARGETS["ece"]
    assert "Expressions naming nothing or several shapes" in (out / "summary.md").read_text()
    # the bundled model meets all three targets (README "Demo numbers")
    assert val["prec@0.5"] >= THRESHOLDS["prec@0.5"]
    assert val["mIoU"] >= THRESHOLDS["mIoU"]
    assert drop >= THRESHOLDS["shuffled_drop"]
    # every file the summary names exists, and every picture is named
    summary = (out / "summary.md").read_text()
    named = set(re.findall(r"`([^`]+\.(?:png|json|md))`", summary))
    assert all((out / name).is_file() for name in named)
    assert {str(p.relative_to(out)) for p in (out / "pictures").glob("*.png")} <= named
    assert len(list((out / "pictures").glob("sample_*.png"))) == 12


@needs_checkpoint
def test_bundled_checkpoint_is_the_committed_configs_trained():
    # `vglaw demo --train` must reproduce the bundled model: synth_tiny.yaml's architecture with the
    # existence output that synth_gref.yaml adds, and both stages' epochs in its log
    from vglaw.model.build import VARIANTS, model_config_from_dict

    cfg, second = load_config(REPO_CONFIG), load_config(GREF_CONFIG)
    assert second.model.overrides == {**cfg.model.overrides, "existence": True}
    expected = dataclasses.asdict(model_config_from_dict({**VARIANTS[cfg.model.name], **second.model.overrides}))
    bundled = json.loads((DEMO_CHECKPOINT / "config.json").read_text())
    assert bundled["includes_text_encoder"] is False and bundled["existence"] is True
    for key, value in expected.items():
        if key != "text_config":  # null in the config: it follows the pretrained encoder
            assert bundled[key] == (list(value) if isinstance(value, tuple) else value), key
    log = [json.loads(x) for x in (DEMO_CHECKPOINT / "train_log.jsonl").read_text().splitlines()]
    stages = [(r["stage"], r["epoch"]) for r in log]
    assert stages == ([(REPO_CONFIG.stem, e) for e in range(cfg.run.epochs)]
                      + [(GREF_CONFIG.stem, e) for e in range(second.run.epochs)])
    assert all("exists" in r["train"] for r in log if r["stage"] == GREF_CONFIG.stem)


def test_shuffled_control_gives_every_sample_another_expression(tmp_path):
    from vglaw.data import GroundingDataset, load_tokenizer

    generate(tmp_path, seed=5, split_sizes={"val": 3}, progress=False)
    prepare(fmt="refer", data_root=tmp_path, dataset="synthref", image_root=tmp_path / "images",
            out=tmp_path / "p", progress=False)
    ds = GroundingDataset(tmp_path / "p", "val", tokenizer=load_tokenizer(), img_size=64, max_len=12)
    other = shuffled(ds)
    assert sorted(r["sentence"] for r in other.records) == sorted(r["sentence"] for r in ds.records)
    assert all(a["sent_id"] == b["sent_id"] and a is not b for a, b in zip(ds.records, other.records))
    assert sum(a["sentence"] != b["sentence"] for a, b in zip(ds.records, other.records)) >= len(ds) - 2


def test_a_short_run_of_the_demo_config_lowers_the_loss(tmp_path):
    generate(tmp_path / "s", seed=9, split_sizes={"train": 30, "val": 3}, progress=False)
    prepare(fmt="refer", data_root=tmp_path / "s", dataset="synthref", image_root=tmp_path / "s/images",
            out=tmp_path / "p", progress=False)
    cfg = load_config(REPO_CONFIG, [f"data.prepared={tmp_path / 'p'}", f"run.out={tmp_path / 'run'}",
                                    "run.epochs=4", "data.num_workers=0", "optim.warmup_epochs=0.2"])
    train(cfg)
    log = [json.loads(x) for x in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert log[-1]["train"]["loss"] < 0.95 * log[0]["train"]["loss"]  # 4 small epochs: measured -7 %
    assert (tmp_path / "run/best/config.json").is_file()


def test_demo_cli_reports_a_missing_checkpoint(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--images", "2", "--checkpoint", str(tmp_path / "none")]) == 2
    assert f"no checkpoint at {tmp_path / 'none'}" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # stopped before generating anything
