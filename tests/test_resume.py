"""Resume with the config users run: configs/synth_tiny.yaml (text cache, a loader worker,
multi-scale, the random-size crop). A run stopped by Ctrl-C (SIGINT to the training process,
here this one) or kill -9 (to its process group, loader worker included) and continued with
--resume logs the same epoch lines and ends with the same weights, bit for bit, as the run
never stopped. And what --resume and an occupied run folder refuse."""
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vglaw.cli import main
from vglaw.engine.checkpoint import load_checkpoint
from vglaw.engine.train import TrainRun

from conftest import make_synth_set, write_run_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/synth_tiny.yaml"
# what the test is about stays as shipped (text cache, a loader worker, multi-scale, the random
# crop); the model is made smaller and the data 4 images (24 expressions): 3 optimizer steps of 2
# accumulated micro-batches per epoch. Stochastic depth is on (the RefCOCO configs have it, the
# tiny preset not), so that where the run stands in torch's global RNG matters too
SMALL = ["model.overrides.img_size=32", "model.overrides.pretrain_img_size=32", "model.overrides.window_size=2",
         "model.overrides.depth=2", "model.overrides.global_blocks=[1]", "model.overrides.law_rank=8",
         "model.overrides.generator_heads=4", "model.overrides.box_hidden_dim=64",
         "model.overrides.drop_path_rate=0.1", "optim.effective_batch=8", "optim.batch_size=4", "run.epochs=2"]
# the CLI in a child process that stops right after optimizer step STEP (and its checkpoint, if
# one is due) and waits there to be killed
PAUSED = """
import pathlib, sys, time
from vglaw.engine import train
step, marker = int(sys.argv[1]), pathlib.Path(sys.argv[2])
on_step = train.TrainRun._on_step
def pause(self):
    on_step(self)
    if self.state.global_step == step:
        marker.touch()
        time.sleep(600)
train.TrainRun._on_step = pause
from vglaw.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synth_set(tmp_path_factory.mktemp("resume"), seed=5, split_sizes={"train": 4, "val": 1})


def cli(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(CONFIG), f"data.prepared={data}", f"run.out={out}", *SMALL, *extra]


def ctrl_c_after(step: int, args: list[str], monkeypatch, capsys) -> None:
    """``vglaw ARGS`` here, sent SIGINT (what Ctrl-C sends) right after optimizer step STEP: exit 130
    and one line saying what was kept and how to continue."""
    on_step = TrainRun._on_step

    def interrupt(self):
        on_step(self)
        if self.state.global_step == step:
            os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt here

    monkeypatch.setattr(TrainRun, "_on_step", interrupt)
    capsys.readouterr()
    assert main(args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vglaw train: interrupted: ") and "last.pt holds the last saved step" in err[-1]
    assert "continue with the same command and --resume" in err[-1] and not any("Traceback" in e for e in err)
    monkeypatch.undo()


def kill_9_after(step: int, args: list[str], tmp_path: Path) -> None:
    """``vglaw ARGS`` in a process group of its own (its loader worker with it), all killed with
    SIGKILL once optimizer step STEP is done."""
    marker = tmp_path / f"paused_{step}"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(ROOT),
           "TQDM_DISABLE": "1"}  # as many threads as this process, which trains the reference: the same sums
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, str(step), str(marker), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-3000:]
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
        proc.stderr.close()


def epoch_lines(run: Path) -> tuple[list[dict], list[str]]:
    """log.jsonl without the seconds, and train.log's epoch lines without their time stamps."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    for record in records:
        del record["seconds"]
    console = re.findall(r"^\S+ \S+ (epoch \d+: loss .*)$", (run / "train.log").read_text(), flags=re.M)
    return records, console


def test_a_run_stopped_by_ctrl_c_and_kill_9_and_resumed_equals_the_run_never_stopped(tmp_path, data, caplog, capsys,
                                                                                      monkeypatch):
    shipped = CONFIG.read_text()
    assert all(key in shipped for key in ("cache_text: true", "num_workers: 1", "multiscale: true", "crop: random"))
    caplog.set_level(logging.INFO, logger="vglaw")  # train.log's epoch lines, here in the test process too
    assert main(cli(data, tmp_path / "full")) == 0
    run = tmp_path / "run"
    # Ctrl-C after step 3, the last of epoch 0, before the epoch's evaluation and log line
    ctrl_c_after(3, cli(data, run, "run.checkpoint_every=3"), monkeypatch, capsys)
    state = load_checkpoint(run / "checkpoints/last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (0, 3) and not (run / "log.jsonl").exists()
    # resumed, then kill -9 after step 5, in the middle of epoch 1: the last checkpoint is step 4's
    kill_9_after(5, cli(data, run, "run.checkpoint_every=2", "--resume"), tmp_path)
    assert load_checkpoint(run / "checkpoints/last.pt")["global_step"] == 4
    assert main(cli(data, run, "--resume")) == 0

    records, console = epoch_lines(tmp_path / "full")
    assert [r["epoch"] for r in records] == [0, 1] and len(console) == 2
    assert epoch_lines(run) == (records, console)
    full, resumed = (load_checkpoint(r / "checkpoints/last.pt") for r in (tmp_path / "full", run))
    assert resumed["global_step"] == full["global_step"] == 6
    assert full["model"].keys() == resumed["model"].keys()
    assert all(torch.equal(full["model"][k], resumed["model"][k]) for k in full["model"])
    # resuming a finished run trains nothing, and says so
    caplog.clear()
    assert main(cli(data, run, "--resume")) == 0
    assert "nothing left to train" in caplog.text and epoch_lines(run) == (records, console)


def test_resume_needs_a_run_and_a_new_run_needs_a_free_folder(tmp_path, synth_prepared, capsys):
    cfg = str(write_run_config(tmp_path / "cfg.yaml", synth_prepared, tmp_path / "run"))
    assert main(["train", "--config", cfg, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "run") in err[0] and "--resume" in err[0]
    assert not (tmp_path / "run").exists()  # refused before anything is written

    (tmp_path / "run/checkpoints").mkdir(parents=True)
    (tmp_path / "run/checkpoints/last.pt").write_bytes(b"an earlier run")
    assert main(["train", "--config", cfg]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "run") in err[0]
    assert "--resume" in err[0] and "run.out" in err[0]
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["checkpoints", "last.pt"]  # untouched
