"""Pictures: predictions on an image, ground truth vs prediction panels, and what the
language does to the backbone (feature maps with LAW on and off)."""
from __future__ import annotations

import functools
import logging
import unicodedata

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps
from torchvision.ops import box_iou

from ..data.masks import decode_rle, mask_iou
from ..data.readers import gt_box_xyxy
from ..model.confidence import coverage_curve, reliability_bins
from .predictor import printable

# colours that stand apart from the primaries that objects often have (and from a white page)
COLOURS = [(230, 0, 230), (0, 190, 230), (255, 130, 0), (110, 60, 255), (0, 160, 120), (150, 80, 30)]
GT_COLOUR, PRED_COLOUR = (0, 190, 230), (230, 0, 230)
TEXT, GREY = (0, 0, 0), (90, 90, 90)
HEAT_TILE = 1024  # an attention tile's longer side at most: the map it shows has a few dozen cells a side
NO_GLYPH = chr(0x10FFFF)  # a noncharacter: no font has a glyph for it, so it draws the font's "missing" box
log = logging.getLogger(__name__)


def colour(i: int) -> tuple[int, int, int]:
    """The colour of the i-th expression: its mask, box and caption share it."""
    return COLOURS[i % len(COLOURS)]


@functools.cache
def _font(size: int = 14):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


@functools.lru_cache(maxsize=65536)
def _glyph(font, char: str) -> tuple:
    """What ``font`` draws for ``char``: its size and pixels."""
    mask = font.getmask(char)
    return mask.size, bytes(mask)


def drawable(text: str, font) -> str:
    """``text`` as a caption can show it: as :func:`printable` (no control or escape sequences),
    each character ``font`` has no glyph for (Pillow's built-in font has basic Latin letters,
    digits and punctuation: no accented letters, CJK, Arabic or emoji) drawn without its accents
    where the font has the bare letters, else as '?', never as the font's empty box; the first
    time, a warning says so."""
    shown = printable(text)
    out = "".join(_in_font(font, c) for c in shown)
    if out != shown:
        _warn_missing_glyphs()
    return out


def _in_font(font, char: str) -> str:
    """``char``, else its letters without accents, else '?': the first that ``font`` can draw."""
    def has(c: str) -> bool:
        return _glyph(font, c) != _glyph(font, NO_GLYPH)

    bare = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
    return char if has(char) else bare if bare and all(map(has, bare)) else "?"


@functools.cache
def _warn_missing_glyphs() -> None:
    log.warning("warning: the pictures' font (Pillow's built-in) has no glyph for some characters of the captions: "
                "they are drawn without their accents, or as '?'; the JSON keeps the text as given")


def overlay_mask(image: Image.Image, mask: np.ndarray, colour, fill: float = 0.25, outline: int = 2) -> Image.Image:
    """The mask as a light fill and a solid outline, so that the object's own colour stays readable.
    Only the mask's bounding box (and a margin) is worked on: on a large image, the cost is the
    object's size, not the image's."""
    out = image.copy()
    paint_mask(out, mask, colour, fill, outline)
    return out


def paint_mask(image: Image.Image, mask: np.ndarray, colour, fill: float = 0.25, outline: int = 2) -> None:
    """:func:`overlay_mask` drawn onto ``image`` itself."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return
    y0, x0 = max(int(rows[0]) - outline - 1, 0), max(int(cols[0]) - outline - 1, 0)
    y1, x1 = min(int(rows[-1]) + outline + 2, mask.shape[0]), min(int(cols[-1]) + outline + 2, mask.shape[1])
    inside = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.uint8)  # (h, w) 0/1
    m = Image.fromarray(inside * np.uint8(255))
    inner = m.filter(ImageFilter.MinFilter(2 * outline + 1))  # the mask eroded by ``outline`` pixels
    alpha = np.where(np.asarray(m) > np.asarray(inner), np.uint8(255), inside * np.uint8(fill * 255))
    box = (x0, y0, x1, y1)
    image.paste(Image.composite(Image.new("RGB", (x1 - x0, y1 - y0), colour), image.crop(box),
                                Image.fromarray(alpha)), box[:2])


def draw_box(image: Image.Image, box, colour, width: int = 2) -> Image.Image:
    image = image.copy()
    ImageDraw.Draw(image).rectangle([float(v) for v in box], outline=colour, width=width)
    return image


def fit_text(text: str, width: float, font, max_lines: int = 3) -> list[str]:
    """``text`` wrapped at word boundaries into lines at most ``width`` pixels wide; what does not
    fit in ``max_lines`` ends in an ellipsis (a word too long for a line is cut with one too)."""
    def fits(line):
        return font.getlength(line) <= width

    def shorten(line):
        while line and not fits(line + "…"):
            line = line[:-1]
        return line.rstrip() + "…"

    lines, words = [], text.split()
    while words:
        line = words.pop(0)
        if not fits(line):
            line = shorten(line)
        while words and fits(f"{line} {words[0]}"):
            line += " " + words.pop(0)
        lines.append(line)
        if len(lines) == max_lines and words:
            lines[-1] = shorten(f"{line} {words[0]}")
            break
    return lines or [""]


def with_caption(image: Image.Image, lines: list[tuple[str, tuple]], size: int = 14) -> Image.Image:
    """The image with captions below it, each in its colour, wrapped to the image's width (see
    :func:`drawable` for the characters the font cannot draw)."""
    font = _font(size)
    rows = [(row, colour) for text, colour in lines for row in fit_text(drawable(text, font), image.width - 12, font)]
    out = Image.new("RGB", (image.width, image.height + (size + 6) * len(rows) + 6), (255, 255, 255))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, (text, colour) in enumerate(rows):
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


def answer_caption(p) -> str:
    """An answer's caption: its expression, its score, and "not found" where the expression names
    nothing in the image or the answer scored below the minimum."""
    score = "" if p.score is None else f" (score {p.score:.2f})"
    return f"{p.text}{score}" + ("" if p.found else ": not found")


def draw_predictions(image: Image.Image, predictions) -> Image.Image:
    """Masks and boxes of several expressions on one image, the expressions (with their scores)
    as captions; an answer marked not found is only captioned, in grey. Each answer is drawn
    onto one copy of the image in turn: memory does not grow with the answers."""
    canvas = upscale(image)
    canvas = canvas.copy() if canvas is image else canvas
    factor = canvas.width / image.width
    lines = []
    for i, p in enumerate(predictions):
        if p.found:
            mask = p.mask
            if factor != 1:
                mask = Image.fromarray(mask.astype(np.uint8)).resize(canvas.size, Image.NEAREST)
                mask = np.asarray(mask).astype(bool)
            paint_mask(canvas, mask, colour(i))
            boxes = p.boxes if len(p.boxes) > 1 else [p.box]  # several objects: a box per part of the mask
            for box in boxes:
                ImageDraw.Draw(canvas).rectangle([v * factor for v in box], outline=colour(i), width=3)
        lines.append((answer_caption(p), colour(i) if p.found else GREY))
    return with_caption(canvas, lines)


def sample_panel(image: Image.Image, text: str, gt_box, pred_box, gt_mask: np.ndarray | None,
                 pred_mask: np.ndarray, score: float | None = None) -> tuple[Image.Image, dict]:
    """Ground-truth box | predicted box | ground-truth mask | predicted mask, each labelled, with
    the expression, the IoUs and (when given) the answer's score."""
    big = upscale(image)
    factor = big.width / image.width

    def resize(mask):
        return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(big.size, Image.NEAREST)).astype(bool)

    ious = {"box_iou": float(box_iou(torch.tensor([gt_box], dtype=torch.float64),
                                     torch.tensor([pred_box], dtype=torch.float64))[0, 0])}
    tiles = [with_caption(draw_box(big, [v * factor for v in gt_box], GT_COLOUR, 3), [("ground-truth box", GT_COLOUR)]),
             with_caption(draw_box(big, [v * factor for v in pred_box], PRED_COLOUR, 3),
                          [(f"predicted box (IoU {ious['box_iou']:.2f}"
                            + ("" if score is None else f", score {score:.2f}") + ")", PRED_COLOUR)])]
    if gt_mask is not None:
        ious["mask_iou"] = mask_iou(gt_mask, pred_mask)
        tiles.append(with_caption(overlay_mask(big, resize(gt_mask), GT_COLOUR), [("ground-truth mask", GT_COLOUR)]))
    tiles.append(with_caption(overlay_mask(big, resize(pred_mask), PRED_COLOUR),
                              [("predicted mask" + (f" (IoU {ious['mask_iou']:.2f})" if "mask_iou" in ious else ""),
                                PRED_COLOUR)]))
    return with_caption(hstack(tiles), [(f'"{text}"', TEXT)]), ious


def heat_colours(values: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] -> RGB in [0, 1] (black, red, yellow), the colour map of every heat map."""
    v = values.clamp(0, 1)
    return torch.stack([(v * 2).clamp(0, 1), (v * 2 - 1).clamp(0, 1), torch.zeros_like(v)], dim=-1)


def _heat(values: torch.Tensor, size: tuple[int, int], vmax: float) -> Image.Image:
    """(h, w) values -> an RGB heat map of ``size`` (W, H), ``vmax`` and above at the top colour."""
    img = Image.fromarray((heat_colours(values / max(vmax, 1e-12)).numpy() * 255).astype(np.uint8))
    return img.resize(size, Image.BILINEAR)


def with_colour_bar(image: Image.Image, top: str, bottom: str = "0", size: int = 12) -> Image.Image:
    """The heat map ``image`` with its colour scale on the right, ``top`` and ``bottom`` its ends."""
    font = _font(size)
    bar_h = max(image.height - 2 * size, 8)
    ramp = heat_colours(torch.linspace(1, 0, bar_h)[:, None].expand(bar_h, 12))
    label_w = int(max(font.getlength(top), font.getlength(bottom))) + 4
    out = Image.new("RGB", (image.width + 20 + label_w, image.height), (255, 255, 255))
    out.paste(image, (0, 0))
    out.paste(Image.fromarray((ramp.numpy() * 255).astype(np.uint8)), (image.width + 4, size))
    draw = ImageDraw.Draw(out)
    draw.text((image.width + 18, 0), top, fill=TEXT, font=font)
    draw.text((image.width + 18, image.height - size - 2), bottom, fill=TEXT, font=font)
    return out


def attention_overlay(image: Image.Image, attention: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """The box head's attention (H, W) in [0, 1] as a heat map blended over the image, with its
    colour scale (1: the map's maximum)."""
    heat = _heat(torch.tensor(attention, dtype=torch.float32), image.size, 1.0)
    return with_colour_bar(Image.blend(image, heat, alpha), "max")


def attention_tile(image: Image.Image, prediction, caption_colour=TEXT, caption: bool = True) -> Image.Image:
    """One expression's attention overlay, enlarged when small, shrunk to ``HEAT_TILE`` pixels on
    its longer side when larger (so memory stays flat however large the image), with its box
    (white), its colour scale and (with ``caption``) the expression."""
    big = upscale(image)
    if max(big.size) > HEAT_TILE:
        big = ImageOps.contain(big, (HEAT_TILE, HEAT_TILE))
    factor = big.width / image.width
    attention = np.asarray(Image.fromarray(prediction.attention).resize(big.size, Image.BILINEAR))
    tile = draw_box(attention_overlay(big, attention), [v * factor for v in prediction.box], (255, 255, 255), 2)
    if not caption:
        return tile
    return with_caption(tile, [(f'"{prediction.text}"', caption_colour),
                               ("where the box head looks (white: its box)", GREY)])


def record_panel(grounder, image: Image.Image, record: dict) -> tuple[Image.Image, dict]:
    """:func:`sample_panel` for a prepared record on its image, with the grounder's prediction."""
    pred = grounder.predict(image, record["sentence"])
    gt_mask = decode_rle(record["mask"]).astype(bool) if record.get("mask") else None
    return sample_panel(image, record["sentence"], gt_box_xyxy(record).tolist(), pred.box, gt_mask, pred.mask,
                        pred.score)


@torch.inference_mode()
def law_panel(grounder, image: Image.Image, texts: list[str]) -> Image.Image:
    """For each expression: the image with its prediction, the norm of the last block's
    features with LAW on and with LAW off, and the norm of their difference."""
    model, size = grounder.model, grounder.spec.img_size
    images, ids, mask, lb = grounder.inputs(image, texts)
    on = model(images, ids, mask)["features"].float().cpu()
    off = model(images, ids, mask, use_law=False)["features"].float().cpu()
    # crop the feature grid to the image region of the canvas
    dx, dy, w, h = lb.extent
    cell = size / on.shape[-1]
    r0, c0 = int(dy // cell), int(dx // cell)
    r1, c1 = int(np.ceil((dy + h) / cell)), int(np.ceil((dx + w) / cell))
    on, off = on[..., r0:r1, c0:c1], off[..., r0:r1, c0:c1]
    norm_on, norm_off, diff = on.norm(dim=1), off.norm(dim=1), (on - off).norm(dim=1)
    vmax, dmax = float(torch.maximum(norm_on.max(), norm_off.max())), float(diff.max())
    preds = grounder.predict(image, texts)
    rows = []
    shown = upscale(image).size
    for i, p in enumerate(preds):
        tiles = [draw_predictions(image, [p]),
                 with_caption(with_colour_bar(_heat(norm_on[i], shown, vmax), f"{vmax:.3g}"),
                              [("|features|, LAW on", TEXT)]),
                 with_caption(with_colour_bar(_heat(norm_off[i], shown, vmax), f"{vmax:.3g}"),
                              [("|features|, LAW off", TEXT)]),
                 with_caption(with_colour_bar(_heat(diff[i], shown, dmax), f"{dmax:.3g}"),
                              [("|on - off|", TEXT)])]
        rows.append(hstack(tiles))
    return vstack(rows)


def confidence_plot(splits: dict[str, tuple[np.ndarray, np.ndarray]], size: int = 280) -> Image.Image:
    """Per split (``{name: (scores, right)}``), a reliability diagram (per score bin, the share of
    right answers against the mean score; the diagonal is perfect calibration; bar width grows
    with the bin's count) beside the coverage-precision curve (Prec@0.5 of the most confident
    answers against the share of answers kept)."""
    font, pad = _font(12), 36
    rows = []
    for name, (scores, right) in splits.items():
        tiles = []
        for title in ("reliability: share right per score bin", "Prec@0.5 of the most confident answers"):
            tile = Image.new("RGB", (size + pad + 10, size + 50), (255, 255, 255))
            draw = ImageDraw.Draw(tile)
            at = lambda x, y: (pad + x * size, 10 + (1 - y) * size)  # noqa: E731 - (0..1, 0..1) -> pixels
            draw.rectangle([at(0, 1), at(1, 0)], outline=GREY)
            for v in (0.0, 0.5, 1.0):
                draw.text((at(v, 0)[0] - 8, size + 14), f"{v:g}", fill=GREY, font=font)  # below the frame
                draw.text((4, at(0, v)[1] - 6), f"{v:g}", fill=GREY, font=font)
            if title.startswith("reliability"):
                draw.line([at(0, 0), at(1, 1)], fill=GREY, width=1)
                bins = reliability_bins(scores, right)
                for b in bins:
                    if b["count"]:
                        draw.rectangle([at(b["low"] + 0.01, b["accuracy"]), at(b["high"] - 0.01, 0)],
                                       fill=COLOURS[1] + (0,), outline=COLOURS[1])
                        draw.ellipse([*(v - 3 for v in at(b["mean_score"], b["accuracy"])),
                                      *(v + 3 for v in at(b["mean_score"], b["accuracy"]))], fill=COLOURS[0])
                        top = at(0, b["accuracy"])[1]  # the count above its bar, or inside it near the frame
                        draw.text((at(b["low"], 0)[0] + 2, top - 16 if top >= 26 else top + 8), str(b["count"]),
                                  fill=GREY if top >= 26 else TEXT, font=font)
                xlabel = "score (dot: bin's mean; number: answers)"
            else:
                curve = coverage_curve(scores, right)
                n = len(curve)
                draw.line([at((k + 1) / n, curve[k]) for k in range(n)], fill=COLOURS[0], width=2)
                xlabel = "coverage: share of answers kept"
            draw.text((pad, size + 30), xlabel, fill=TEXT, font=font)
            tiles.append(with_caption(tile, [(f"{name}: {title}", TEXT)]))
        rows.append(hstack(tiles))
    return vstack(rows)
