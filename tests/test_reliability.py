"""Faults and bad input cost nothing. docs/RELIABILITY.md lists every test here (a test checks
that the table and this file stay in step)."""
import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vglaw.cli import main
from vglaw.config import load_config
from vglaw.data import GroundingDataset, load_tokenizer, prepare
from vglaw.engine.checkpoint import load_checkpoint
from vglaw.engine.loop import NonFiniteLossError
from vglaw.engine.samplers import GlobalBatchSampler
from vglaw.engine.train import train
from vglaw.inference.predictor import Grounder
from vglaw.model import build_model
from vglaw.model.io import from_pretrained

from conftest import make_synth_set, write_run_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}


def make_data(root: Path, train_images: int = 6) -> Path:
    return make_synth_set(root, seed=21, split_sizes={"train": train_images, "val": 2})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("rel"))


# ----------------------------------------------------------------------------- faults
KILL_IN_SAVE = """
import io, pathlib, sys, time, torch
real_save = torch.save
calls = [0]
def save(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 3:  # the third checkpoint: write half of it, then hang until killed
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        pathlib.Path(sys.argv[1]).touch()
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
from vglaw.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_kill_9_while_writing_a_checkpoint_keeps_the_previous_one_and_resume_continues(tmp_path, prepared):
    cfg = write_run_config(tmp_path / "cfg.yaml", prepared, tmp_path / "run", checkpoint_every=1)
    marker = tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, "-c", KILL_IN_SAVE, str(marker), "train", "--config", str(cfg)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, "training ended before the third checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    state = load_checkpoint(tmp_path / "run/checkpoints/last.pt")  # the previous checkpoint, whole
    assert state["global_step"] == 2
    assert any(p.name.startswith(".last.pt.tmp") for p in (tmp_path / "run/checkpoints").iterdir())
    # resume and the uninterrupted reference run with the killed run's settings (threads included)
    vglaw = [sys.executable, "-m", "vglaw", "train"]
    subprocess.run(vglaw + ["--config", str(cfg), "--resume"], env=ENV, check=True, capture_output=True)
    resumed = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    n_train = sum(1 for _ in open(prepared / "train.jsonl"))
    assert (resumed["epoch"], resumed["global_step"]) == (2, 2 * (n_train // 4))
    full = write_run_config(tmp_path / "full.yaml", prepared, tmp_path / "full", checkpoint_every=1)
    subprocess.run(vglaw + ["--config", str(full)], env=ENV, check=True, capture_output=True)
    reference = load_checkpoint(tmp_path / "full/checkpoints/last.pt")["model"]
    assert all(torch.equal(reference[k], resumed["model"][k]) for k in reference)


def test_torchrun_restarts_a_killed_rank_and_finishes_with_the_same_step_count_and_a_complete_log(tmp_path):
    data = make_data(tmp_path / "data", train_images=16)
    cfg = write_run_config(tmp_path / "cfg.yaml", data, tmp_path / "run", checkpoint_every=1, epochs=6)
    # --standalone: a c10d rendezvous on a free port, which re-forms the group after a restart.
    # Without vglaw's per-restart store prefix the restarted group read the dead workers' gloo
    # addresses and failed to connect (vglaw.distributed._restart_store)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", "3", "-m", "vglaw", "train", "--config", str(cfg), "--resume"]
    output = open(tmp_path / "torchrun.log", "w")
    proc = subprocess.Popen(cmd, env=ENV, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    last = tmp_path / "run/checkpoints/last.pt"
    try:
        deadline = time.time() + 180
        while not (last.exists() and load_checkpoint(last)["global_step"] >= 2):
            assert proc.poll() is None and time.time() < deadline, "the run ended before a rank could be killed"
            time.sleep(0.05)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2
        os.kill(int(workers[1]), signal.SIGKILL)
        assert proc.wait(120) == 0, (tmp_path / "torchrun.log").read_text()[-3000:]
    finally:
        output.close()
        if proc.poll() is None:  # a hung run: kill the workers (torchrun gives them their own sessions), then torchrun
            for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split():
                os.kill(int(pid), signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
    state = load_checkpoint(last)
    n_train = sum(1 for _ in open(data / "train.jsonl"))
    assert state["epoch"] == 6 and state["global_step"] == 6 * (n_train // 4)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert epochs == list(range(6))
    assert "resumed from" in (tmp_path / "run/train.log").read_text()
    # the restarted group formed at once: no worker tried to reach a replaced worker's address
    assert "connectFullMesh failed" not in (tmp_path / "torchrun.log").read_text()


def damage(prepared: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the prepared split with a truncated image, a missing image and a zero-size box."""
    out = tmp_path / "damaged"
    out.mkdir()
    meta = json.loads((prepared / "meta.json").read_text())
    images = tmp_path / "images"
    images.mkdir()
    records = [json.loads(x) for x in (prepared / "train.jsonl").read_text().splitlines()]
    for name in {r["image"] for r in records} | {json.loads(x)["image"] for x in open(prepared / "val.jsonl")}:
        (images / name).write_bytes((Path(meta["image_root"]) / name).read_bytes())
    by_image = sorted({r["image"] for r in records})
    truncated, missing = by_image[0], by_image[1]
    data = (images / truncated).read_bytes()
    (images / truncated).write_bytes(data[: len(data) // 3])
    (images / missing).unlink()
    zero = next(i for i, r in enumerate(records) if r["image"] not in (truncated, missing))
    records[zero]["box"][2] = 0.0
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "val.jsonl").write_text((prepared / "val.jsonl").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "image_root": str(images)}))
    return out, {"truncated": truncated, "missing": missing, "zero_index": zero}


def test_corrupt_truncated_or_missing_image_and_zero_area_box_stop_training_with_the_file_named(tmp_path, prepared,
                                                                                               capsys):
    damaged, what = damage(prepared, tmp_path)
    ds = GroundingDataset(damaged, "train", tokenizer=load_tokenizer(), img_size=64, max_len=12, train=True)
    named = {"truncated": what["truncated"], "missing": what["missing"]}
    for kind, name in named.items():
        index = next(i for i, r in enumerate(ds.records) if r["image"] == name)
        with pytest.raises(OSError, match=re.escape(name)):
            ds[index]
    with pytest.raises(ValueError, match="zero or negative size"):
        ds[what["zero_index"]]
    cfg = write_run_config(tmp_path / "cfg.yaml", damaged, tmp_path / "run")
    assert main(["train", "--config", str(cfg)]) == 2  # stops with the error, in one line naming the file
    err = capsys.readouterr().err.strip().splitlines()
    zero_image = ds.records[what["zero_index"]]["image"]
    assert len(err) == 1 and err[0].startswith("vglaw train: error:")
    assert any(name in err[0] for name in (what["truncated"], what["missing"], zero_image)), err


def test_with_skip_bad_images_bad_samples_are_skipped_counted_in_the_log_and_training_continues(tmp_path, prepared):
    damaged, what = damage(prepared, tmp_path)
    cfg = write_run_config(tmp_path / "cfg.yaml", damaged, tmp_path / "run")
    assert main(["train", "--config", str(cfg), "data.skip_bad_images=true"]) == 0
    log = [json.loads(x) for x in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in log] == [0, 1]
    # a bad sample is replaced by the next good one: each visit skips the run of bad ones it starts
    records = [json.loads(x) for x in (damaged / "train.jsonl").read_text().splitlines()]
    bad = {i for i, r in enumerate(records) if r["image"] in (what["truncated"], what["missing"])} | {what["zero_index"]}
    for x in log:
        sampler = GlobalBatchSampler(len(records), effective_batch=4, batch_size=2, seed=1)  # the run's
        sampler.set_epoch(x["epoch"])
        skipped = 0
        for index in (i for batch in sampler for i in batch):
            run = 0
            while (index + run) % len(records) in bad:
                run += 1
            skipped += run
        assert x["train"]["skipped_samples"] == skipped, x
    assert sum(x["train"]["skipped_samples"] for x in log) >= 3


def test_nan_loss_stops_with_a_clear_message_and_the_last_good_checkpoint_stays_intact(tmp_path, prepared, monkeypatch):
    import vglaw.engine.loop as loop

    real, calls = loop.grounding_loss, [0]

    def poisoned(out, batch, weights):
        calls[0] += 1
        losses = real(out, batch, weights)
        if calls[0] == 5:  # the first micro-batch of optimizer step 3
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(loop, "grounding_loss", poisoned)
    cfg = load_config(write_run_config(tmp_path / "cfg.yaml", prepared, tmp_path / "run", checkpoint_every=1))
    with pytest.raises(NonFiniteLossError, match="non-finite loss at epoch 0, optimizer step 2"):
        train(cfg)
    state = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert state["global_step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values()
                                             if v.is_floating_point())


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def grounder(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny"
    build_model("tiny", img_size=64, pretrain_img_size=64, window_size=2).save_pretrained(path)
    return Grounder.from_pretrained(path)


LONG = " ".join(["the man in the red shirt next to the tall tree"] * 20)
NON_ASCII = "der Mann links neben dem Baum, 穿红衣服的男人 🙂"


def test_expressions_empty_whitespace_very_long_and_non_ascii_at_every_entry_point(tmp_path, grounder, prepared):
    image = np.zeros((20, 30, 3), np.uint8)
    for bad in ("", "   \t"):
        with pytest.raises(ValueError, match="empty expression"):
            grounder.predict(image, bad)
    for text in (LONG, NON_ASCII):
        assert grounder.predict(image, text).mask.shape == (20, 30)
    # prepare: empty and whitespace-only sentences are bad records; long and non-ASCII ones are kept
    records = [json.loads(x) for x in (prepared / "val.jsonl").read_text().splitlines()][:4]
    for r, text in zip(records, ("", "   ", LONG, NON_ASCII)):
        r["sentence"] = text
    seqtr = {"val": [{"image_id": 0, "bbox": r["box"], "expressions": [r["sentence"]], "width": r["width"],
                      "height": r["height"]} for r in records]}
    (tmp_path / "instances.json").write_text(json.dumps(seqtr))
    images = tmp_path / "images"
    images.mkdir()
    meta = json.loads((prepared / "meta.json").read_text())
    (images / "COCO_train2014_000000000000.jpg").write_bytes((Path(meta["image_root"]) / records[0]["image"]).read_bytes())
    with pytest.raises(ValueError, match="2 bad record"):
        prepare(fmt="seqtr", data_root=tmp_path / "instances.json", dataset="refcoco", image_root=images,
                out=tmp_path / "p", progress=False)
    prepare(fmt="seqtr", data_root=tmp_path / "instances.json", dataset="refcoco", image_root=images,
            out=tmp_path / "p", skip_bad=True, progress=False)
    # train and eval datasets tokenise what is left, truncated to max_len
    for train_mode in (True, False):
        ds = GroundingDataset(tmp_path / "p", "val", tokenizer=load_tokenizer(), img_size=64, max_len=12,
                              train=train_mode)
        assert len(ds) == 2 and all(ds[i]["input_ids"].shape == (12,) for i in range(2))


def odd_images(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    paths = {}
    for name, img in {"grayscale": Image.fromarray(rgb).convert("L"), "rgba": Image.fromarray(rgb).convert("RGBA"),
                      "palette": Image.fromarray(rgb).convert("P"),
                      "16bit": Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)),
                      "1x1": Image.new("RGB", (1, 1), (9, 9, 9)),
                      "10000x50": Image.fromarray(rng.integers(0, 255, (50, 10000, 3), dtype=np.uint8))}.items():
        paths[name] = tmp_path / f"{name}.png"
        img.save(paths[name])
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "exif.jpg", exif=exif)
    paths["exif-rotated"] = tmp_path / "exif.jpg"
    return paths


def test_grayscale_rgba_palette_16bit_1x1_10000x50_and_exif_rotated_images_at_every_entry_point(tmp_path, grounder):
    paths = odd_images(tmp_path)
    expected = {"1x1": (1, 1), "10000x50": (50, 10000), "exif-rotated": (60, 40)}
    for name, path in paths.items():
        h, w = expected.get(name, (40, 60))
        pred = grounder.predict(path, "the thing")
        assert pred.mask.shape == (h, w), name
        assert 0 <= pred.box[0] <= pred.box[2] <= w and 0 <= pred.box[1] <= pred.box[3] <= h, name
    # through prepare and the train / eval datasets
    refs, images, anns = [], [], []
    for i, (name, path) in enumerate(paths.items(), start=1):
        w, h = Image.open(path).size if name != "exif-rotated" else (40, 60)
        images.append({"id": i, "file_name": path.name, "width": w, "height": h})
        anns.append({"id": i, "image_id": i, "bbox": [0, 0, w, h], "category_id": 1,
                     "segmentation": [[0, 0, w, 0, w, h, 0, h]]})
        refs.append({"ref_id": i, "ann_id": i, "image_id": i, "split": "val", "category_id": 1,
                     "sentences": [{"sent_id": i, "sent": f"the {name} picture"}]})
    (tmp_path / "refcoco").mkdir()
    with open(tmp_path / "refcoco/refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    (tmp_path / "refcoco/instances.json").write_text(json.dumps({"images": images, "annotations": anns}))
    prepare(fmt="refer", data_root=tmp_path, dataset="refcoco", image_root=tmp_path, out=tmp_path / "p",
            progress=False)
    for train_mode in (True, False):
        ds = GroundingDataset(tmp_path / "p", "val", tokenizer=load_tokenizer(), img_size=64, max_len=12,
                              train=train_mode)
        for i in range(len(ds)):
            item = ds[i]
            assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (64, 64)
            assert ((item["box"] >= 0) & (item["box"] <= 1)).all()


def test_boxes_on_the_image_border_are_kept_and_stay_on_the_canvas(tmp_path):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    img.save(tmp_path / "b.jpg")
    boxes = [[0, 0, 10, 10], [40, 20, 10, 10], [0, 0, 50, 30]]
    refs = [{"ref_id": i, "ann_id": i, "image_id": 1, "split": "val", "category_id": 1,
             "sentences": [{"sent_id": i, "sent": "corner"}]} for i in range(1, 4)]
    anns = [{"id": i, "image_id": 1, "bbox": b, "category_id": 1} for i, b in enumerate(boxes, start=1)]
    (tmp_path / "refcoco").mkdir()
    with open(tmp_path / "refcoco/refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    (tmp_path / "refcoco/instances.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "b.jpg", "width": 50, "height": 30}], "annotations": anns}))
    meta = prepare(fmt="refer", data_root=tmp_path, dataset="refcoco", image_root=tmp_path, out=tmp_path / "p",
                   progress=False)
    assert meta["splits"] == {"val": 3}
    for train_mode in (True, False):
        ds = GroundingDataset(tmp_path / "p", "val", tokenizer=load_tokenizer(), img_size=64, max_len=12,
                              train=train_mode)
        for i in range(3):
            box = ds[i]["box"]
            assert ((box - box.clamp(0, 1)).abs() < 1e-6).all() and (box[2:] > 0).all()


def test_configs_with_unknown_keys_or_wrong_types_are_rejected_with_the_key_named(tmp_path, prepared, capsys):
    cfg = write_run_config(tmp_path / "cfg.yaml", prepared, tmp_path / "run")
    for override, key in (("optim.lrr=1", "optim.lrr"), ("run.epochs=two", "run.epochs"),
                          ("data.eval_splits=val", "data.eval_splits"), ("model.overrides.depthh=3", "depthh"),
                          ("model.overrides.depth=3.5", "depth")):
        assert main(["train", "--config", str(cfg), override]) == 2
        assert key in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("_base_: cfg.yaml\nrun: {epochz: 3}\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "run.epochz" in capsys.readouterr().err


def test_checkpoints_with_missing_keys_or_wrong_shapes_are_rejected_with_the_key_named(tmp_path, prepared, capsys):
    from safetensors.torch import load_file, save_file

    model = build_model("tiny", img_size=64, pretrain_img_size=64, window_size=2)
    model.save_pretrained(tmp_path / "ck")
    weights = load_file(tmp_path / "ck/model.safetensors")
    missing = {k: v for k, v in weights.items() if k != "box_head.q_proj.weight"}
    save_file(missing, tmp_path / "ck/model.safetensors")
    with pytest.raises(ValueError, match="missing.*box_head.q_proj.weight"):
        from_pretrained(tmp_path / "ck")
    save_file({**weights, "mask_head.upsample.0.bias": torch.zeros(3)}, tmp_path / "ck/model.safetensors")
    assert main(["eval", "--checkpoint", str(tmp_path / "ck"), "--data", str(prepared)]) == 2
    assert "mask_head.upsample.0.bias: checkpoint (3,) vs model" in capsys.readouterr().err
    # a training checkpoint with a key removed
    state = {"model": {k: v for k, v in model.state_dict().items() if k != "backbone.pos_embed"},
             "model_config": model.config_dict()}
    torch.save(state, tmp_path / "last.pt")
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["predict", "--checkpoint", str(tmp_path / "last.pt"), "--image", str(image), "--text", "x"]) == 2
    assert "backbone.pos_embed" in capsys.readouterr().err


# ----------------------------------------------------------------------------- security
def test_planted_pickles_never_run_at_any_entry_point(tmp_path, prepared, payload):
    evil = pickle.dumps({"model": {"backbone.net.pos_embed": payload}})
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "model_final.pkl").write_bytes(evil)  # detectron2 weights
    (planted / "mae.pth").write_bytes(evil)  # MAE / timm weights
    buf = io.BytesIO()
    torch.save({"model": payload, "model_config": {}}, buf)
    (planted / "last.pt").write_bytes(buf.getvalue())  # a training checkpoint
    (planted / "refcoco").mkdir()
    (planted / "refcoco/refs(unc).p").write_bytes(pickle.dumps([payload]))  # REFER refs
    (planted / "refcoco/instances.json").write_text('{"images": [], "annotations": []}')
    (planted / "unc").mkdir()
    (planted / "unc/unc_val.pth").write_bytes(buf.getvalue())  # TransVG split file
    (planted / "ck").mkdir()
    (planted / "ck/config.json").write_text(json.dumps(build_model("tiny").config_dict()))
    (planted / "ck/model.safetensors").write_bytes(evil)  # a "vglaw checkpoint" that is a pickle
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)

    from vglaw.weights.vit import load_detectron2_vit, load_mae_vit

    vit = build_model("tiny").backbone
    for call in (lambda: load_detectron2_vit(vit, planted / "model_final.pkl"),
                 lambda: load_mae_vit(vit, planted / "mae.pth")):
        with pytest.raises(Exception):
            call()
    commands = [["prepare", "--data-root", str(planted), "--dataset", "refcoco", "--images", str(tmp_path),
                 "--out", str(tmp_path / "p1")],
                ["prepare", "--format", "transvg", "--data-root", str(planted), "--dataset", "unc", "--images",
                 str(tmp_path), "--out", str(tmp_path / "p2")],
                ["eval", "--checkpoint", str(planted / "last.pt"), "--data", str(prepared)],
                ["predict", "--checkpoint", str(planted / "last.pt"), "--image", str(image), "--text", "x"],
                ["predict", "--checkpoint", str(planted / "ck"), "--image", str(image), "--text", "x"]]
    for args in commands:
        assert main(args) == 2, args
    cfg = write_run_config(tmp_path / "cfg.yaml", prepared, planted)
    (planted / "checkpoints").mkdir()
    (planted / "checkpoints/last.pt").write_bytes(buf.getvalue())
    assert main(["train", "--config", str(cfg), "--resume"]) == 2
    assert not payload.marker.exists()


def test_reliability_table_lists_exactly_these_tests():
    table = (ROOT / "docs/RELIABILITY.md").read_text()
    listed = re.findall(r"^\| `(test_\w+)` \|", table, flags=re.M)
    here = sorted(name for name in globals() if name.startswith("test_"))
    assert sorted(listed) == here
