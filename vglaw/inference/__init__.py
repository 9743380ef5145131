"""Inference on your own images: the predictor, its pictures, the predict / visualize / demo
commands."""
from .batch import predict_pairs, read_pairs
from .predictor import Grounder, Prediction

__all__ = ["Grounder", "Prediction", "predict_pairs", "read_pairs"]
