"""vglaw: VG-LAW (Language Adaptive Weight Generation for Multi-Task Visual Grounding) in PyTorch."""
from .model import VGLAW, VGLAWConfig, build_model

__version__ = "0.1.0"
__all__ = ["VGLAW", "VGLAWConfig", "build_model", "__version__"]
