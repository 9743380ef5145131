import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # keep test logs readable
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Give every parameter a random value (zero-initialised branches included), so that
    comparisons exercise every path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight") and "norm" in name.lower() or name.endswith("LayerNorm.weight"):
                p.copy_(1 + std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
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
