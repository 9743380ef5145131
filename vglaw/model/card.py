"""Model cards: the ``README.md`` of a checkpoint directory, as the Hugging Face Hub shows it.

A card states the architecture, the LAW settings, and, when the checkpoint comes from a
training run, the training data with its split sizes, the metrics of the saved epoch and the
command that trained it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..checkpoint_names import TRAINING_NAME

LICENSE = "apache-2.0"


def read_training(directory: str | os.PathLike) -> dict | None:
    """The training record saved with a checkpoint directory, or None."""
    path = Path(directory) / TRAINING_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def _architecture(config: dict) -> list[str]:
    return [f"- backbone: ViTDet, width {config['embed_dim']}, {config['depth']} blocks, {config['num_heads']} heads, "
            f"patch {config['patch_size']}, window {config['window_size']}, global blocks "
            f"{list(config['global_blocks'])}, canvas {config['img_size']} px",
            f"- text encoder: BERT, first {config['text_layers']} layers ({config.get('text_encoder') or 'random init'}), "
            f"at most {config['max_len']} tokens",
            f"- heads: box attention {config['box_attn_dim']}, box MLP {config['box_hidden_dim']}, mask hidden "
            f"{config['mask_hidden_dim']}"]


def _law(config: dict) -> str:
    if config["law_type"] == "none":
        return "- LAW off (`law_type: none`): the static backbone"
    return (f"- `law_type: {config['law_type']}`, rank {config['law_rank']}, {config['law_groups']} group(s); "
            f"generator: {config['generator_heads']} pooling heads, hidden width = text width / "
            f"{config['generator_reduction']}")


def training_lines(training: dict | None) -> list[str]:
    """The card's "Training data" section: the dataset, its split sizes, the epoch, the command."""
    if not training:
        return ["Not recorded with this checkpoint."]
    lines = [f"- dataset: {training.get('dataset', 'unknown')} ({training.get('format', '?')} format, split by "
             f"{training.get('split_by', '?')}), prepared at `{training.get('prepared', '?')}`"]
    lines += [f"- {split}: {n:,} expressions" for split, n in training.get("splits", {}).items()]
    lines.append(f"- saved after epoch {training.get('epoch')} of {training.get('epochs')}")
    if training.get("command"):
        lines += ["", "Trained with:", "", "```bash", training["command"], "```"]
    return lines


def _metrics(metrics: dict | None) -> list[str]:
    if not metrics:
        return ["No evaluation recorded with this checkpoint."]
    keys = ["samples", "prec@0.5", "mIoU", "oIoU"]
    if any("gIoU" in m for m in metrics.values()):  # no-target and multi-target expressions (GRES, percent)
        keys += ["gIoU", "cIoU", "N-acc", "T-acc"]
    lines = ["| split | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for split, m in metrics.items():
        cells = [f"{m[k]:.4f}" if isinstance(m.get(k), float) else str(m.get(k, "-")) for k in keys]
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return lines


def model_card(config: dict, training: dict | None = None) -> str:
    """The card's text (YAML metadata, then Markdown) for a model ``config`` (``config_dict()``)
    and, optionally, ``training``: dataset, format, split_by, prepared, splits {split: count},
    epoch, epochs, command, metrics {split: {metric: value}}."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(license=LICENSE, library_name="vglaw",
                         tags=["visual-grounding", "referring-expression-comprehension",
                               "referring-expression-segmentation", "vg-law"],
                         datasets=[training["dataset"]] if training and training.get("dataset") else None)
    lines = ["---", data.to_yaml(), "---", "", "# VG-LAW checkpoint", "",
             "VG-LAW (Language Adaptive Weight Generation for Multi-Task Visual Grounding, Su et al., CVPR 2023) in "
             "PyTorch: the expression generates per-block low-rank updates of the ViT's qkv weights; a "
             "language-guided pooling gives the box and a dot product with the text [CLS] feature the mask.", "",
             "## Architecture", "", *_architecture(config), "", "## Language adaptive weights", "", _law(config), "",
             "## Training data", "", *training_lines(training), "", "## Metrics", "",
             *_metrics((training or {}).get("metrics")), "", "## Use", "", "```python",
             "from vglaw.inference import Grounder", "", "grounder = Grounder.from_pretrained(\"THIS_DIRECTORY_OR_REPO\")",
             "pred = grounder.predict(\"photo.jpg\", \"the man in the red shirt\")  # pred.box, pred.mask", "```", "",
             "## License", "", "The vglaw code is Apache-2.0; these weights also carry the terms of the data and of "
             "the pretrained weights they were trained from.", ""]
    return "\n".join(lines)
