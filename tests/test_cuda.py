"""The CUDA path as multi-GPU training runs it: an NCCL process group (world size 1, so one GPU
suffices) through training, evaluation, checkpoint save and resume, the non-finite-loss stop,
and the predictor against the CPU. NCCL refuses CPU tensors, so any collective on a CPU tensor
fails here. Skipped without a GPU."""
import json

import numpy as np
import pytest
import torch

from vglaw.config import load_config
from vglaw.data import load_split
from vglaw.engine.checkpoint import load_checkpoint
from vglaw.engine.loop import NonFiniteLossError
from vglaw.data.masks import mask_iou
from vglaw.engine.train import train

from conftest import poison_loss, write_run_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: none is visible here")


@pytest.fixture(scope="module")
def nccl_group():
    import torch.distributed as tdist

    if not tdist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    torch.cuda.set_device(0)
    tdist.init_process_group("nccl", store=tdist.HashStore(), rank=0, world_size=1)
    assert tdist.get_backend() == "nccl"
    yield
    tdist.destroy_process_group()


def cuda_config(tmp_path, prepared, out, *extra):
    path = write_run_config(tmp_path / "cfg.yaml", prepared, tmp_path / out, batch=2, effective_batch=4,
                            drop_epochs=(1,), checkpoint_every=1)
    return load_config(path, ["run.device=cuda", *extra])


def test_train_evaluate_checkpoint_and_resume_under_nccl(tmp_path, synth_prepared, nccl_group):
    metrics = train(cuda_config(tmp_path, synth_prepared, "full"))
    n_val = len(load_split(synth_prepared, "val")[1])
    assert metrics["val"]["samples"] == n_val and "mIoU" in metrics["val"]  # the meter's all-reduce
    log = [json.loads(x) for x in (tmp_path / "full/log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and log[-1]["train"]["skipped_samples"] == 0
    train(cuda_config(tmp_path, synth_prepared, "cut", "run.max_steps=1"))
    state = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")  # written after gather_object of the RNGs
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 1, 1)
    train(cuda_config(tmp_path, synth_prepared, "cut"), resume=True)
    full, resumed = (load_checkpoint(tmp_path / run / "checkpoints/last.pt")["model"] for run in ("full", "cut"))
    worst = max((full[k].double() - resumed[k].double()).abs().max().item() for k in full)
    assert worst <= 1e-5, worst  # the same kernels in the same order; atomics in some backward kernels


def test_non_finite_loss_stops_before_the_update_under_nccl(tmp_path, synth_prepared, nccl_group, monkeypatch):
    poison_loss(monkeypatch, at_call=5)  # the first micro-batch of optimizer step 3
    with pytest.raises(NonFiniteLossError, match="optimizer step 2"):
        train(cuda_config(tmp_path, synth_prepared, "nan"))
    state = load_checkpoint(tmp_path / "nan/checkpoints/last.pt")
    assert state["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_predictor_on_cuda_matches_the_cpu(synth_prepared):
    from vglaw.hub import DEMO_CHECKPOINT
    from vglaw.inference.predictor import Grounder

    meta, records = load_split(synth_prepared, "val")
    cpu, gpu = Grounder.from_pretrained(DEMO_CHECKPOINT), Grounder.from_pretrained(DEMO_CHECKPOINT, device="cuda")
    for image in sorted({r["image"] for r in records}):
        texts = [r["sentence"] for r in records if r["image"] == image]
        path = f"{meta['image_root']}/{image}"
        for a, b in zip(cpu.predict(path, texts), gpu.predict(path, texts)):
            assert np.abs(np.subtract(a.box, b.box)).max() < 0.5  # pixels
            assert mask_iou(a.mask, b.mask) > 0.98
