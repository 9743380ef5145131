"""Pictures: predictions on an image, ground truth vs prediction panels, and what the
language does to the backbone (feature maps with LAW on and off)."""
from __future__ import annotations

import functools
import logging
import unicodedata
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps
from torchvision.ops import box_iou

from ..data.masks import decode_rle, mask_iou
from ..data.readers import gt_box_xyxy
from ..model.confidence import coverage_curve, reliability_bins
from .predictor import printable

# eight colours far apart in CIELAB (magenta, azure, vermilion, green, blue, olive, crimson, teal),
# each dark enough to read as a caption on white; every line drawn in one has a black or white
# edge (:func:`edge_colour`), so that it shows on any background, its own colour included
COLOURS = [(255, 30, 225), (0, 150, 240), (255, 75, 30), (45, 165, 45), (45, 45, 240), (105, 90, 0),
           (165, 0, 75), (0, 105, 105)]
GT_COLOUR, PRED_COLOUR = COLOURS[1], COLOURS[0]
TEXT, GREY, WHITE = (0, 0, 0), (90, 90, 90), (255, 255, 255)
# cividis at ten even steps (viridisLite's cividis(10)): dark blue through grey to yellow, the
# colour map of every heat map; its lightness grows evenly, and its muted middle stays apart from
# the answers' colours
CIVIDIS = torch.tensor([(0, 32, 77), (0, 51, 111), (57, 72, 107), (87, 93, 109), (112, 113, 115),
                        (138, 135, 121), (166, 157, 117), (196, 181, 108), (228, 207, 91), (255, 234, 70)]) / 255
ATTENTION_SCALE = "share of the box head's attention"
HEAT_TILE = 1024  # an attention tile's longer side at most: the map it shows has a few dozen cells a side
NO_GLYPH = chr(0x10FFFF)  # a noncharacter: no font has a glyph for it, so it draws the font's "missing" box
log = logging.getLogger(__name__)


def colour(i: int) -> tuple[int, int, int]:
    """The colour of the i-th expression: its mask, box and caption share it."""
    return COLOURS[i % len(COLOURS)]


def edge_colour(colour) -> tuple[int, int, int]:
    """Black beside a light colour, white beside a dark one: the edge of every coloured line."""
    r, g, b = colour[:3]
    return TEXT if 0.299 * r + 0.587 * g + 0.114 * b > 100 else WHITE


def px(size: tuple[int, int], base: float) -> int:
    """A length (a line's width, a font's size) of ``base`` pixels on a picture up to 800 pixels
    on its longer side, on a picture of ``size`` (W, H): larger ones get it in proportion, so that
    shrunk to fit a screen they keep visible lines and readable captions."""
    return max(1, round(base * max(1.0, max(size) / 800)))


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


def overlay_mask(image: Image.Image, mask: np.ndarray, colour, fill: float = 0.25,
                 outline: int | None = None) -> Image.Image:
    """The mask as a light fill and a solid outline (``outline`` pixels wide, by default in
    proportion to the image, see :func:`px`) with an edge either side (:func:`edge_colour`), so
    that the object's own colour stays readable and the outline shows on any background. Only the
    mask's bounding box (and a margin) is worked on: on a large image, the cost is the object's
    size, not the image's."""
    out = image.copy()
    paint_mask(out, mask, colour, fill, outline)
    return out


def paint_mask(image: Image.Image, mask: np.ndarray, colour, fill: float = 0.25, outline: int | None = None) -> None:
    """:func:`overlay_mask` drawn onto ``image`` itself."""
    from scipy import ndimage

    outline = px(image.size, 2) if outline is None else outline
    edge = px(image.size, 1)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return
    margin = outline + edge + 1
    y0, x0 = max(int(rows[0]) - margin, 0), max(int(cols[0]) - margin, 0)
    y1, x1 = min(int(rows[-1]) + margin + 1, mask.shape[0]), min(int(cols[-1]) + margin + 1, mask.shape[1])
    inside = np.pad(np.asarray(mask[y0:y1, x0:x1], dtype=bool), 1)  # (h + 2, w + 2): the image's border counts as out
    depth = ndimage.distance_transform_cdt(inside, metric="chessboard")[1:-1, 1:-1]  # inside: steps to the outside
    away = ndimage.distance_transform_cdt(~inside, metric="chessboard")[1:-1, 1:-1]  # outside: steps to the mask
    inside = inside[1:-1, 1:-1]
    line = inside & (depth <= outline)
    edges = (inside & ~line & (depth <= outline + edge)) | (~inside & (away <= edge))
    alpha = np.where(line | edges, 255, np.where(inside, round(fill * 255), 0)).astype(np.uint8)
    layer = np.where(edges[..., None], np.uint8(edge_colour(colour)), np.uint8(colour[:3]))  # (h, w, 3)
    box = (x0, y0, x1, y1)
    image.paste(Image.composite(Image.fromarray(layer), image.crop(box), Image.fromarray(alpha)), box[:2])


def outline_box(draw: ImageDraw.ImageDraw, box, colour, width: int, edge: int) -> None:
    """A box's outline, ``width`` pixels wide inside ``box`` (x0, y0, x1, y1), with an edge
    ``edge`` pixels wide either side of it (:func:`edge_colour`)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    draw.rectangle([x0 - edge, y0 - edge, x1 + edge, y1 + edge], outline=edge_colour(colour), width=width + 2 * edge)
    draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)


def draw_box(image: Image.Image, box, colour, width: int | None = None) -> Image.Image:
    """A copy of ``image`` with ``box`` outlined (``width`` pixels, by default in proportion to the image)."""
    image = image.copy()
    width = px(image.size, 3) if width is None else width
    outline_box(ImageDraw.Draw(image), box, colour, width, px(image.size, 1))
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


def with_caption(image: Image.Image, lines: list[tuple[str, tuple]], size: int | None = None) -> Image.Image:
    """The image with captions below it (never over it), each in its colour, wrapped to the
    image's width, ``size`` pixels high (by default in proportion to the image, see :func:`px`;
    :func:`drawable` says which characters the font cannot draw)."""
    size = size or px(image.size, 14)
    font, pad = _font(size), round(size * 3 / 7)
    rows = [(row, colour) for text, colour in lines
            for row in fit_text(drawable(text, font), image.width - 2 * pad, font)]
    out = Image.new("RGB", (image.width, image.height + (size + pad) * len(rows) + pad), WHITE)
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, (text, colour) in enumerate(rows):
        draw.text((pad, image.height + pad * 2 // 3 + i * (size + pad)), text, fill=colour, font=font)
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
            for box in p.boxes:  # several objects: a box per part of the mask
                outline_box(ImageDraw.Draw(canvas), [v * factor for v in box], colour(i), px(canvas.size, 3),
                            px(canvas.size, 1))
        lines.append((answer_caption(p), colour(i) if p.found else GREY))
    return with_caption(canvas, lines)


def sample_panel(image: Image.Image, text: str, gt_box, pred_box, gt_mask: np.ndarray | None,
                 pred_mask: np.ndarray, score: float | None = None) -> tuple[Image.Image, dict]:
    """Ground-truth box | predicted box | ground-truth mask | predicted mask, each labelled, with
    the expression, the IoUs and (when given) the answer's score. ``gt_box`` None: the expression
    names nothing; ``pred_box`` None: the answer is "not found" (box IoU 1 when both are None, 0
    when one is, as GRES scores a no-target sample)."""
    big = upscale(image)
    factor = big.width / image.width

    def resize(mask):
        return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(big.size, Image.NEAREST)).astype(bool)

    if gt_box is None or pred_box is None:
        ious = {"box_iou": float(gt_box is None and pred_box is None)}
    else:
        ious = {"box_iou": float(box_iou(torch.tensor([gt_box], dtype=torch.float64),
                                         torch.tensor([pred_box], dtype=torch.float64))[0, 0])}
    scored = "" if score is None else f", score {score:.2f}"
    tiles = [with_caption(big.copy() if gt_box is None else draw_box(big, [v * factor for v in gt_box], GT_COLOUR),
                          [("ground-truth box" + (": none, the expression names nothing" if gt_box is None else ""),
                            GT_COLOUR)]),
             with_caption(big.copy() if pred_box is None else draw_box(big, [v * factor for v in pred_box], PRED_COLOUR),
                          [(f"predicted box{': not found' if pred_box is None else ''} (IoU {ious['box_iou']:.2f}"
                            f"{scored})", PRED_COLOUR)])]
    if gt_mask is not None:
        ious["mask_iou"] = mask_iou(gt_mask, pred_mask)
        tiles.append(with_caption(overlay_mask(big, resize(gt_mask), GT_COLOUR), [("ground-truth mask", GT_COLOUR)]))
    tiles.append(with_caption(overlay_mask(big, resize(pred_mask), PRED_COLOUR),
                              [("predicted mask" + (f" (IoU {ious['mask_iou']:.2f})" if "mask_iou" in ious else ""),
                                PRED_COLOUR)]))
    return with_caption(hstack(tiles), [(f'"{text}"', TEXT)], size=px(big.size, 14)), ious


def heat_colours(values: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] -> RGB in [0, 1] on :data:`CIVIDIS`, the colour map of every heat map."""
    v = values.clamp(0, 1) * (len(CIVIDIS) - 1)
    low = v.floor().long().clamp(max=len(CIVIDIS) - 2)  # the step below each value
    t = (v - low)[..., None]
    return CIVIDIS[low] * (1 - t) + CIVIDIS[low + 1] * t  # (..., 3)


def _heat(values: torch.Tensor, size: tuple[int, int], vmax: float) -> Image.Image:
    """(h, w) values -> an RGB heat map of ``size`` (W, H), ``vmax`` and above at the top colour."""
    img = Image.fromarray((heat_colours(values / max(vmax, 1e-12)).numpy() * 255).astype(np.uint8))
    return img.resize(size, Image.BILINEAR)


def with_colour_bar(image: Image.Image, top: str, bottom: str = "0", title: str = "") -> Image.Image:
    """The heat map ``image`` with its colour scale on the right: ``top`` and ``bottom`` its
    ends, ``title`` (what the colours measure) along it."""
    size, gap, bar_w = px(image.size, 12), px(image.size, 4), px(image.size, 12)
    font = _font(size)
    bar_h = max(image.height - 2 * size, 8)
    ramp = heat_colours(torch.linspace(1, 0, bar_h)[:, None].expand(bar_h, bar_w))  # (bar_h, bar_w, 3)
    label_x = image.width + 2 * gap + bar_w
    title_x = label_x + int(max(font.getlength(top), font.getlength(bottom))) + gap
    along = text_along(title, image.height, font) if title else Image.new("RGB", (0, 0))
    out = Image.new("RGB", (title_x + along.width + gap, image.height), WHITE)
    out.paste(image, (0, 0))
    out.paste(Image.fromarray((ramp.numpy() * 255).astype(np.uint8)), (image.width + gap, size))
    out.paste(along, (title_x, (image.height - along.height) // 2))
    draw = ImageDraw.Draw(out)
    draw.text((label_x, 0), top, fill=TEXT, font=font)
    draw.text((label_x, image.height - size - 2), bottom, fill=TEXT, font=font)
    return out


def text_along(text: str, length: int, font) -> Image.Image:
    """``text`` in at most two lines of at most ``length`` pixels, turned to read upwards (a scale's title)."""
    lines = fit_text(drawable(text, font), length, font, max_lines=2)
    step = font.getbbox("Ag")[3] * 5 // 4
    out = Image.new("RGB", (length, step * len(lines)), WHITE)
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text(((length - font.getlength(line)) / 2, i * step), line, fill=TEXT, font=font)
    return out.rotate(90, expand=True)


def attention_overlay(image: Image.Image, attention: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """The box head's attention (H, W) in [0, 1] as a heat map blended over the image, with its
    colour scale (from 0 to the map's maximum) titled :data:`ATTENTION_SCALE`."""
    heat = _heat(torch.tensor(attention, dtype=torch.float32), image.size, 1.0)
    return with_colour_bar(Image.blend(image, heat, alpha), "max", "0", ATTENTION_SCALE)


def attention_tile(image: Image.Image, prediction, caption_colour=TEXT, caption: bool = True) -> Image.Image:
    """One expression's attention overlay, enlarged when small, shrunk to ``HEAT_TILE`` pixels on
    its longer side when larger (so memory stays flat however large the image), with its box
    (white), its colour scale and (with ``caption``) the expression."""
    big = upscale(image)
    if max(big.size) > HEAT_TILE:
        big = ImageOps.contain(big, (HEAT_TILE, HEAT_TILE))
    factor = big.width / image.width
    attention = np.asarray(Image.fromarray(prediction.attention).resize(big.size, Image.BILINEAR))
    tile = draw_box(attention_overlay(big, attention), [v * factor for v in prediction.box], WHITE, px(big.size, 2))
    if not caption:
        return tile
    return with_caption(tile, [(f'"{prediction.text}"', caption_colour),
                               ("where the box head looks (white: its box)", GREY)])


def record_panel(grounder, image: Image.Image, record: dict) -> tuple[Image.Image, dict]:
    """:func:`sample_panel` for a prepared record on its image, with the grounder's prediction."""
    pred = grounder.predict(image, record["sentence"])
    gt_mask = decode_rle(record["mask"]).astype(bool) if record.get("mask") else None
    gt_box = None if record.get("box") is None else gt_box_xyxy(record).tolist()  # a multi-target record: the union
    return sample_panel(image, record["sentence"], gt_box, pred.box if pred.found else None, gt_mask, pred.mask,
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
    right answers against the mean score; the diagonal is perfect calibration) beside the
    coverage-precision curve (Prec@0.5 of the most confident answers against the share of
    answers kept)."""
    rows = []
    for name, (scores, right) in splits.items():
        reliability, draw, at = _plot_frame(size, "score (dot: bin's mean; number: answers)")
        _reliability(draw, at, reliability_bins(scores, right))
        coverage, draw, at = _plot_frame(size, "coverage: share of answers kept")
        curve = coverage_curve(scores, right)
        draw.line([at((k + 1) / len(curve), c) for k, c in enumerate(curve)], fill=COLOURS[0], width=2)
        rows.append(hstack([with_caption(reliability, [(f"{name}: reliability: share right per score bin", TEXT)]),
                            with_caption(coverage, [(f"{name}: Prec@0.5 of the most confident answers", TEXT)])]))
    return vstack(rows)


def _plot_frame(size: int, xlabel: str) -> tuple[Image.Image, ImageDraw.ImageDraw, Callable]:
    """An empty plot, ``size`` pixels a side, with 0, 0.5 and 1 on both axes: (its image, its
    ImageDraw, ``at``: (x, y) in [0, 1] -> pixels)."""
    font, pad = _font(12), 36
    tile = Image.new("RGB", (size + pad + 10, size + 50), WHITE)
    draw = ImageDraw.Draw(tile)

    def at(x: float, y: float) -> tuple[float, float]:
        return pad + x * size, 10 + (1 - y) * size

    draw.rectangle([at(0, 1), at(1, 0)], outline=GREY)
    for v in (0.0, 0.5, 1.0):
        draw.text((at(v, 0)[0] - 8, size + 14), f"{v:g}", fill=GREY, font=font)  # below the frame
        draw.text((4, at(0, v)[1] - 6), f"{v:g}", fill=GREY, font=font)
    draw.text((pad, size + 30), xlabel, fill=TEXT, font=font)
    return tile, draw, at


def _reliability(draw: ImageDraw.ImageDraw, at, bins: list[dict], dot: int = 3) -> None:
    """The reliability diagram's diagonal, bars and dots (``dot`` pixels in radius), each bin's
    count centred on its bar, clear of its dot: above it (on white, over the diagonal), or below
    it where the frame's top is near."""
    font, frame_top = _font(12), at(0, 1)[1]
    draw.line([at(0, 0), at(1, 1)], fill=GREY, width=1)
    for b in (b for b in bins if b["count"]):
        draw.rectangle([at(b["low"] + 0.01, b["accuracy"]), at(b["high"] - 0.01, 0)], fill=COLOURS[1])
        x, y = at(b["mean_score"], b["accuracy"])
        draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=COLOURS[0])
        text = _short_count(b["count"])
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        above = y - dot - 3 - bottom  # the text's bottom 3 pixels above the dot
        inside = above + top < frame_top
        xy = (at((b["low"] + b["high"]) / 2, 0)[0] - (left + right) / 2, y + dot + 3 - top if inside else above)
        if not inside:
            draw.rectangle(draw.textbbox(xy, text, font=font), fill=WHITE)  # over the diagonal
        draw.text(xy, text, fill=TEXT if inside else GREY, font=font)


def _short_count(n: int) -> str:
    """A count in four characters at most (it fits over its bar): 438, 1.2k, 12k."""
    return str(n) if n < 1000 else f"{n / 1000:.1f}k" if n < 9950 else f"{round(n / 1000)}k"
