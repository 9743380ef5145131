"""The optional torch.compile path computes what eager mode computes (tiny model, CPU)."""
import shutil

import pytest
import torch

from vglaw import build_model

from conftest import randomize_, text_batch

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                                reason="torch.compile's CPU backend needs a C compiler")


def test_compiled_forward_and_training_step_match_eager():
    torch.manual_seed(0)
    model = randomize_(build_model("tiny", img_size=64, pretrain_img_size=64, window_size=2), seed=5).eval()
    ids, mask = text_batch(2, 20, (9, 20))
    images = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model)
    with torch.no_grad():
        eager, fast = model(images, ids, mask), compiled(images, ids, mask)
    for key in ("boxes", "mask_logits", "features"):
        assert torch.allclose(eager[key], fast[key], atol=1e-4, rtol=1e-4), key
    # one training step: same gradients (the text encoder's dropout off, so both runs are deterministic)
    model.train()
    model.text_encoder.eval()
    grads = []
    for m in (model, compiled):
        model.zero_grad()
        out = m(images, ids, mask)
        (out["boxes"].sum() + out["mask_logits"].mean()).backward()
        grads.append(model.backbone.blocks[0].attn.qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-4, rtol=1e-3)
