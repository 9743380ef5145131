"""The training and evaluation engine: recipe, metrics, distributed equivalence, resume."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vglaw.config import load_config
from vglaw.data.transforms import Letterbox, normalize_canvas
from vglaw.engine.checkpoint import load_checkpoint
from vglaw.engine.metrics import GroundingMeter
from vglaw.engine.optim import build_optimizer, build_scheduler, param_groups
from vglaw.engine.samplers import GlobalBatchSampler, ShardSampler
from vglaw.engine.train import train
from vglaw.model import build_model

from conftest import make_synth_set, randomize_, text_batch, write_run_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synth_set(root)
    val = (root / "prep/val.jsonl").read_text().splitlines()
    (root / "prep/odd.jsonl").write_text("".join(line + "\n" for line in val[:len(val) // 2 * 2 - 1]))
    return root / "prep"


def small_config(tmp_path: Path, prepared: Path, drop_epochs=(3,), **run) -> Path:
    """The conftest run with batch 4 (two accumulated to 8), 3 epochs and by default a drop after the third."""
    return write_run_config(tmp_path / "cfg.yaml", prepared, tmp_path / "run", batch=4, effective_batch=8,
                            drop_epochs=drop_epochs, **{"epochs": 3, **run})


def final_params(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints/last.pt")["model"]


def assert_same_params(a: dict, b: dict, atol: float) -> float:
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= atol, worst
    return worst


# ----------------------------------------------------------------------------- recipe
def test_param_groups_and_lr_schedule_follow_the_config():
    model = build_model("tiny")
    model.text_encoder.requires_grad_(False)
    cfg = load_config(None, ["optim.lr=1e-3", "optim.lr_backbone=1e-4", "optim.warmup_epochs=2",
                             "optim.drop_epochs=[4, 6]", "optim.warmup_factor=0.01"])
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, lr_backbone=1e-4, lr_text=1e-5)}
    assert set(groups) == {"backbone", "rest"}  # the frozen text encoder is left out
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    assert sum(p.numel() for p in groups["backbone"]["params"]) == n_backbone
    rest = sum(p.numel() for m in (model.generator, model.box_head, model.mask_head) for p in m.parameters())
    assert sum(p.numel() for p in groups["rest"]["params"]) == rest
    optimizer = build_optimizer(model, cfg.optim)
    assert optimizer.defaults["weight_decay"] == 1e-4
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch=10)
    lrs = []
    for _ in range(70):
        lrs.append(optimizer.param_groups[-1]["lr"])
        optimizer.step()
        scheduler.step()
    # warmup over 20 steps from 0.01 x lr, then x0.1 at step 40 and 60
    assert lrs[0] == pytest.approx(1e-5) and lrs[10] == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert lrs[20] == pytest.approx(1e-3) and lrs[39] == pytest.approx(1e-3)
    assert lrs[40] == pytest.approx(1e-4) and lrs[60] == pytest.approx(1e-5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.01)  # the backbone group, same shape


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    with pytest.raises(ValueError, match="optim.learning_rate"):
        load_config(None, ["optim.learning_rate=1"])
    with pytest.raises(TypeError, match="run.epochs"):
        load_config(None, ["run.epochs=many"])
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.5}\nrun: {epochs: 3}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nrun: {epochs: 4}\n")
    cfg = load_config(tmp_path / "child.yaml", ["run.seed=9"])
    assert (cfg.optim.lr, cfg.run.epochs, cfg.run.seed, cfg.optim.lr_backbone) == (0.5, 4, 9, 1e-5)


def test_global_batches_do_not_depend_on_world_size():
    one = list(GlobalBatchSampler(20, effective_batch=8, batch_size=2, seed=3))
    two = [list(GlobalBatchSampler(20, effective_batch=8, batch_size=2, rank=r, world_size=2, seed=3))
           for r in range(2)]
    # micro-step a of rank r holds what the single process sees at micro-batch a * 2 + r
    interleaved = [b for pair in zip(*two) for b in pair]
    assert interleaved == one and len(one) == 8  # 2 global batches of 4 micro-batches; 4 samples dropped
    resumed = GlobalBatchSampler(20, effective_batch=8, batch_size=2, seed=3)
    resumed.set_epoch(0, start_step=1)
    assert list(resumed) == one[4:]


def test_shard_sampler_counts_each_sample_once():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))


# ----------------------------------------------------------------------------- metrics
def test_box_iou_at_the_threshold_edge():
    meter = GroundingMeter()
    gt = torch.tensor([0.0, 0.0, 10.0, 10.0])
    meter.add(torch.tensor([0.0, 0.0, 10.0, 5.0]), gt)  # IoU exactly 0.5: a hit
    meter.add(torch.tensor([0.0, 0.0, 10.0, 4.99]), gt)  # just below
    meter.add(torch.tensor([10.0, 10.0, 20.0, 20.0]), gt)  # touching corner: IoU 0
    assert meter.summary() == {"samples": 3, "prec@0.5": pytest.approx(1 / 3)}


def test_mask_metrics_miou_vs_oiou_and_empty_masks():
    meter = GroundingMeter()
    box = torch.tensor([0.0, 0.0, 1.0, 1.0])
    big_gt = np.zeros((10, 10), bool)
    big_gt[:, :8] = True  # 80 px
    big_pred = np.zeros((10, 10), bool)
    big_pred[:, :6] = True  # IoU 60 / 80 = 0.75
    small_gt = np.zeros((10, 10), bool)
    small_gt[0, :4] = True  # 4 px
    small_pred = np.zeros((10, 10), bool)
    small_pred[0, :1] = True  # IoU 1 / 4
    empty = np.zeros((10, 10), bool)
    meter.add(box, box, torch.from_numpy(big_pred), big_gt)
    meter.add(box, box, torch.from_numpy(small_pred), small_gt)
    meter.add(box, box, torch.from_numpy(empty), empty)  # both empty: IoU 1
    s = meter.summary()
    assert s["mIoU"] == pytest.approx((0.75 + 0.25 + 1) / 3)
    assert s["oIoU"] == pytest.approx((60 + 1) / (80 + 4))
    assert s["mask_prec@0.5"] == pytest.approx(2 / 3) and s["mask_prec@0.8"] == pytest.approx(1 / 3)


def test_predictions_map_back_from_the_letterboxed_canvas():
    # a 200 x 100 image letterboxed into 100: scale 0.5, offset (0, 25)
    letterbox = Letterbox.centred((100, 200), 100)
    assert (letterbox.scale, letterbox.offset, letterbox.extent) == ((0.5, 0.5), (0, 25), (0, 25, 100, 50))
    canvas_boxes = torch.tensor([[30 / 100, 50 / 100, 20 / 100, 10 / 100],  # cx, cy, w, h on the canvas
                                 [0.95, 0.1, 0.2, 0.2]])  # over the padding and the right edge: clipped
    assert torch.allclose(letterbox.boxes_to_original(canvas_boxes), torch.tensor([[40.0, 40, 80, 60],
                                                                                   [170, 0, 200, 0]]))
    prob = torch.zeros(2, 100, 100)
    prob[0, 25 + 10:25 + 20, 20:40] = 1.0  # original rows 20-40, columns 40-80
    masks = letterbox.maps_to_original(prob) > 0.35
    assert masks.shape == (2, 100, 200) and not masks[1].any()
    mask = masks[0]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert (ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item()) == (20, 39, 40, 79)


# ----------------------------------------------------------------------------- training runs
def test_loss_falls_and_a_small_batch_is_overfit(prepared):
    """Four synthetic samples, the tiny model, the real loss: it learns them."""
    from vglaw.config import LossSection
    from vglaw.data import GroundingDataset, collate, load_tokenizer
    from vglaw.engine.losses import grounding_loss
    from torchvision.ops import box_convert, box_iou

    torch.manual_seed(0)
    model = build_model("tiny", img_size=64, pretrain_img_size=64, window_size=2, max_len=12).train()
    ds = GroundingDataset(prepared, "train", tokenizer=load_tokenizer(), img_size=64, max_len=12)
    batch = collate([ds[i] for i in range(0, 16, 4)])
    images = normalize_canvas(batch["image"], batch["extent"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(300):
        out = model(images, batch["input_ids"], batch["attention_mask"])
        loss = grounding_loss(out, batch, LossSection())
        optimizer.zero_grad()
        loss["loss"].backward()
        optimizer.step()
        losses.append({k: v.item() for k, v in loss.items()})
    assert losses[-1]["loss"] < 0.3 * losses[0]["loss"] and losses[-1]["l1"] < 0.1
    model.eval()
    with torch.no_grad():
        boxes = model(images, batch["input_ids"], batch["attention_mask"])["boxes"]
    iou = box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(batch["box"], "cxcywh", "xyxy")).diagonal()
    assert (iou > 0.5).all(), iou


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, prepared):
    path = small_config(tmp_path / "a", prepared, drop_epochs=(1,), checkpoint_every=1)
    full = load_config(path, ["run.epochs=2"])
    train(full)
    cut = load_config(path, ["run.epochs=2", f"run.out={tmp_path / 'b'}", "run.max_steps=1"])
    train(cut)  # stops mid-epoch 0 after 1 of 2 steps
    state = load_checkpoint(tmp_path / "b/checkpoints/last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 1, 1)
    train(load_config(path, ["run.epochs=2", f"run.out={tmp_path / 'b'}"]), resume=True)
    assert_same_params(final_params(tmp_path / "a/run"), final_params(tmp_path / "b"), atol=0.0)
    log = [json.loads(x) for x in (tmp_path / "b/log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    # each epoch logs the lr it trained with: 1e-3, then 1e-4 after the drop at epoch 1
    assert [r["lr"] for r in log] == pytest.approx([1e-3, 1e-4])


def test_training_without_evaluation_splits_completes_and_says_no_best_is_made(tmp_path, prepared, caplog):
    """A dataset with only a train split: nothing to evaluate, so no best/ and no calibrator."""
    caplog.set_level(logging.INFO, logger="vglaw")
    train(load_config(small_config(tmp_path, prepared), ["run.epochs=2", "data.eval_splits=[]"]))
    log = [json.loads(x) for x in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["eval"]) for r in log] == [(0, {}), (1, {})]
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["epoch"] == 2
    assert not (tmp_path / "run/best").exists() and not (tmp_path / "run/checkpoints/best.pt").exists()
    said = [r.getMessage() for r in caplog.records if "eval_splits" in r.getMessage()]
    assert len(said) == 1 and "no best/" in said[0] and "calibrator" in said[0], said


def test_frozen_text_cache_gives_the_encoders_output_and_encodes_each_expression_once():
    from vglaw.engine.text_cache import FrozenTextCache

    torch.manual_seed(0)
    model = randomize_(build_model("tiny", img_size=64, pretrain_img_size=64, window_size=2, max_len=12)).eval()
    cache = FrozenTextCache(model.text_encoder)
    encoded = []
    model.text_encoder.register_forward_hook(lambda module, args, out: encoded.append(args[0].shape[0]))
    ids, mask = text_batch(3, 12, lengths=(7, 12, 5), seed=3)
    images = torch.randn(3, 3, 64, 64)
    # the same expressions again, padded to another width and in another order, and one new one
    new_ids, new_mask = text_batch(1, 7, lengths=(6,), seed=4)
    ids2, mask2 = torch.cat([ids[[2, 0], :7], new_ids]), torch.cat([mask[[2, 0], :7], new_mask])
    with torch.no_grad():
        for ids_, mask_ in ((ids, mask), (ids2, mask2)):
            plain = model(images, ids_, mask_)
            encoded.clear()
            cached = model(images, ids_, mask_, text=cache(ids_, mask_))
            assert torch.allclose(cached["boxes"], plain["boxes"], atol=1e-5)
            assert torch.allclose(cached["mask_logits"], plain["mask_logits"], atol=1e-4)
    assert encoded == [1]  # the second batch encoded only its new expression
    assert len(cache.rows) == 4


def test_cached_text_run_equals_plain_run(tmp_path, prepared):
    path = small_config(tmp_path, prepared)
    train(load_config(path, ["run.epochs=1", f"run.out={tmp_path / 'plain'}"]))
    train(load_config(path, ["run.epochs=1", f"run.out={tmp_path / 'cached'}", "model.cache_text=true"]))
    assert_same_params(final_params(tmp_path / "plain"), final_params(tmp_path / "cached"), atol=1e-5)
    with pytest.raises(ValueError, match="model.cache_text needs model.freeze_text"):
        train(load_config(path, [f"run.out={tmp_path / 'bad'}", "model.cache_text=true", "model.freeze_text=false"]))


def test_two_gloo_processes_match_one_process(tmp_path, prepared):
    path = small_config(tmp_path, prepared)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    common = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node"]
    for n, out in ((1, "one"), (2, "two")):
        subprocess.run(common + [str(n), "-m", "vglaw", "train", "--config", str(path), "run.epochs=2",
                                 "optim.batch_size=2", f"run.out={tmp_path / out}", "data.eval_splits=[odd]"],
                       check=True, env=env, cwd=tmp_path, capture_output=True, timeout=300)
    # float32 sums in another order, through AdamW's normalised updates: measured 5e-6 to 3e-5
    # after 4 steps at lr 1e-3 (each step moves a parameter by up to 1e-3)
    worst = assert_same_params(final_params(tmp_path / "one"), final_params(tmp_path / "two"), atol=1e-4)
    print(f"max parameter difference, 1 vs 2 processes: {worst:.2e}")
    # distributed eval on an odd number of samples counts each once
    n_odd = sum(1 for _ in open(prepared / "odd.jsonl"))
    for out in ("one", "two"):
        log = [json.loads(x) for x in (tmp_path / out / "log.jsonl").read_text().splitlines()]
        assert n_odd % 2 == 1 and log[-1]["eval"]["odd"]["samples"] == n_odd


def test_a_frozen_text_encoder_stays_in_eval_mode_when_the_model_trains(tmp_path, synth_prepared):
    from vglaw.engine.train import build_train_model

    model = build_train_model(load_config(write_run_config(tmp_path / "c.yaml", synth_prepared, tmp_path / "run")))
    model.train()  # the config freezes the text encoder: no dropout, no gradients there
    assert model.freeze_text and not model.text_encoder.training and model.backbone.training
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    model.freeze_text = False
    assert model.train().text_encoder.training


def test_training_fits_the_best_checkpoints_calibrator_on_the_selecting_split(tmp_path, prepared, monkeypatch):
    """best/ carries a calibrator fitted on the last evaluation split's answers. (The tiny model's
    boxes are all wrong, which leaves nothing to fit; here every other answer counts as right.)"""
    import vglaw.engine.train as train_module
    from vglaw.model import VGLAW
    from vglaw.model.confidence import FEATURES

    real, fitted = train_module.evaluate, []

    def half_right(*args, **kwargs):
        metrics, samples = real(*args, **kwargs)
        samples["box_iou"] = (torch.arange(len(samples["box_iou"])) % 2).double()
        fitted.append(samples)
        return metrics, samples

    monkeypatch.setattr(train_module, "evaluate", half_right)
    train(load_config(small_config(tmp_path, prepared), ["run.epochs=1"]))
    calibrator = VGLAW.from_pretrained(tmp_path / "run" / "best").calibrator
    assert calibrator is not None and calibrator.features == tuple(FEATURES)
    assert calibrator.fitted_on["split"] == "val" and calibrator.fitted_on["epoch"] == 0
    assert calibrator.fitted_on["samples"] == len(fitted[-1]["box_iou"])
