"""MindSpore .ckpt files (written here in the protobuf wire format) convert and round-trip."""

import numpy as np
import pytest
import torch

from vglaw.cli import main
from vglaw.model.io import from_pretrained
from vglaw.weights.mindspore import convert_mindspore_state, read_mindspore_ckpt

# ----------------------------------------------------------------- an independent .ckpt writer
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited field
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


MS_TYPES = {np.dtype(np.float32): "Float32", np.dtype(np.float16): "Float16", np.dtype(np.float64): "Float64",
            np.dtype(np.int32): "Int32", np.dtype(np.int64): "Int64"}


def write_ckpt(path, arrays: dict, packed: bool = True) -> None:
    msg = bytearray()
    for name, a in arrays.items():
        if packed:
            dims = _field(1, b"".join(_varint(d) for d in a.shape))
        else:
            dims = b"".join(_varint(1 << 3 | 0) + _varint(d) for d in a.shape)
        tensor = dims + _field(2, MS_TYPES[a.dtype].encode()) + _field(3, a.astype(a.dtype.newbyteorder("<")).tobytes())
        msg += _field(1, _field(1, name.encode()) + _field(2, tensor))
    path.write_bytes(bytes(msg))


# ------------------------------------------- the authors' parameter list for a small model
def authors_shapes(depth=2, C=64, Dt=64, K=4, hidden=4, text_layers=2, vocab=100, grid=4, window=2,
                   global_blocks=(1,)) -> dict:
    """Names and layouts as the authors' MindSpore model has them (reference README)."""
    s = {"text_encoder.embeddings.word_embeddings.embedding_table": (vocab, Dt),
         "text_encoder.embeddings.position_embeddings.embedding_table": (40, Dt),
         "text_encoder.embeddings.token_type_embeddings.embedding_table": (2, Dt),
         "text_encoder.embeddings.layer_norm.gamma": (Dt,), "text_encoder.embeddings.layer_norm.beta": (Dt,)}
    for j in range(text_layers):
        p = f"text_encoder.encoder.layer.{j}."
        for qkv in ("query", "key", "value"):
            s[p + f"attention.self_attn.{qkv}.weight"], s[p + f"attention.self_attn.{qkv}.bias"] = (Dt, Dt), (Dt,)
        s[p + "attention.output.dense.weight"], s[p + "attention.output.dense.bias"] = (Dt, Dt), (Dt,)
        s[p + "attention.output.layer_norm.gamma"] = s[p + "attention.output.layer_norm.beta"] = (Dt,)
        s[p + "intermediate.dense.weight"], s[p + "intermediate.dense.bias"] = (4 * Dt, Dt), (4 * Dt,)
        s[p + "output.dense.weight"], s[p + "output.dense.bias"] = (Dt, 4 * Dt), (Dt,)
        s[p + "output.layer_norm.gamma"] = s[p + "output.layer_norm.beta"] = (Dt,)
    s["text_encoder.pooler.dense.weight"], s["text_encoder.pooler.dense.bias"] = (Dt, Dt), (Dt,)
    s["visual_encoder.pos_embed"] = (1, 1 + (grid // 2) ** 2, C)  # pretrained at half the grid
    s["visual_encoder.patch_embed.proj.weight"], s["visual_encoder.patch_embed.proj.bias"] = (C, 3, 16, 16), (C,)
    for i in range(depth):
        p = f"visual_encoder.blocks.{i}."
        n = grid if i in global_blocks else window
        for norm in ("norm1", "norm2"):
            s[p + norm + ".gamma"] = s[p + norm + ".beta"] = (C,)
        s[p + "attn.rel_pos_h"] = s[p + "attn.rel_pos_w"] = (2 * n - 1, 64)
        s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"] = (3 * C, C), (3 * C,)
        s[p + "attn.proj.weight"], s[p + "attn.proj.bias"] = (C, C), (C,)
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = (4 * C, C), (4 * C,)
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = (C, 4 * C), (C,)
    s["weight_generator.S"], s["weight_generator.D"] = (3 * C, K, 1), (K, C, 1)
    s["weight_generator.layer_embedding"] = (depth, 1, Dt)
    for i in range(depth):
        p = f"weight_generator.proj.{i}."
        s[p + "0.weight"], s[p + "0.bias"] = (hidden, Dt), (hidden,)
        s[p + "1.gamma"] = s[p + "1.beta"] = (hidden,)
        s[p + "3.weight"], s[p + "3.bias"] = (K * K, hidden), (K * K,)
    for qk in ("q_proj", "k_proj"):
        s[f"ada_gap.{qk}.weight"], s[f"ada_gap.{qk}.bias"] = (64, C), (64,)
    s["up_sample.0.weight"], s["up_sample.0.bias"] = (C, 256, 2, 2), (256,)
    s["up_sample.1.weight"] = s["up_sample.1.bias"] = (256,)
    s["up_sample.3.weight"], s["up_sample.3.bias"] = (256, Dt, 2, 2), (Dt,)
    s["bbox_pred.layers.0.weight"], s["bbox_pred.layers.0.bias"] = (256, C), (256,)
    s["bbox_pred.layers.1.weight"], s["bbox_pred.layers.1.bias"] = (256, 256), (256,)
    s["bbox_pred.layers.2.weight"], s["bbox_pred.layers.2.bias"] = (4, 256), (4,)
    return s


def authors_params(seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: (0.05 * rng.standard_normal(v)).astype(np.float32) for k, v in authors_shapes().items()}


def test_ckpt_reader_decodes_dtypes_and_dims(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1.5, -2], np.float16),
              "c": np.arange(4, dtype=np.int64).reshape(1, 4, 1), "scalar": np.array(3, np.int32)}
    for packed in (True, False):
        write_ckpt(tmp_path / "x.ckpt", arrays, packed=packed)
        got = read_mindspore_ckpt(tmp_path / "x.ckpt")
        assert list(got) == list(arrays)
        for k, v in arrays.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape and np.array_equal(got[k], v), k


def test_ckpt_reader_rejects_garbage(tmp_path):
    (tmp_path / "bad.ckpt").write_bytes(b"\x0a\xff\xff\xff\x0f" + b"abc")
    with pytest.raises(ValueError, match="bad.ckpt.*not a readable MindSpore checkpoint"):
        read_mindspore_ckpt(tmp_path / "bad.ckpt")


def test_convert_cli_round_trip(tmp_path, capsys):
    params = authors_params()
    optimizer = {"moments.visual_encoder.blocks.0.attn.qkv.weight": np.zeros((192, 64), np.float32),
                 "learning_rate": np.array(1e-4, np.float32), "global_step": np.array(10, np.int32)}
    write_ckpt(tmp_path / "authors.ckpt", {**params, **optimizer})
    assert main(["convert", "--from", "mindspore", str(tmp_path / "authors.ckpt"), "--out", str(tmp_path / "ck")]) == 0
    printed = capsys.readouterr().out
    assert f"mapped {len(params) - 2} parameters" in printed
    assert "unused by vglaw (2): text_encoder.pooler.dense.weight, text_encoder.pooler.dense.bias" in printed
    assert "skipped, not model parameters (3): moments.visual_encoder.blocks.0.attn.qkv.weight" in printed

    model = from_pretrained(tmp_path / "ck")
    c = model.config
    assert (c.vit_ln_eps, c.generator_ln_eps, c.mask_ln_eps, c.pos_resize) == (1e-5, 1e-7, 1e-6, "tf_bicubic")
    assert (c.img_size, c.embed_dim, c.depth, c.window_size, c.global_blocks, c.law_rank) == (64, 64, 2, 2, (1,), 4)
    assert model.backbone.blocks[0].norm1.eps == 1e-5 and model.generator.mlps[0][1].eps == 1e-7
    sd = model.state_dict()
    checks = {
        "generator.S": params["weight_generator.S"][:, :, 0],
        "generator.D": params["weight_generator.D"][:, :, 0],
        "generator.layer_embed": params["weight_generator.layer_embedding"][:, 0],
        "generator.mlps.1.1.weight": params["weight_generator.proj.1.1.gamma"],
        "backbone.blocks.1.norm2.bias": params["visual_encoder.blocks.1.norm2.beta"],
        "backbone.pos_embed": params["visual_encoder.pos_embed"],
        "mask_head.upsample.0.weight": params["up_sample.0.weight"],
        "box_head.mlp.layers.2.weight": params["bbox_pred.layers.2.weight"],
        "text_encoder.bert.encoder.layer.1.attention.self.key.bias":
            params["text_encoder.encoder.layer.1.attention.self_attn.key.bias"],
        "text_encoder.bert.encoder.layer.0.output.LayerNorm.weight":
            params["text_encoder.encoder.layer.0.output.layer_norm.gamma"],
        "text_encoder.bert.embeddings.word_embeddings.weight":
            params["text_encoder.embeddings.word_embeddings.embedding_table"],
    }
    for name, want in checks.items():
        assert np.array_equal(sd[name].numpy(), want), name
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), torch.tensor([[1] + [5] * 38 + [2]]), torch.ones(1, 40, dtype=torch.long))
    assert out["mask_logits"].shape == (1, 1, 64, 64) and torch.isfinite(out["boxes"]).all()


def test_every_model_parameter_is_covered_once():
    params = authors_params()
    model, report = convert_mindspore_state(params)
    assert sorted(report.mapped.values()) == sorted(model.state_dict())  # a bijection onto the model
    assert len(set(report.mapped.values())) == len(report.mapped)


def test_missing_parameter_is_named():
    params = authors_params()
    del params["visual_encoder.blocks.1.attn.rel_pos_w"]
    with pytest.raises(ValueError, match="missing.*backbone.blocks.1.attn.rel_pos_w"):
        convert_mindspore_state(params)
