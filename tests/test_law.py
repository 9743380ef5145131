"""Language Adaptive Weights: the batched adaptive qkv equals each sample's explicitly built
dense weight; every law type starts as the static backbone; the language path is live."""
import copy

import pytest
import torch

from vglaw import build_model
from vglaw.model import LAW_TYPES, ViT, WeightGenerator
from vglaw.model.law import LawFactors

from conftest import randomize_, text_batch


def dense_weight(W0: torch.Tensor, f: LawFactors, b: int) -> torch.Tensor:
    """Sample b's effective qkv weight, built explicitly: diag(o) W0 diag(s_g) + S Phi D."""
    W = W0.clone()
    if f.in_scale is not None:
        G = f.in_scale.shape[1]
        rows = W0.shape[0] // 3 * torch.tensor({1: [3], 2: [2, 1], 3: [1, 1, 1]}[G])
        W = torch.cat([w * f.in_scale[b, g][None, :] for g, w in enumerate(W0.split(rows.tolist()))])
    if f.out_scale is not None:
        W = f.out_scale[b][:, None] * W
    if f.Phi is not None:
        W = W + f.S @ f.Phi[b] @ f.D  # (3C, K) @ (K, K) @ (K, C)
    return W


def perturb_(generator: WeightGenerator, seed: int = 1, std: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mlp in generator.mlps:
            mlp[3].weight.add_(std * torch.randn(mlp[3].weight.shape, generator=g))
            mlp[3].bias.add_(std * torch.randn(mlp[3].bias.shape, generator=g))


@pytest.mark.parametrize("law_type", [t for t in LAW_TYPES if t != "none"])
def test_batched_law_equals_per_sample_dense_weights(law_type):
    """A small ViT (grid 5, window 2: padded windows, plus a global block); each sample run
    alone through a static copy whose qkv weights are that sample's dense W must match."""
    torch.manual_seed(0)
    C, depth, Dt = 16, 2, 24
    vit = ViT(img_size=80, embed_dim=C, depth=depth, num_heads=2, window_size=2, global_blocks=(1,)).eval()
    randomize_(vit, seed=2)
    gen = WeightGenerator(law_type=law_type, depth=depth, text_dim=Dt, embed_dim=C, rank=4, num_heads=3,
                          reduction=4, groups=3 if law_type == "la" else 1)
    perturb_(gen)
    text, mask = torch.randn(3, 6, Dt), torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 4 + [0] * 2])
    images = torch.randn(3, 3, 80, 80)
    with torch.no_grad():
        factors = gen(text, mask)
        batched = vit(images, factors)
        for b in range(3):
            static = copy.deepcopy(vit)
            for block, f in zip(static.blocks, factors):
                block.attn.qkv.weight.copy_(dense_weight(block.attn.qkv.weight, f, b))
            alone = static(images[b:b + 1])
            assert torch.allclose(batched[b:b + 1], alone, atol=1e-5), (law_type, b)
        assert not torch.allclose(batched, vit(images), atol=1e-3)  # the factors did something


def test_generator_pooling_is_masked_multihead_attention_without_projections():
    """Pooled features equal torch's MultiheadAttention with identity projections."""
    torch.manual_seed(0)
    gen = WeightGenerator(law_type="svd", depth=5, text_dim=24, embed_dim=8, rank=2, num_heads=3, reduction=4)
    text, mask = torch.randn(2, 7, 24), torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    mha = torch.nn.MultiheadAttention(24, 3, bias=False, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.eye(24).repeat(3, 1))
        mha.out_proj.weight.copy_(torch.eye(24))
        want, _ = mha(gen.layer_embed.expand(2, -1, -1), text, text, key_padding_mask=mask == 0)
        got = gen.pool(text, mask)  # (depth, B, Dt)
    assert torch.allclose(got.transpose(0, 1), want, atol=1e-6)


@pytest.mark.parametrize("law_type", LAW_TYPES)
def test_every_law_type_is_the_static_backbone_at_init(law_type):
    torch.manual_seed(0)
    model = build_model("tiny", law_type=law_type).eval()
    randomize_(model.backbone, seed=3)
    ids, mask = text_batch(2, 20, (9, 20))
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        with_law = model(images, ids, mask)["features"]
        static = model.backbone(images)
    assert torch.equal(with_law, static) if law_type == "none" else torch.allclose(with_law, static, atol=1e-6)


@pytest.mark.parametrize("law_type", [t for t in LAW_TYPES if t != "none"])
def test_language_changes_features_and_padding_does_not(law_type):
    torch.manual_seed(0)
    model = build_model("tiny", law_type=law_type).eval()
    perturb_(model.generator)
    image = torch.randn(1, 3, 128, 128).expand(2, -1, -1, -1)
    ids, mask = text_batch(2, 20, (9, 9), seed=5)  # two different expressions of the same length
    with torch.no_grad():
        out = model(image, ids, mask)
        assert (out["features"][0] - out["features"][1]).abs().max() > 1e-3
        # the first expression again, its padding filled with other tokens: nothing changes
        junk = ids[:1].clone()
        junk[0, 9:] = torch.randint(1000, 29000, (11,))
        again = model(image[:1], junk, mask[:1])
    for key in ("features", "boxes", "mask_logits"):
        assert torch.allclose(again[key], out[key][:1], atol=1e-5), key


def test_gradients_reach_every_part():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    perturb_(model.generator, std=0.05)  # a zero last layer blocks gradients to S, D and the MLPs' first layers
    ids, mask = text_batch(2, 20, (9, 20))
    out = model(torch.randn(2, 3, 128, 128), ids, mask)
    (out["boxes"].sum() + out["mask_logits"].mean()).backward()
    named = dict(model.named_parameters())
    for name in ("backbone.blocks.0.attn.qkv.weight", "generator.S", "generator.D", "generator.layer_embed",
                 "generator.mlps.0.0.weight", "generator.mlps.3.3.weight", "box_head.q_proj.weight",
                 "box_head.mlp.layers.2.weight", "mask_head.upsample.3.weight",
                 "text_encoder.bert.embeddings.word_embeddings.weight",
                 "text_encoder.bert.encoder.layer.1.output.dense.weight"):
        grad = named[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_mask_head_equals_pixel_embeddings_dot_text():
    """The folded forward equals the literal one: ConvT -> LN -> GELU -> ConvT, then the
    per-pixel dot product with [CLS] and bilinear (align_corners=True) to the canvas."""
    from vglaw.model import MaskHead

    torch.manual_seed(0)
    head = randomize_(MaskHead(embed_dim=16, text_dim=12, hidden_dim=8), seed=1, std=0.3)
    features, cls = torch.randn(2, 16, 3, 5), torch.randn(2, 12)
    pixels = head.upsample(features)  # (2, 12, 12, 20) via torch's ConvTranspose2d
    literal = torch.einsum("bchw,bc->bhw", pixels, cls)[:, None]
    literal = torch.nn.functional.interpolate(literal, size=(24, 24), mode="bilinear", align_corners=True)
    assert torch.allclose(head(features, cls, 24), literal, atol=1e-5)


def test_box_head_starts_with_spread_boxes():
    """At init the box MLP (He-uniform) maps different pooled features to clearly different
    boxes; PyTorch's default Linear init would give logits ~0.02 and every box ~ the canvas centre."""
    from vglaw.model import BoxHead

    torch.manual_seed(0)
    head = BoxHead(embed_dim=128, text_dim=384, attn_dim=32, hidden_dim=64)
    features = torch.randn(64, 128, 6, 6) * torch.linspace(0.5, 3, 64)[:, None, None, None]
    logits = head(features, torch.randn(64, 384))
    assert logits.std(0).min() > 0.1, logits.std(0)
    default = torch.nn.Linear(64, 4)  # what the last layer would be without reset_parameters
    assert default.weight.abs().max() < head.mlp.layers[-1].weight.abs().max()


def test_svd_law_runs_under_bf16_autocast_and_stays_close_to_fp32():
    torch.manual_seed(0)
    model = randomize_(build_model("tiny", img_size=64, pretrain_img_size=64), seed=2, std=0.02).eval()
    ids, mask = text_batch(2, 12, (7, 12))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(images, ids, mask)["boxes"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(images, ids, mask)["boxes"]
    assert half.dtype in (torch.bfloat16, torch.float32)
    assert torch.allclose(half.float(), ref, atol=0.05), (half, ref)


def test_box_attention_is_the_pooling_the_box_is_regressed_from():
    """The attention map, written out (softmax of q.k / sqrt(A) over the tokens), pools the
    features into exactly what the box MLP reads: the map shown is the one the box comes from."""
    from vglaw.model import BoxHead

    torch.manual_seed(0)
    head = randomize_(BoxHead(embed_dim=16, text_dim=12, attn_dim=8, hidden_dim=10), seed=2, std=0.5)
    features, cls = torch.randn(3, 16, 4, 5), torch.randn(3, 12)
    attention = head.attention(features, cls)
    assert attention.shape == (3, 4, 5) and torch.allclose(attention.sum((1, 2)), torch.ones(3))
    pooled = torch.einsum("bhw,bchw->bc", attention, features)
    assert torch.allclose(head.mlp(pooled), head(features, cls), atol=1e-5)
    # a different expression looks elsewhere
    assert not torch.allclose(head.attention(features, -cls), attention, atol=1e-3)
