"""Inference on your own images: the predictor, its pictures, the predict / visualize / demo
commands."""
from .predictor import Grounder, Prediction

__all__ = ["Grounder", "Prediction"]
