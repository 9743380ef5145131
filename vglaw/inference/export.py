"""``vglaw export``: the whole model (text encoder, weight generator, backbone, heads) as one
ONNX graph (:mod:`.onnx_runner` runs it with onnxruntime in place of the PyTorch model).

The graph takes ``images`` (B, 3, S, S) float32 at the checkpoint's canvas size S and
``input_ids`` / ``attention_mask`` (B, L) int64, with B and L dynamic, and returns ``boxes``
(B, 4), ``mask_logits`` (B, 1, S, S) and ``box_attention`` (B, S/p, S/p) (and ``exists_logits``
(B,) for a model with the existence output). What inference needs
besides (canvas size, maximum length, mask threshold, tokenizer, the confidence calibrator) is
stored in the file's metadata under ``vglaw``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import MissingExtraError
from ..fileio import atomic_write
from ..model import VGLAW
from .onnx_runner import OnnxModel, output_names

INPUTS = ("images", "input_ids", "attention_mask")
DEFAULT_OPSET = 18
PROTOBUF_LIMIT = 2**31 - 2**26  # one ONNX protobuf holds up to 2 GB: weights above ~1.9 GB go to <out>.data


class _Graph(nn.Module):
    """The model's forward with positional inputs and a tuple of outputs, as ONNX wants them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model(images, input_ids, attention_mask, box_attention=True)
        return tuple(out[name] for name in output_names(self.model.has_existence))


@contextlib.contextmanager
def _quiet():
    """The exporter's chatter (an INFO line per folded constant and per replaced initializer, the
    dynamic-axis naming warnings) stays out of the user's terminal."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, *, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``checkpoint`` to ``out`` (an ``.onnx`` file); returns its path.

    The weights are inside the one file. A model over protobuf's 2 GB limit is written with its
    weights in ``<out>.data`` beside it (ONNX external data), which onnxruntime reads from there."""
    try:
        import onnx
    except ImportError:
        raise MissingExtraError("vglaw export needs onnx and onnxscript: pip install 'vglaw[export]'") from None
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = VGLAW.from_pretrained(checkpoint).eval()
    size, max_len = model.img_size, model.config.max_len
    images = torch.zeros(2, 3, size, size)
    ids = torch.full((2, 7), 1000, dtype=torch.long)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    batch, length = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("length", min=2, max=max_len)
    out = Path(out)
    # traced with the math attention kernel: its output layout is the one the ONNX decomposition
    # assumes (the fused CPU kernels return another, and the merge of heads would not match it)
    with sdpa_kernel(SDPBackend.MATH), torch.no_grad(), _quiet():
        program = torch.onnx.export(_Graph(model).eval(), (images, ids, mask), input_names=list(INPUTS),
                                    output_names=list(output_names(model.has_existence)), opset_version=opset, dynamo=True, verbose=False,
                                    dynamic_shapes={"images": {0: batch}, "input_ids": {0: batch, 1: length},
                                                    "attention_mask": {0: batch, 1: length}})
        graph = program.model_proto
    # the inference contract, as the runner reads it back (InferenceSpec's fields), and provenance
    spec = model.spec
    info = {**asdict(spec), "calibrator": spec.calibrator and spec.calibrator.to_dict(),
            "patch_size": model.config.patch_size, "model_config": model.config_dict(), "checkpoint": str(checkpoint)}
    onnx.helper.set_model_props(graph, {"vglaw": json.dumps(info)})
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > PROTOBUF_LIMIT
    atomic_write(out, lambda tmp: onnx.save(graph, str(tmp), save_as_external_data=external,
                                            location=f"{out.name}.data"))
    return out


def check_onnx(checkpoint: str | os.PathLike, onnx_path: str | os.PathLike, seed: int = 0) -> str:
    """Run the exported model and the checkpoint on one random image with two expressions of
    different lengths; a line with the largest differences of boxes and mask logits."""
    model = VGLAW.from_pretrained(checkpoint).eval()
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, model.img_size, model.img_size, generator=g)
    ids = torch.randint(1000, 20000, (2, 9), generator=g)
    ids[:, 0], ids[0, -1], ids[1, 5] = 101, 102, 102
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        want = model(images, ids, mask)
    got = OnnxModel(onnx_path)(images, ids, mask)
    box = float((got["boxes"] - want["boxes"]).abs().max()) * model.img_size
    logits = float((got["mask_logits"] - want["mask_logits"]).abs().max())
    exists = ("" if not model.has_existence else
              f", existence logits within {float((got['exists_logits'] - want['exists_logits']).abs().max()):.2g}")
    return (f"onnxruntime vs PyTorch on a random input: boxes within {box:.2g} px of the {model.img_size} px "
            f"canvas, mask logits within {logits:.2g}{exists}")
