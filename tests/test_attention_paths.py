"""The attention paths compute the same numbers: relative position folded into extra query and
key channels ("fold", no attention bias, so fused kernels can run) against ViTDet's additive bias
("bias", the reference), outputs and the gradient of every parameter, in fp32 on the CPU."""
import pytest
import torch

from vglaw import build_model

from conftest import randomize_, text_batch

# tiny, and vitb's structure reduced (12 blocks -> 4, 768 wide -> 96) on a grid of 7 with
# windows of 3: the windows are padded, and blocks 1 and 3 attend globally
SHAPES = {"tiny": dict(img_size=64, pretrain_img_size=64, window_size=3),
          "vitb-reduced": dict(img_size=112, pretrain_img_size=112, embed_dim=96, depth=4, num_heads=4, window_size=3,
                               global_blocks=(1, 3), text_layers=1, generator_heads=2, generator_reduction=4,
                               text_config=dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=64))}


# key biases of softmax attention shift every logit of a query alike, which softmax ignores: their
# gradient is zero in exact arithmetic, float noise on both paths
KEY_BIASES = ("box_head.k_proj.bias", "attention.self.key.bias")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max().detach() / b.abs().max().detach().clamp(min=1e-30))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_folded_rel_pos_equals_the_bias_path_with_gradients(shape):
    variant = "tiny" if shape == "tiny" else "vitb"
    torch.manual_seed(0)
    reference = randomize_(build_model(variant, **SHAPES[shape]), seed=5).train()
    folded = build_model(variant, attention="fold", **SHAPES[shape]).train()
    folded.load_state_dict(reference.state_dict())
    size = reference.img_size
    images, (ids, mask) = torch.randn(2, 3, size, size), text_batch(2, 9, (5, 9))
    outs = []
    for model in (reference, folded):
        torch.manual_seed(1)  # the same stochastic depth draws
        out = model(images, ids, mask)
        (out["box_logits"].sum() + out["mask_logits"].mean() + out["features"].square().mean()).backward()
        outs.append(out)
    for key in ("box_logits", "mask_logits", "features"):
        assert relative(outs[1][key], outs[0][key]) <= 1e-5, key
    grads = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert len(grads) == sum(p.requires_grad for p in reference.parameters())
    largest = max(float(g.abs().max()) for g in grads.values())
    for name, p in folded.named_parameters():
        if name.endswith(KEY_BIASES):
            assert max(grads[name].abs().max(), p.grad.abs().max()) <= 1e-6 * largest, name
    worst = max((relative(p.grad, grads[n]), n) for n, p in folded.named_parameters()
                if p.grad is not None and not n.endswith(KEY_BIASES))
    assert worst[0] <= 1e-4, worst


def test_an_unknown_attention_path_is_refused():
    with pytest.raises(ValueError, match="'attention' must be one of"):
        build_model("tiny", attention="flash")
