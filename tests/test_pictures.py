"""The pictures' colours, lines and labels: colours far apart that show on any background, a
heat map unlike the answers' colours with a titled scale, labels clear of their marks, lines and
captions in proportion to the image."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vglaw.inference import pictures
from vglaw.inference.predictor import Prediction


def lab(rgb) -> np.ndarray:
    """sRGB (..., 3) in 0..255 -> CIELAB (..., 3) under D65."""
    c = np.asarray(rgb, dtype=np.float64) / 255
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)  # linear light
    xyz = c @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / [0.95047, 1.0, 1.08883]  # (..., 3) relative to white
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def delta_e76(a, b) -> np.ndarray:
    return np.linalg.norm(lab(a) - lab(b), axis=-1)


def delta_e94(a, b) -> np.ndarray:
    """CIE94 (graphic arts), the smaller of both orders: unlike delta E 76 it does not overstate
    how far apart two vivid colours are (magenta and violet: 42 in delta E 76, 18 here)."""
    def one_way(x, y):
        dl, c1, c2 = x[..., 0] - y[..., 0], np.hypot(x[..., 1], x[..., 2]), np.hypot(y[..., 1], y[..., 2])
        dh2 = np.maximum(((x[..., 1:] - y[..., 1:]) ** 2).sum(-1) - (c1 - c2) ** 2, 0)
        return np.sqrt(dl ** 2 + ((c1 - c2) / (1 + 0.045 * c1)) ** 2 + dh2 / (1 + 0.015 * c1) ** 2)

    x, y = np.broadcast_arrays(lab(a), lab(b))
    return np.minimum(one_way(x, y), one_way(y, x))


# ----------------------------------------------------------------------------- colours
def test_answer_colours_are_far_apart_and_readable_on_white():
    colours = np.array(pictures.COLOURS)
    assert len(colours) == 8 and len({pictures.colour(i) for i in range(8)}) == 8
    pairs = [(i, j) for i in range(8) for j in range(i + 1, 8)]
    assert min(delta_e76(colours[i], colours[j]) for i, j in pairs) >= 25
    assert min(delta_e94(colours[i], colours[j]) for i, j in pairs) >= 28
    assert lab(colours)[:, 0].max() <= 62  # dark enough for a caption on a white page


LINE_COLOURS = [*pictures.COLOURS, pictures.WHITE]  # the answers' and the attention tile's box


@pytest.mark.parametrize("colour", LINE_COLOURS)
def test_lines_show_on_any_background(colour):
    """A box and a mask outline in ``colour`` differ strongly from the background somewhere across
    their line, on pure green, white and black, and on the colour itself (their edge shows)."""
    for background in [(0, 255, 0), (255, 255, 255), (0, 0, 0), colour]:
        image = Image.new("RGB", (60, 60), background)
        mask = np.zeros((60, 60), bool)
        mask[15:45, 15:45] = True
        for drawn in (pictures.draw_box(image, (15, 15, 45, 45), colour), pictures.overlay_mask(image, mask, colour)):
            across = np.asarray(drawn)[30, 8:24]  # a row through the left side's line and its edges
            assert delta_e94(across, background).max() >= 40, (colour, background)


# ----------------------------------------------------------------------------- heat maps
def test_heat_map_is_even_in_lightness_and_unlike_the_answers_colours():
    heat = pictures.heat_colours(torch.linspace(0, 1, 256)).numpy() * 255  # (256, 3)
    assert np.all(np.diff(lab(heat)[:, 0]) > 0)  # lighter with every step: an order anyone reads
    for c in pictures.COLOURS:
        assert delta_e94(heat, c).min() >= 12, c


def test_attention_scale_is_titled_with_its_range(monkeypatch):
    drawn = []
    real = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, text, *a, **kw: drawn.append(text)
                        or real(self, xy, text, *a, **kw))
    image = Image.new("RGB", (300, 256), (100, 100, 100))
    out = pictures.attention_overlay(image, np.random.default_rng(0).random((256, 300)).astype(np.float32))
    assert out.height == image.height and out.width > image.width + 40
    assert {"max", "0"} <= set(drawn) and pictures.ATTENTION_SCALE in " ".join(drawn)
    bar = np.asarray(out)[:, image.width + 6:image.width + 14].astype(float)  # (H, 8, 3): the colour bar
    ends = pictures.heat_colours(torch.tensor([1.0, 0.0])).numpy() * 255
    assert np.abs(bar[13].mean(0) - ends[0]).max() < 20 and np.abs(bar[-14].mean(0) - ends[1]).max() < 20


# ----------------------------------------------------------------------------- labels
def test_counts_of_the_reliability_diagram_stay_clear_of_its_dots(monkeypatch):
    texts, dots = [], []
    real_text, real_ellipse = ImageDraw.ImageDraw.text, ImageDraw.ImageDraw.ellipse

    def text(self, xy, t, *a, **kw):
        texts.append((id(self), t, self.textbbox(xy, t, font=kw.get("font"))))
        return real_text(self, xy, t, *a, **kw)

    def ellipse(self, xy, *a, **kw):
        dots.append((id(self), [float(v) for v in xy]))
        return real_ellipse(self, xy, *a, **kw)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    monkeypatch.setattr(ImageDraw.ImageDraw, "ellipse", ellipse)
    # per bin (count, share right): at the frame's top and bottom, mid-way, on the diagonal, large counts
    bins = [(3, 0.0), (438, 0.15), (12000, 0.25), (7, 1.0), (1500, 0.45), (60, 0.55), (9, 0.7), (250, 0.8),
            (40, 0.9), (5000, 0.97)]
    scores = np.concatenate([np.linspace(b / 10 + 0.01, b / 10 + 0.09, n) for b, (n, _) in enumerate(bins)])
    right = np.concatenate([np.arange(n) < round(a * n) for n, a in bins])
    pictures.confidence_plot({"set": (scores, right)})
    shown = {"3", "438", "12k", "7", "1.5k", "60", "9", "250", "40", "5.0k"}  # the counts, as drawn
    counts = [(owner, box) for owner, t, box in texts if t in shown]
    assert len(counts) == 10 and len(dots) == 10
    for owner, (x0, y0, x1, y1) in counts:
        for dot_owner, (d0, e0, d1, e1) in dots:
            apart = x1 + 2 <= d0 or d1 + 2 <= x0 or y1 + 2 <= e0 or e1 + 2 <= y0  # 2 pixels of white at least
            assert dot_owner != owner or apart, ((x0, y0, x1, y1), (d0, e0, d1, e1))


# ----------------------------------------------------------------------------- sizes
def answer(w: int, h: int) -> Prediction:
    """A found answer: a box around the middle of a w x h image, its mask the box."""
    x0, y0, x1, y1 = 2 * w // 5, 2 * h // 5, 3 * w // 5, 3 * h // 5
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return Prediction("the thing in the middle", (x0, y0, x1, y1), mask, None, None, score=0.9)


@pytest.mark.parametrize("size", [(200, 140), (12000, 8200)])
def test_lines_and_captions_grow_with_the_image_and_captions_stay_below_it(size):
    w, h = size
    image = Image.new("RGB", size, (128, 128, 128))
    out = pictures.draw_predictions(image, [answer(w, h)])
    canvas = pictures.upscale(image)
    scale = max(1.0, max(canvas.size) / 800)
    pixels = np.asarray(out)
    del out
    picture, caption = pixels[:canvas.height], pixels[canvas.height:]
    assert (picture[:canvas.height // 3] == 128).all()  # the captions cover nothing of the picture
    on = (picture[canvas.height // 2] == pictures.colour(0)).all(-1)  # a row across the box's sides
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, on.astype(int), 0])))[::2]  # lengths of the coloured runs
    assert runs.max() >= 3 * scale - 1  # the line's width (3 pixels up to 800 pixels a side)
    rows = np.flatnonzero((caption == pictures.colour(0)).all(-1).any(1))
    assert rows[-1] - rows[0] >= 9 * scale  # letters and their descenders: a readable height
    assert rows[-1] - rows[0] <= 20 * scale
