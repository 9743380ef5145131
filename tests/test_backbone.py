"""The backbone is ViTDet: checked against timm's independent implementation of the same
block (VisionTransformerSAM), and its helpers against PIL and hand-computed cases."""
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from vglaw.model import ViT
from vglaw.model.vit_utils import get_abs_pos, keys_cubic_matrix, sincos_pos_embed, window_partition, window_unpartition

timm = pytest.importorskip("timm")


def timm_vitdet(ours: ViT, img_size: int, embed_dim: int, depth: int, heads: int, window: int, global_idx):
    """timm's SAM ViT configured as ViTDet (no neck), holding a copy of our weights."""
    ref = timm.create_model("samvit_base_patch16", pretrained=False, img_size=img_size, embed_dim=embed_dim,
                            depth=depth, num_heads=heads, window_size=window, global_attn_indexes=global_idx,
                            neck_chans=0, num_classes=0, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    ref.neck = nn.Identity()
    state = {k: v for k, v in ours.state_dict().items() if k != "pos_embed"}
    grid = img_size // 16
    with torch.no_grad():
        state["pos_embed"] = get_abs_pos(ours.pos_embed, True, (grid, grid))
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("head", "neck")) for k in missing), (missing, unexpected)
    return ref.eval()


def random_vit(seed: int, **kwargs) -> ViT:
    torch.manual_seed(seed)
    vit = ViT(**kwargs).eval()
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.5)  # zero-initialised in ViTDet: make them count
            elif name.endswith("bias"):
                p.normal_(0, 0.02)
    return vit


@pytest.mark.parametrize("case", [
    dict(img_size=448, embed_dim=768, depth=12, num_heads=12, window_size=14, global_blocks=(2, 5, 8, 11)),
    # grid 10 with window 4: windows padded to 12x12; pretrain grid 14 resized to 10
    dict(img_size=160, embed_dim=64, depth=3, num_heads=4, window_size=4, global_blocks=(1,)),
], ids=["vitb-448", "small-padded"])
def test_backbone_matches_timm_vitdet(case):
    ours = random_vit(0, drop_path_rate=0.1, **case)
    ref = timm_vitdet(ours, case["img_size"], case["embed_dim"], case["depth"], case["num_heads"],
                      case["window_size"], case["global_blocks"])
    x = torch.randn(2, 3, case["img_size"], case["img_size"])
    with torch.no_grad():
        got = ours(x)
        want = ref.forward_features(x)
    assert got.shape == want.shape == (2, case["embed_dim"], case["img_size"] // 16, case["img_size"] // 16)
    assert (got - want).abs().max().item() <= 1e-4


def test_stochastic_depth_is_linear_over_depth():
    vit = ViT(img_size=64, embed_dim=32, depth=5, num_heads=2, window_size=2, global_blocks=(4,),
              drop_path_rate=0.2)
    assert [b.drop_path.p for b in vit.blocks] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_window_partition_round_trip_with_padding():
    x = torch.randn(2, 10, 7, 3)
    windows, pad_hw = window_partition(x, 4)
    assert windows.shape == (2 * 3 * 2, 4, 4, 3) and pad_hw == (12, 8)
    assert torch.equal(windows[0], x[0, :4, :4])  # first window is the top-left corner
    assert torch.equal(windows[1, :, :3], x[0, :4, 4:7])  # second window, padded on the right
    assert torch.all(windows[1, :, 3] == 0)
    assert torch.equal(window_unpartition(windows, 4, pad_hw, (10, 7)), x)


def test_tf_bicubic_matches_pil():
    """PIL's bicubic (a = -0.5, out-of-image taps dropped and renormalised) is an independent
    implementation of the TF/MindSpore resize the authors' code runs."""
    grid = np.random.default_rng(0).standard_normal((14, 14)).astype(np.float32)
    pil = np.asarray(Image.fromarray(grid, mode="F").resize((28, 28), Image.BICUBIC))
    table = torch.cat([torch.zeros(1, 1, 1), torch.from_numpy(grid).reshape(1, 196, 1)], dim=1)
    ours = get_abs_pos(table.double(), True, (28, 28), mode="tf_bicubic")[0, :, :, 0]
    assert np.abs(ours.numpy() - pil).max() < 1e-4


def test_keys_cubic_rows_sum_to_one_and_torch_mode_is_interpolate():
    M = keys_cubic_matrix(14, 28)
    assert torch.allclose(M.sum(1), torch.ones(28, dtype=M.dtype))
    table = torch.randn(1, 1 + 49, 8)
    want = torch.nn.functional.interpolate(table[:, 1:].reshape(1, 7, 7, 8).permute(0, 3, 1, 2), size=(9, 9),
                                           mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(get_abs_pos(table, True, (9, 9)), want)


def test_sincos_table_hand_values():
    table = sincos_pos_embed(8, 2, cls_token=True)[0]  # (1 + 4, 8)
    assert torch.equal(table[0], torch.zeros(8))
    # position (h=1, w=0) is row 1 + 2: first half encodes w, second half h; omega = (1, 0.01)
    expected = torch.tensor([0, 0, 1, 1, np.sin(1), np.sin(0.01), np.cos(1), np.cos(0.01)], dtype=torch.float32)
    assert torch.allclose(table[3], expected, atol=1e-6)
