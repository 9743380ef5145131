"""vglaw: VG-LAW (Language Adaptive Weight Generation for Multi-Task Visual Grounding) in PyTorch."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["VGLAW", "VGLAWConfig", "build_model", "from_pretrained", "__version__"]

# imported on first use, so that `vglaw --help` does not wait for torch and transformers
_LAZY = {"VGLAW": ".model", "VGLAWConfig": ".model", "build_model": ".model", "from_pretrained": ".model.io"}
# vglaw.from_pretrained is VGLAW.from_pretrained (vglaw.model sets io's function on the class): a
# directory, a training .pt or a Hub repo id


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vglaw' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
