"""VG-LAW model parts, one file each: text encoder, ViTDet backbone, LAW generator, heads."""
from .build import VARIANTS, VGLAWConfig, build_model, model_config_from_dict
from .confidence import FEATURES, Calibrator, confidence_features
from .heads import BoxHead, MaskHead
from .law import LAW_TYPES, LawFactors, WeightGenerator, adaptive_qkv
from .text import TextEncoder
from .vglaw import VGLAW, InferenceSpec
from .vit import ViT

__all__ = ["VARIANTS", "VGLAWConfig", "build_model", "model_config_from_dict", "BoxHead", "MaskHead", "LAW_TYPES",
           "LawFactors", "WeightGenerator", "adaptive_qkv", "TextEncoder", "VGLAW", "InferenceSpec", "ViT", "FEATURES", "Calibrator",
           "confidence_features"]
