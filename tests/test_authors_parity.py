"""Given the authors' weights, vglaw computes the authors' outputs.

Uses ../shared/authors_reference (or $VGLAW_AUTHORS_REFERENCE): real MindSpore outputs for
``make_params(0)`` / ``make_inputs(0)`` and a float64 NumPy re-implementation of their model.
Skipped where that folder is absent (a user's clone).
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vglaw.weights.mindspore import convert_mindspore_state

REFERENCE = Path(os.environ.get("VGLAW_AUTHORS_REFERENCE",
                                Path(__file__).resolve().parents[2] / "shared" / "authors_reference"))
pytestmark = pytest.mark.skipif(not (REFERENCE / "reference.py").is_file(),
                                reason=f"authors' reference not found at {REFERENCE}")


@pytest.fixture(scope="module")
def R():
    sys.path.insert(0, str(REFERENCE))
    try:
        import reference
    finally:
        sys.path.remove(str(REFERENCE))
    return reference


@pytest.fixture(scope="module")
def params(R):
    return R.make_params(0)


def run(model, inputs, dtype):
    def t(key):
        return torch.from_numpy(np.asarray(inputs[key]))

    with torch.no_grad():
        text = model.text_encoder(t("input_ids"), t("attention_mask"), t("token_type_ids"))
        factors = model.generator(text, t("attention_mask"))
        out = model(t("images").to(dtype), t("input_ids"), t("attention_mask"), t("token_type_ids"))
        static = model(t("images").to(dtype), t("input_ids"), t("attention_mask"), t("token_type_ids"), use_law=False)
    B = text.shape[0]
    return {"pred_box": out["boxes"], "bbox_logits": out["box_logits"], "logit_mask": out["mask_logits"],
            "img_feat": out["features"], "text_feat": text,
            "ada_weight": torch.stack([f.Phi.reshape(B, -1) for f in factors]),  # (depth, B, K*K)
            "static_box": static["boxes"]}


def rel_err(got: torch.Tensor, want: np.ndarray) -> float:
    want = np.asarray(want, np.float64)
    return float(np.abs(got.double().numpy() - want).max() / np.abs(want).max())


def test_float64_matches_numpy_reference_to_1e9(R, params):
    """Fine enough to catch a wrong LayerNorm eps (their README: every eps change moves
    logit_mask by >= 5e-6 relative)."""
    model, report = convert_mindspore_state(params, torch.float64)
    assert report.unused == ["text_encoder.pooler.dense.weight", "text_encoder.pooler.dense.bias"]
    assert not report.skipped and len(report.mapped) == len(params) - 2
    inputs = R.make_inputs(0, 1)
    ref = R.forward(params, inputs)
    ours = run(model, inputs, torch.float64)
    for key in ("pred_box", "bbox_logits", "logit_mask", "img_feat", "text_feat", "ada_weight"):
        assert rel_err(ours[key], ref[key]) <= 1e-9, key
    # the language-adaptive path is active: switching it off moves the box far beyond tolerance
    assert min(ref["sad_ratio"]) > 0.1
    assert rel_err(ours["static_box"], ref["pred_box"]) > 1e-4


def test_float32_matches_real_mindspore_outputs(R, params):
    with np.load(REFERENCE / "ms_reference_seed0.npz") as z:
        ms = {k: z[k] for k in z.files}
    meta = json.loads(str(ms["meta_json"]))
    inputs = R.make_inputs(meta["seed"], meta["batch"])
    assert R.fingerprint(params) == meta["params_sha256"] and R.fingerprint(inputs) == meta["inputs_sha256"]
    model, _ = convert_mindspore_state(params, torch.float32)
    ours = run(model, inputs, torch.float32)
    assert rel_err(ours["pred_box"], ms["pred_box"]) <= 1e-4
    assert rel_err(ours["logit_mask"], ms["logit_mask"]) <= 1e-4
    assert rel_err(ours["bbox_logits"], ms["bbox_logits"]) <= 5e-6
    for key in ("img_feat", "text_feat", "ada_weight"):  # stored as float16 in the npz
        assert rel_err(ours[key], ms[key]) <= 2e-3, key
    assert rel_err(ours["static_box"], ms["pred_box"]) > 1e-4  # LAW is active
