"""Datasets: readers of the common annotation formats, preparation, augmentation, a
synthetic REFER-format set."""
from .dataset import GroundingDataset, collate, load_tokenizer
from .prepare import BadRecordsError, load_split, prepare
from .transforms import Letterbox, TrainAugment, eval_transform, load_image, normalize_canvas

__all__ = ["GroundingDataset", "collate", "load_tokenizer", "BadRecordsError", "load_split", "prepare",
           "Letterbox", "TrainAugment", "eval_transform", "load_image", "normalize_canvas"]
