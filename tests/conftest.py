import os
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("TQDM_DISABLE", "1")  # keep test logs readable
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Give every parameter a random value (zero-initialised branches included), so that
    comparisons exercise every path: normalisation scales near 1, everything else near 0."""
    g = torch.Generator().manual_seed(seed)
    scales = {id(m.weight) for m in module.modules() if "Norm" in type(m).__name__ and getattr(m, "weight", None)
              is not None}
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((1 if id(p) in scales else 0) + std * torch.randn(p.shape, generator=g))
    return module


def text_batch(batch: int = 2, length: int = 12, lengths=(7, 12), seed: int = 0):
    """Random (input_ids, attention_mask) with [CLS] ... [SEP] and padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, length, dtype=torch.long)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for b in range(batch):
        n = lengths[b % len(lengths)]
        ids[b, 0], ids[b, n - 1] = 101, 102
        ids[b, 1:n - 1] = torch.randint(1000, 29000, (n - 2,), generator=g)
        mask[b, :n] = 1
    return ids, mask


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    from vglaw import build_model
    return build_model("tiny").eval()


def write_run_config(path: Path, prepared: Path, out: Path, *, batch: int = 2, effective_batch: int = 4,
                     drop_epochs=(50,), **run) -> Path:
    """A tiny training run as YAML: 64 px, 2 blocks, a frozen small random BERT (no dropout
    randomness), fp32, no loader workers. ``run`` entries override the run section."""
    cfg = {"model": {"name": "tiny", "freeze_text": True,
                     "overrides": {"img_size": 64, "pretrain_img_size": 64, "embed_dim": 32, "depth": 2,
                                   "num_heads": 2, "window_size": 2, "global_blocks": [1], "max_len": 12,
                                   "text_config": {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1,
                                                   "num_attention_heads": 2, "intermediate_size": 64},
                                   "text_layers": 1, "generator_heads": 2, "generator_reduction": 4}},
           "data": {"prepared": str(prepared), "eval_splits": ["val"], "num_workers": 0, "scale_step": 4},
           "optim": {"effective_batch": effective_batch, "batch_size": batch, "lr": 1e-3, "lr_backbone": 1e-3,
                     "warmup_epochs": 0.5, "drop_epochs": list(drop_epochs)},
           "run": {"out": str(out), "epochs": 2, "seed": 1, **run}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def make_synth_set(root: Path, *, seed: int = 11, split_sizes=None, min_size: int = 64, max_size: int = 96) -> Path:
    """A small synthetic REFER set under ``root`` (``synthref/``, ``images/``), prepared into
    ``root/prep``; returns the prepared folder. Every test's synthetic data comes from here."""
    from vglaw.data import prepare
    from vglaw.data.synth import generate

    generate(root, seed=seed, split_sizes=split_sizes or {"train": 8, "val": 3}, min_size=min_size,
             max_size=max_size, progress=False)
    prepare(fmt="refer", data_root=root, dataset="synthref", image_root=root / "images", out=root / "prep",
            progress=False)
    return root / "prep"


@pytest.fixture(scope="session")
def synth_prepared(tmp_path_factory) -> Path:
    """A prepared synthetic set (8 train and 3 val images), shared by the whole session: read only."""
    return make_synth_set(tmp_path_factory.mktemp("synth_shared"))


class Payload:
    """A value whose unpickling would run code: it creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def payload(tmp_path) -> Payload:
    """A planted-pickle payload; a test checks ``payload.marker`` was never created."""
    return Payload(tmp_path / "PWNED")


def poison_loss(monkeypatch, at_call: int) -> None:
    """Make the training loss NaN at its ``at_call``-th evaluation (1-based)."""
    import vglaw.engine.loop as loop

    real, calls = loop.grounding_loss, [0]

    def poisoned(out, batch, weights):
        calls[0] += 1
        losses = real(out, batch, weights)
        if calls[0] == at_call:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(loop, "grounding_loss", poisoned)
