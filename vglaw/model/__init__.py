"""VG-LAW model parts, one file each: text encoder, ViTDet backbone, LAW generator, heads."""
from . import io
from .build import build_model
from .confidence import FEATURES, Calibrator, confidence_features
from .config import VARIANTS, VGLAWConfig, model_config_from_dict
from .heads import BoxHead, MaskHead
from .law import LAW_TYPES, LawFactors, WeightGenerator, adaptive_qkv
from .text import TextEncoder
from .vglaw import VGLAW, InferenceSpec
from .vit import ViT

# the checkpoint format has one home, io, which imports the model's module: the model's checkpoint
# methods are io's functions, set here (so that vglaw.py imports neither io nor the builder)
VGLAW.from_pretrained = staticmethod(io.from_pretrained)
VGLAW.save_pretrained = io.save_pretrained

__all__ = ["VARIANTS", "VGLAWConfig", "build_model", "model_config_from_dict", "BoxHead", "MaskHead", "LAW_TYPES",
           "LawFactors", "WeightGenerator", "adaptive_qkv", "TextEncoder", "VGLAW", "InferenceSpec", "ViT", "FEATURES", "Calibrator",
           "confidence_features"]
