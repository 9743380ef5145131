"""Every model variant and LAW type, timm-style: forward shapes, finite outputs, and a backward
pass that reaches every trainable parameter; ``vitb`` once at its real size."""
import pytest
import torch

from vglaw.model import LAW_TYPES, VARIANTS, build_model

from conftest import randomize_, text_batch

# tiny-sized stand-ins for each variant: same structure (windowed and global blocks, padded
# windows, the generator, both heads), small enough for the CPU
SMALL = {"vitb": dict(img_size=80, embed_dim=48, depth=4, num_heads=2, window_size=3, global_blocks=(1, 3),
                      text_layers=1, generator_heads=2, generator_reduction=4, law_rank=4, box_attn_dim=16,
                      box_hidden_dim=16,
                      mask_hidden_dim=8, pretrain_img_size=80,
                      text_config=dict(vocab_size=30522, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32)),
         "tiny": dict(img_size=64, pretrain_img_size=64, window_size=3)}


def test_every_variant_has_a_small_stand_in():
    assert set(SMALL) == set(VARIANTS)


@pytest.mark.parametrize("law_type", LAW_TYPES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_shapes_finite_and_backward_reaches_every_parameter(variant, law_type):
    torch.manual_seed(0)
    model = randomize_(build_model(variant, law_type=law_type, **SMALL[variant])).train()
    size, grid = model.img_size, model.img_size // model.config.patch_size
    ids, mask = text_batch(2, 9, (5, 9))
    out = model(torch.randn(2, 3, size, size), ids, mask)
    assert out["boxes"].shape == out["box_logits"].shape == (2, 4)
    assert out["mask_logits"].shape == (2, 1, size, size)
    assert out["features"].shape == (2, model.config.embed_dim, grid, grid)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert ((out["boxes"] >= 0) & (out["boxes"] <= 1)).all()
    (out["box_logits"].sum() + out["mask_logits"].mean()).backward()
    unreached = [name for name, p in model.named_parameters()
                 if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not unreached, unreached
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert (model.generator is None) == (law_type == "none")


def test_vitb_at_its_real_size():
    torch.manual_seed(0)
    model = build_model("vitb").eval()
    ids, mask = text_batch(1, 12, (12,))
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 448, 448), ids, mask)
    assert out["boxes"].shape == (1, 4) and out["mask_logits"].shape == (1, 1, 448, 448)
    assert out["features"].shape == (1, 768, 28, 28)
    assert all(torch.isfinite(v).all() for v in out.values())
