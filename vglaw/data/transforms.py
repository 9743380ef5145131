"""Image loading, letterboxing and the paper's augmentation, on torchvision.transforms.v2.

Image, box (``tv_tensors.BoundingBoxes``) and mask (``tv_tensors.Mask``) go through the same
``transforms.v2.functional`` calls, so boxes and masks follow the image. The expression is
part of the sample because two augmentations depend on it: the horizontal flip swaps
"left" and "right", and spatial words switch off cropping and up-scaling.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms.v2 import functional as TF

from ..config import MAX_PIXELS
from ..errors import InputError, UnreadableFileError
from ..fileio import special_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SPATIAL = re.compile(r"\b(left|right|top|bottom|middle)", re.IGNORECASE)
_LEFT_RIGHT = re.compile(r"\b(left|right)(most|ward|wards)?\b", re.IGNORECASE)


def check_pixels(size: tuple[int, int], max_pixels: int | None, name) -> None:
    """Refuse an image of ``size`` (W, H) over ``max_pixels`` (None: no limit), naming it: memory
    and time at prediction grow with the pixels (the decoded image, the masks and pictures drawn
    at full size)."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(f"image too large: {name} is {width}x{height} ({width * height / 1e6:.1f} megapixels), over "
                         f"the limit of {max_pixels / 1e6:g} megapixels (raise it with vglaw predict --max-pixels N, or "
                         "max_pixels= in Python)")


def load_image(path, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """An RGB PIL image with EXIF orientation applied; grayscale, RGBA, palette and 16-bit
    images are converted. vglaw's one image loader: whatever reading or decoding the file raises
    (missing, truncated, not an image, larger than PIL's decompression-bomb limit of
    ``2 * Image.MAX_IMAGE_PIXELS``, ...) becomes an :class:`UnreadableFileError` (an OSError) with a
    one-line message that names the file. Checked before any pixel is decoded: a path that is not
    a regular file (a FIFO would block forever) is refused before it is opened, and an image of
    more than ``max_pixels`` (width x height, read from the file's header; default
    :data:`MAX_PIXELS`, None: no limit but PIL's) is an :class:`InputError` saying so."""
    kind = special_file(path)
    if kind is not None:
        raise UnreadableFileError(f"cannot read image {path}: it is {kind}, not a regular file")
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:  # vglaw's limit decides: no warning from PIL's lower one
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            check_pixels(img.size, max_pixels, path)  # from the header: no pixel is decoded yet
            img = ImageOps.exif_transpose(img)
            img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
        if img.mode == "P":
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA"):  # composite on black, the canvas colour
            background = Image.new("RGB", img.size)
            background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
            img = background
        return img.convert("RGB")
    except InputError:  # the pixel limit's own line
        raise
    except Exception as e:  # noqa: BLE001 - PIL and its plugins raise many types; each is this file's fault
        reason = " ".join(str(e).split()) or type(e).__name__
        raise UnreadableFileError(f"cannot read image {path}: {reason}") from None


def has_spatial_word(text: str) -> bool:
    return _SPATIAL.search(text) is not None


def swap_left_right(text: str) -> str:
    """"the man on the left" -> "the man on the right" (also leftmost/rightmost)."""
    def swap(m: re.Match) -> str:
        word = {"left": "right", "right": "left"}[m.group(1).lower()]
        word = word.capitalize() if m.group(1)[0].isupper() else word
        return word + (m.group(2) or "")

    return _LEFT_RIGHT.sub(swap, text)


@dataclass
class Sample:
    """One image with its target box (XYXY pixels), optional mask and expression."""

    image: tv_tensors.Image  # (3, H, W) uint8
    box: tv_tensors.BoundingBoxes  # (1, 4) XYXY
    mask: tv_tensors.Mask | None  # (1, H, W) uint8
    text: str

    def apply(self, fn, *args, **kwargs) -> "Sample":
        """Apply one ``transforms.v2.functional`` op to image, box and mask alike."""
        return Sample(fn(self.image, *args, **kwargs), fn(self.box, *args, **kwargs),
                      None if self.mask is None else fn(self.mask, *args, **kwargs), self.text)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[-2], self.image.shape[-1]


def image_tensor(image: Image.Image) -> tv_tensors.Image:
    """An RGB PIL image as a (3, H, W) uint8 tensor."""
    return tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))


def make_sample(image: Image.Image, box_xywh, mask: np.ndarray | None, text: str) -> Sample:
    h, w = image.height, image.width
    x, y, bw, bh = box_xywh
    box = tv_tensors.BoundingBoxes([[x, y, x + bw, y + bh]], format="XYXY", canvas_size=(h, w), dtype=torch.float32)
    m = None if mask is None else tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask))[None])
    return Sample(image_tensor(image), box, m, text)


def longer_side_to(size_hw: tuple[int, int], size: int) -> tuple[int, int]:
    """(h, w) with the longer side resized to ``size``, the aspect ratio kept."""
    h, w = size_hw
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_longer(sample: Sample, size: int) -> Sample:
    return sample.apply(TF.resize, list(longer_side_to(sample.size, size)), antialias=True)


def crop_keeping_box(sample: Sample, gen: torch.Generator, size: int | None = None) -> Sample:
    """A random crop that contains the whole target box. With ``size`` None its width and height
    are random too; with ``size`` each side is min(side, size), the authors' crop: it only trims
    an image that multi-scale made larger than the canvas and leaves a smaller one unchanged."""
    h, w = sample.size
    x0, y0, x1, y1 = sample.box[0].tolist()
    x0, y0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    x1, y1 = min(w, math.ceil(x1)), min(h, math.ceil(y1))

    def randint(lo: int, hi: int) -> int:  # inclusive
        return lo if hi <= lo else int(torch.randint(lo, hi + 1, (1,), generator=gen))

    if size is None:
        cw, ch = randint(x1 - x0, w), randint(y1 - y0, h)
    else:
        cw, ch = min(w, size), min(h, size)
        if (ch, cw) == (h, w):
            return sample
    left = randint(max(0, x1 - cw), min(x0, w - cw))
    top = randint(max(0, y1 - ch), min(y0, h - ch))
    return sample.apply(TF.crop, top, left, ch, cw)


def image_region(extents: torch.Tensor, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 4) image extents (dx, dy, w, h) -> (B, S, S) bool on ``device``: True on the image's
    pixels of each canvas, False on the padding."""
    pixels = torch.arange(size, device=device)
    dx, dy, w, h = extents.to(device).unbind(1)
    inside_x = (pixels >= dx[:, None]) & (pixels < (dx + w)[:, None])  # (B, S)
    inside_y = (pixels >= dy[:, None]) & (pixels < (dy + h)[:, None])
    return inside_y[:, :, None] & inside_x[:, None, :]


def normalize_canvas(images: torch.Tensor, extents: torch.Tensor) -> torch.Tensor:
    """The model's input from (B, 3, S, S) uint8 canvases and their (B, 4) image extents
    (dx, dy, w, h): ImageNet-normalised float32 inside each image and 0 in the padding, the same
    values as normalising the image before padding it. Runs where ``images`` are (the device),
    for training, evaluation and prediction alike."""
    x = TF.normalize(TF.to_dtype(images, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)
    return x.masked_fill_(~image_region(extents, images.shape[-1], images.device)[:, None], 0.0)


@dataclass(frozen=True)
class Letterbox:
    """An image of ``orig_size`` (H, W) resized to ``resized`` (h, w) and placed at ``offset``
    (dx, dy) on a (``size``, ``size``) canvas: the forward map for images, boxes and masks, and
    its inverse for predictions, batched. x_original = (x_canvas - dx) / sx."""

    size: int
    orig_size: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]

    @classmethod
    def centred(cls, orig_size: tuple[int, int], size: int) -> "Letterbox":
        """Evaluation's and prediction's: the longer side resized to ``size``, the image centred."""
        h, w = longer_side_to(orig_size, size)
        return cls(size, tuple(orig_size), (h, w), ((size - w) // 2, (size - h) // 2))

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): canvas pixels per original pixel."""
        return self.resized[1] / self.orig_size[1], self.resized[0] / self.orig_size[0]

    @property
    def extent(self) -> tuple[int, int, int, int]:
        """(dx, dy, w, h): where the image lies on the canvas (what :func:`normalize_canvas` needs)."""
        return (*self.offset, self.resized[1], self.resized[0])

    @property
    def padding(self) -> list[int]:
        """Zeros added left, top, right and bottom of the resized image to fill the canvas."""
        (dx, dy), (h, w) = self.offset, self.resized
        return [dx, dy, self.size - w - dx, self.size - h - dy]

    def apply(self, sample: Sample) -> Sample:
        """The sample (image, box and mask alike) resized when it is not yet, then zero-padded
        onto the canvas; the image stays uint8."""
        if sample.size != self.resized:
            sample = sample.apply(TF.resize, list(self.resized), antialias=True)
        return sample.apply(TF.pad, self.padding, fill=0)

    def apply_image(self, image: Image.Image) -> torch.Tensor:
        """An RGB image -> its (3, S, S) uint8 canvas (what :meth:`apply` makes of a sample's)."""
        tensor = image_tensor(image)
        if tuple(tensor.shape[-2:]) != self.resized:
            tensor = TF.resize(tensor, list(self.resized), antialias=True)
        return TF.pad(tensor, self.padding, fill=0).as_subclass(torch.Tensor)

    def boxes_to_original(self, boxes_cxcywh: torch.Tensor) -> torch.Tensor:
        """(B, 4) normalised cxcywh on the canvas -> (B, 4) xyxy in original pixels, clipped to
        the image."""
        (sx, sy), (dx, dy), (h, w) = self.scale, self.offset, self.orig_size
        xyxy = (box_convert(boxes_cxcywh.float(), "cxcywh", "xyxy") * self.size).double()
        back = (xyxy - torch.tensor([dx, dy, dx, dy])) / torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
        return torch.minimum(back.clamp(min=0), torch.tensor([w, h, w, h], dtype=back.dtype)).float()

    def maps_to_original(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, S, S) maps on the canvas (mask probabilities, attention) -> (B, H, W) on the
        original image (the image's region, resized back bilinearly)."""
        (dx, dy), (rh, rw) = self.offset, self.resized
        region = maps[:, dy:dy + rh, dx:dx + rw].float()
        return F.interpolate(region[:, None], size=self.orig_size, mode="bilinear", align_corners=False)[:, 0]


def eval_transform(sample: Sample, size: int) -> tuple[Sample, Letterbox]:
    """Resize the longer side to ``size`` and centre it on a uint8 canvas; returns the sample
    and its :class:`Letterbox`."""
    letterbox = Letterbox.centred(sample.size, size)
    return letterbox.apply(sample), letterbox


@dataclass
class TrainAugment:
    """The authors' training augmentation: a multi-scale resize (off by default; never above
    ``size`` for spatial words, nor, with the canvas crop, where the box would not fit the
    canvas), a crop keeping
    the box (skipped for spatial words), a flip that swaps left/right in the text, and a random
    position on the canvas.

    ``crop="canvas"`` is the authors' crop (see :func:`crop_keeping_box`): without multi-scale it
    never changes the image. ``crop="random"`` crops to a random size instead."""

    size: int
    multiscale: bool = False
    scale_step: int = 32  # longer side = size + scale_step * k, k in -4..4
    crop: str = "canvas"  # canvas | random
    crop_prob: float = 0.5
    flip_prob: float = 0.5
    translate: bool = True

    def __post_init__(self) -> None:
        if self.crop not in ("canvas", "random"):
            raise InputError(f"config key data.crop must be 'canvas' or 'random', got {self.crop!r}")

    def __call__(self, sample: Sample, gen: torch.Generator | None = None) -> tuple[Sample, Letterbox]:
        before = h0, w0 = sample.size
        spatial = has_spatial_word(sample.text)
        longer = self.size
        if self.multiscale:
            longer = max(self.size + self.scale_step * int(torch.randint(-4, 5, (1,), generator=gen)), 16)
            # the canvas crop must keep the box, so the box must fit the canvas (the random-size
            # crop is followed by a resize to the canvas, which fits any box)
            x0, y0, x1, y1 = sample.box[0].tolist()
            too_big = self.crop == "canvas" and max(x1 - x0, y1 - y0) * longer / max(h0, w0) > self.size
            if spatial or too_big:
                longer = min(longer, self.size)
        sample = resize_longer(sample, longer)
        if not spatial and float(torch.rand(1, generator=gen)) < self.crop_prob:
            sample = crop_keeping_box(sample, gen, self.size if self.crop == "canvas" else None)
        if max(sample.size) > self.size:
            sample = resize_longer(sample, self.size)
        if float(torch.rand(1, generator=gen)) < self.flip_prob:
            sample = sample.apply(TF.horizontal_flip)
            sample.text = swap_left_right(sample.text)
        h, w = sample.size
        if self.translate:
            offset = (int(torch.randint(0, self.size - w + 1, (1,), generator=gen)),
                      int(torch.randint(0, self.size - h + 1, (1,), generator=gen)))
        else:
            offset = ((self.size - w) // 2, (self.size - h) // 2)
        letterbox = Letterbox(self.size, before, (h, w), offset)
        return letterbox.apply(sample), letterbox
