"""Pictures: predictions on an image, ground truth vs prediction panels, and what the
language does to the backbone (feature maps with LAW on and off)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.ops import box_iou

from ..data.readers import decode_rle, gt_box_xyxy
from ..engine.metrics import mask_iou

COLOURS = [(255, 64, 64), (64, 160, 255), (64, 220, 100), (255, 200, 0), (200, 90, 255), (0, 220, 220)]
GT_COLOUR, PRED_COLOUR = (0, 230, 0), (255, 40, 40)


def _font(size: int = 14):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def overlay_mask(image: Image.Image, mask: np.ndarray, colour, alpha: float = 0.45) -> Image.Image:
    tint = Image.new("RGB", image.size, colour)
    m = Image.fromarray((mask.astype(np.uint8) * int(alpha * 255)))
    return Image.composite(tint, image, m)


def draw_box(image: Image.Image, box, colour, width: int = 2) -> Image.Image:
    image = image.copy()
    ImageDraw.Draw(image).rectangle([float(v) for v in box], outline=colour, width=width)
    return image


def with_caption(image: Image.Image, lines: list[tuple[str, tuple]], size: int = 14) -> Image.Image:
    """The image with lines of coloured text below it."""
    font = _font(size)
    height = (size + 6) * len(lines) + 6
    out = Image.new("RGB", (image.width, image.height + height), (255, 255, 255))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, (text, colour) in enumerate(lines):
        draw.text((6, image.height + 4 + i * (size + 6)), text, fill=colour, font=font)
    return out


def hstack(images: list[Image.Image], gap: int = 6) -> Image.Image:
    h = max(i.height for i in images)
    out = Image.new("RGB", (sum(i.width for i in images) + gap * (len(images) - 1), h), (255, 255, 255))
    x = 0
    for img in images:
        out.paste(img, (x, 0))
        x += img.width + gap
    return out


def vstack(images: list[Image.Image], gap: int = 6) -> Image.Image:
    w = max(i.width for i in images)
    out = Image.new("RGB", (w, sum(i.height for i in images) + gap * (len(images) - 1)), (255, 255, 255))
    y = 0
    for img in images:
        out.paste(img, (0, y))
        y += img.height + gap
    return out


def upscale(image: Image.Image, min_side: int = 256) -> Image.Image:
    """Small images are enlarged (nearest) so that panels stay readable."""
    factor = max(1, int(np.ceil(min_side / min(image.size))))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def draw_predictions(image: Image.Image, predictions) -> Image.Image:
    """Masks and boxes of several expressions on one image, the expressions as captions."""
    factor = upscale(image).width / image.width
    canvas = upscale(image)
    lines = []
    for i, p in enumerate(predictions):
        colour = COLOURS[i % len(COLOURS)]
        mask = np.asarray(Image.fromarray(p.mask.astype(np.uint8)).resize(canvas.size, Image.NEAREST)).astype(bool)
        canvas = draw_box(overlay_mask(canvas, mask, colour), [v * factor for v in p.box], colour, width=3)
        lines.append((p.text, colour))
    return with_caption(canvas, lines)


def sample_panel(image: Image.Image, text: str, gt_box, pred_box, gt_mask: np.ndarray | None,
                 pred_mask: np.ndarray) -> tuple[Image.Image, dict]:
    """Ground-truth box | predicted box | ground-truth mask | predicted mask, with the IoUs."""
    big = upscale(image)
    factor = big.width / image.width

    def resize(mask):
        return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(big.size, Image.NEAREST)).astype(bool)

    tiles = [draw_box(big, [v * factor for v in gt_box], GT_COLOUR, 3),
             draw_box(big, [v * factor for v in pred_box], PRED_COLOUR, 3)]
    if gt_mask is not None:
        tiles.append(overlay_mask(big, resize(gt_mask), GT_COLOUR))
    tiles.append(overlay_mask(big, resize(pred_mask), PRED_COLOUR))
    ious = {"box_iou": float(box_iou(torch.tensor([gt_box], dtype=torch.float64),
                                     torch.tensor([pred_box], dtype=torch.float64))[0, 0])}
    if gt_mask is not None:
        ious["mask_iou"] = mask_iou(gt_mask, pred_mask)
    caption = [(f'"{text}"', (0, 0, 0)),
               ("green: ground truth, red: prediction   " + "   ".join(f"{k} {v:.3f}" for k, v in ious.items()),
                (80, 80, 80))]
    return with_caption(hstack(tiles), caption), ious


def attention_overlay(image: Image.Image, attention: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """The box head's attention (H, W) in [0, 1] as a heat map blended over the image."""
    heat = _heat(torch.tensor(attention, dtype=torch.float32), image.size, 1.0)
    return Image.blend(image, heat, alpha)


def attention_tile(image: Image.Image, prediction) -> Image.Image:
    """One expression's attention overlay, enlarged when small, with its box and the expression."""
    big = upscale(image)
    factor = big.width / image.width
    tile = attention_overlay(big, np.asarray(Image.fromarray(prediction.attention).resize(big.size, Image.BILINEAR)))
    tile = draw_box(tile, [v * factor for v in prediction.box], (255, 255, 255), 2)
    return with_caption(tile, [(f'"{prediction.text}": where the box head looks', (0, 0, 0))])


def record_panel(grounder, image: Image.Image, record: dict) -> tuple[Image.Image, dict]:
    """:func:`sample_panel` for a prepared record on its image, with the grounder's prediction."""
    pred = grounder.predict(image, record["sentence"])
    gt_mask = decode_rle(record["mask"]).astype(bool) if record.get("mask") else None
    return sample_panel(image, record["sentence"], gt_box_xyxy(record).tolist(), pred.box, gt_mask, pred.mask)


def _heat(values: torch.Tensor, size: tuple[int, int], vmax: float) -> Image.Image:
    """(h, w) values -> an RGB heat map (black-red-yellow) of ``size`` (W, H)."""
    v = (values / max(vmax, 1e-12)).clamp(0, 1)
    rgb = torch.stack([(v * 2).clamp(0, 1), (v * 2 - 1).clamp(0, 1), torch.zeros_like(v)], dim=-1)
    img = Image.fromarray((rgb.numpy() * 255).astype(np.uint8))
    return img.resize(size, Image.BILINEAR)


@torch.inference_mode()
def law_panel(grounder, image: Image.Image, texts: list[str]) -> Image.Image:
    """For each expression: the image with its prediction, the norm of the last block's
    features with LAW on and with LAW off, and the norm of their difference."""
    model, size = grounder.model, grounder.model.img_size
    images, ids, mask, lb = grounder.inputs(image, texts)
    on = model(images, ids, mask)["features"].float().cpu()
    off = model(images, ids, mask, use_law=False)["features"].float().cpu()
    # crop the feature grid to the image region of the canvas
    (sx, sy), (dx, dy) = lb["scale"], lb["offset"]
    grid = on.shape[-1]
    cell = size / grid
    r0, c0 = int(dy // cell), int(dx // cell)
    r1, c1 = int(np.ceil((dy + image.height * sy) / cell)), int(np.ceil((dx + image.width * sx) / cell))
    on, off = on[..., r0:r1, c0:c1], off[..., r0:r1, c0:c1]
    norm_on, norm_off, diff = on.norm(dim=1), off.norm(dim=1), (on - off).norm(dim=1)
    vmax = float(torch.maximum(norm_on.max(), norm_off.max()))
    preds = grounder.predict(image, texts)
    rows = []
    shown = upscale(image).size
    for i, p in enumerate(preds):
        tiles = [draw_predictions(image, [p]),
                 with_caption(_heat(norm_on[i], shown, vmax), [("|features|, LAW on", (0, 0, 0))]),
                 with_caption(_heat(norm_off[i], shown, vmax), [("|features|, LAW off", (0, 0, 0))]),
                 with_caption(_heat(diff[i], shown, float(diff.max())), [("|on - off|", (0, 0, 0))])]
        rows.append(hstack(tiles))
    return vstack(rows)

