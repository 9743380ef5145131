"""vglaw: VG-LAW (Language Adaptive Weight Generation for Multi-Task Visual Grounding) in PyTorch."""
from .model import VGLAW, VGLAWConfig, build_model
from .model.io import from_pretrained

__version__ = "0.1.0"
__all__ = ["VGLAW", "VGLAWConfig", "build_model", "from_pretrained", "__version__"]
