"""Running a model written by ``vglaw export`` with onnxruntime, in place of the PyTorch model."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import InputError, MissingExtraError, MissingFileError
from ..model import InferenceSpec
from ..model.confidence import Calibrator

OUTPUTS = ("boxes", "mask_logits", "box_attention")  # the graph's outputs, in order
EXISTENCE_OUTPUT = "exists_logits"  # after them, for a model with the existence output


def output_names(has_existence: bool) -> tuple[str, ...]:
    """The graph's outputs of a model with or without the existence output."""
    return OUTPUTS + ((EXISTENCE_OUTPUT,) if has_existence else ())


class OnnxModel:
    """An exported model run by onnxruntime on the CPU: called like ``VGLAW`` (a dict of tensors),
    with the same inference contract (``spec``), read from the file's metadata."""

    def __init__(self, path: str | os.PathLike) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingExtraError("running an ONNX model needs onnxruntime: pip install 'vglaw[export]'") from None
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"ONNX model {path} not found")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own error types
            raise InputError(f"{path} is not a readable ONNX model: {e}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "vglaw" not in meta:
            raise InputError(f"{path} was not written by vglaw export (no 'vglaw' metadata)")
        self.info = json.loads(meta["vglaw"])
        calibrator = self.info.get("calibrator")  # absent from files exported before vglaw scored answers
        self.outputs = tuple(o.name for o in self.session.get_outputs())
        self.has_existence = EXISTENCE_OUTPUT in self.outputs
        self.spec = InferenceSpec(**{f: self.info[f] for f in ("img_size", "max_len", "tokenizer", "mask_threshold")},
                                  calibrator=calibrator and Calibrator.from_dict(calibrator, f"{path}'s calibrator"))

    def __call__(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                 use_law: bool = True, box_attention: bool = False) -> dict[str, torch.Tensor]:
        if not use_law:
            raise InputError("an exported model always runs with LAW; use the PyTorch checkpoint to switch it off")
        feed = {"images": images.float().contiguous().numpy(), "input_ids": input_ids.long().numpy(),
                "attention_mask": attention_mask.long().numpy()}
        outs = dict(zip(self.outputs, (torch.from_numpy(o) for o in self.session.run(list(self.outputs), feed))))
        if not box_attention:
            outs.pop("box_attention")
        return outs
