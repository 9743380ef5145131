"""The authors' MindSpore checkpoints -> vglaw checkpoints.

A MindSpore ``.ckpt`` is a protobuf message (no MindSpore needed to read it)::

    Checkpoint  { repeated Value value = 1; }
    Value       { required string tag = 1; oneof { TensorProto tensor = 2; MapTensorProto maptensor = 3; } }
    TensorProto { repeated int64 dims = 1; required string tensor_type = 2; required bytes tensor_content = 3; }

:func:`read_mindspore_ckpt` decodes it into ``{name: ndarray}``; :func:`convert_mindspore_state`
maps the authors' names and layouts to vglaw's and derives a config that reproduces their
numerics: ViT LayerNorm eps 1e-5, generator LayerNorm eps 1e-7, mask-head
LayerNorm eps 1e-6 and the TF-style bicubic resize of the absolute position grid.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..model import VGLAWConfig, build_model
from ..model.build import model_config_from_dict
from ..model.state import load_state

log = logging.getLogger(__name__)

_DTYPES = {
    "Float16": np.float16, "Float32": np.float32, "Float64": np.float64, "Int8": np.int8, "Int16": np.int16,
    "Int32": np.int32, "Int64": np.int64, "UInt8": np.uint8, "UInt16": np.uint16, "UInt32": np.uint32,
    "UInt64": np.uint64, "Bool": np.bool_, "BFloat16": "bfloat16",
}


# ---------------------------------------------------------------------------- protobuf reading
def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise InputError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview):
    """Yield (field_number, wire_type, value) of one protobuf message; value is an int for
    varint/fixed fields and a memoryview for length-delimited ones."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise InputError("truncated length-delimited field")
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise InputError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise InputError("truncated field")
        yield number, wire, value


def _tensor(buf: memoryview, name: str) -> np.ndarray:
    dims, dtype, content = [], None, b""
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 0:
            dims.append(value)
        elif number == 1 and wire == 2:  # packed repeated int64
            pos = 0
            while pos < len(value):
                d, pos = _varint(value, pos)
                dims.append(d)
        elif number == 2:
            dtype = bytes(value).decode()
        elif number == 3:
            content = value
    if dtype not in _DTYPES:
        raise InputError(f"tensor {name!r} has unsupported tensor_type {dtype!r}")
    if _DTYPES[dtype] == "bfloat16":  # widen bfloat16 bits to float32
        array = (np.frombuffer(content, "<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        array = np.frombuffer(content, np.dtype(_DTYPES[dtype]).newbyteorder("<"))
    expected = int(np.prod(dims)) if dims else 1
    if array.size != expected:
        raise InputError(f"tensor {name!r}: {array.size} values for dims {dims}")
    return array.reshape(dims).astype(array.dtype.newbyteorder("="))


def read_mindspore_ckpt(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Decode a MindSpore ``.ckpt`` file into ``{name: ndarray}`` (map tensors are skipped
    with a warning)."""
    data = memoryview(Path(path).read_bytes())
    arrays = {}
    try:
        for number, wire, value in _fields(data):
            if number != 1 or wire != 2:
                continue
            tag, tensor = None, None
            for n, w, v in _fields(value):
                if n == 1:
                    tag = bytes(v).decode()
                elif n == 2:
                    tensor = v
                elif n == 3:
                    log.warning("%s: skipping map tensor %s", path, tag)
            if tag is not None and tensor is not None:
                arrays[tag] = _tensor(tensor, tag)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable MindSpore checkpoint ({e})") from None
    if not arrays:
        raise InputError(f"{path}: no tensors found; not a MindSpore checkpoint")
    return arrays


# ---------------------------------------------------------------------------- name mapping
def _squeeze_last(a: np.ndarray) -> np.ndarray:
    return a[..., 0]


def _layer_embed(a: np.ndarray) -> np.ndarray:
    return a[:, 0]  # (depth, 1, Dt) -> (depth, Dt)


# (authors' name pattern, vglaw name, layout change); LayerNorm gamma/beta -> weight/bias
_RULES: list[tuple[str, str, object]] = [
    (r"text_encoder\.embeddings\.(word|position|token_type)_embeddings\.embedding_table",
     r"text_encoder.bert.embeddings.\1_embeddings.weight", None),
    (r"text_encoder\.embeddings\.layer_norm\.gamma", "text_encoder.bert.embeddings.LayerNorm.weight", None),
    (r"text_encoder\.embeddings\.layer_norm\.beta", "text_encoder.bert.embeddings.LayerNorm.bias", None),
    (r"text_encoder\.encoder\.layer\.(\d+)\.attention\.self_attn\.(query|key|value)\.(weight|bias)",
     r"text_encoder.bert.encoder.layer.\1.attention.self.\2.\3", None),
    (r"text_encoder\.encoder\.layer\.(\d+)\.(attention\.output|output)\.layer_norm\.gamma",
     r"text_encoder.bert.encoder.layer.\1.\2.LayerNorm.weight", None),
    (r"text_encoder\.encoder\.layer\.(\d+)\.(attention\.output|output)\.layer_norm\.beta",
     r"text_encoder.bert.encoder.layer.\1.\2.LayerNorm.bias", None),
    (r"text_encoder\.encoder\.layer\.(\d+)\.(attention\.output\.dense|intermediate\.dense|output\.dense)\.(weight|bias)",
     r"text_encoder.bert.encoder.layer.\1.\2.\3", None),
    (r"visual_encoder\.(pos_embed|patch_embed\.proj\.weight|patch_embed\.proj\.bias)", r"backbone.\1", None),
    (r"visual_encoder\.blocks\.(\d+)\.(norm[12])\.gamma", r"backbone.blocks.\1.\2.weight", None),
    (r"visual_encoder\.blocks\.(\d+)\.(norm[12])\.beta", r"backbone.blocks.\1.\2.bias", None),
    (r"visual_encoder\.blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)",
     r"backbone.blocks.\1.\2.\3", None),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.(rel_pos_[hw])", r"backbone.blocks.\1.attn.\2", None),
    (r"weight_generator\.S", "generator.S", _squeeze_last),
    (r"weight_generator\.D", "generator.D", _squeeze_last),
    (r"weight_generator\.layer_embedding", "generator.layer_embed", _layer_embed),
    (r"weight_generator\.proj\.(\d+)\.([03])\.(weight|bias)", r"generator.mlps.\1.\2.\3", None),
    (r"weight_generator\.proj\.(\d+)\.1\.gamma", r"generator.mlps.\1.1.weight", None),
    (r"weight_generator\.proj\.(\d+)\.1\.beta", r"generator.mlps.\1.1.bias", None),
    (r"ada_gap\.(q_proj|k_proj)\.(weight|bias)", r"box_head.\1.\2", None),
    (r"bbox_pred\.layers\.(\d+)\.(weight|bias)", r"box_head.mlp.layers.\1.\2", None),
    # Conv2dTranspose is stored (in, out, kh, kw), the same layout as torch's ConvTranspose2d
    (r"up_sample\.([013])\.(weight|bias)", r"mask_head.upsample.\1.\2", None),
]
# parameters of the authors' model that vglaw does not build
_UNUSED = [r"text_encoder\.pooler\.dense\.(weight|bias)"]


def map_name(name: str) -> tuple[str | None, object]:
    """The vglaw name and layout change for one of the authors' parameter names
    (None when the name is not a model parameter)."""
    for pattern, target, transform in _RULES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, target, name), transform
    return None, None


@dataclass
class ConversionReport:
    mapped: dict[str, str] = field(default_factory=dict)  # authors' name -> vglaw name
    unused: list[str] = field(default_factory=list)  # authors' parameters vglaw does not build
    skipped: list[str] = field(default_factory=list)  # not model parameters (optimizer state ...)

    def __str__(self) -> str:
        lines = [f"mapped {len(self.mapped)} parameters"]
        if self.unused:
            lines.append(f"unused by vglaw ({len(self.unused)}): " + ", ".join(self.unused))
        if self.skipped:
            lines.append(f"skipped, not model parameters ({len(self.skipped)}): " + ", ".join(self.skipped))
        return "\n".join(lines)


def authors_config(arrays: dict[str, np.ndarray]) -> VGLAWConfig:
    """A config that rebuilds the authors' architecture (sizes read off the tensors) with
    their numerical conventions."""
    def shape(name: str) -> tuple[int, ...]:
        if name not in arrays:
            raise KeyError(f"MindSpore checkpoint lacks {name!r}")
        return tuple(arrays[name].shape)

    depth = 1 + max(int(m.group(1)) for n in arrays if (m := re.match(r"visual_encoder\.blocks\.(\d+)\.", n)))
    text_layers = 1 + max(int(m.group(1)) for n in arrays
                          if (m := re.match(r"text_encoder\.encoder\.layer\.(\d+)\.", n)))
    embed_dim = shape("visual_encoder.patch_embed.proj.weight")[0]
    patch = shape("visual_encoder.patch_embed.proj.weight")[2]
    head_dim = shape("visual_encoder.blocks.0.attn.rel_pos_h")[1]
    rel = [shape(f"visual_encoder.blocks.{i}.attn.rel_pos_h")[0] for i in range(depth)]
    grid = (max(rel) + 1) // 2
    window = (min(rel) + 1) // 2
    pretrain_grid = int(round((shape("visual_encoder.pos_embed")[1] - 1) ** 0.5))
    vocab, text_dim = shape("text_encoder.embeddings.word_embeddings.embedding_table")
    text_config = dict(
        vocab_size=vocab, hidden_size=text_dim, num_hidden_layers=text_layers,
        num_attention_heads=text_dim // 64,
        intermediate_size=shape("text_encoder.encoder.layer.0.intermediate.dense.weight")[0],
        max_position_embeddings=shape("text_encoder.embeddings.position_embeddings.embedding_table")[0],
        type_vocab_size=shape("text_encoder.embeddings.token_type_embeddings.embedding_table")[0],
        layer_norm_eps=1e-12, hidden_act="gelu")
    return model_config_from_dict(dict(
        img_size=grid * patch, patch_size=patch, embed_dim=embed_dim, depth=depth, num_heads=embed_dim // head_dim,
        mlp_ratio=shape("visual_encoder.blocks.0.mlp.fc1.weight")[0] / embed_dim, window_size=window,
        global_blocks=tuple(i for i, r in enumerate(rel) if r == max(rel) and max(rel) != min(rel)),
        pretrain_img_size=pretrain_grid * patch,
        vit_ln_eps=1e-5, generator_ln_eps=1e-7, mask_ln_eps=1e-6, pos_resize="tf_bicubic",
        law_type="svd", law_rank=shape("weight_generator.S")[1], generator_heads=text_dim // 64,
        generator_reduction=text_dim // shape("weight_generator.proj.0.0.weight")[0],
        text_layers=text_layers, text_config=text_config, max_len=40,
        box_attn_dim=shape("ada_gap.q_proj.weight")[0], box_hidden_dim=shape("bbox_pred.layers.0.weight")[0],
        mask_hidden_dim=shape("up_sample.0.weight")[1]))


def convert_mindspore_state(arrays: dict, dtype: torch.dtype = torch.float32):
    """Map the authors' parameters (``{name: array}``, e.g. ``read_mindspore_ckpt`` or
    ``authors_reference.make_params``) to a vglaw model.

    Returns:
        (model, report): a VGLAW model in eval mode holding the weights, in ``dtype``, and
        a :class:`ConversionReport`. A parameter the model needs and the checkpoint lacks is an
        error that names it.
    """
    config = authors_config(arrays)
    model = build_model(config).to(dtype)
    report = ConversionReport()
    state = {}
    for name, value in arrays.items():
        target, transform = map_name(name)
        if target is None:
            (report.unused if any(re.fullmatch(p, name) for p in _UNUSED) else report.skipped).append(name)
            continue
        array = np.asarray(value)
        if transform is not None:
            array = transform(array)
        state[target] = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
        report.mapped[name] = target
    load_state(model, state, source="MindSpore checkpoint", strict=True)
    return model.eval(), report


def convert_mindspore_checkpoint(ckpt: str | os.PathLike, out_dir: str | os.PathLike) -> ConversionReport:
    """``vglaw convert --from mindspore CKPT --out DIR``: read, map, write a vglaw checkpoint."""
    model, report = convert_mindspore_state(read_mindspore_ckpt(ckpt))
    model.save_pretrained(out_dir)
    return report
