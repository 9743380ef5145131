"""What one input may cost and what counts as an expression: an image over the pixel limit is
refused from its header, before any pixel is decoded, on every path (``vglaw predict``,
``--pairs``, ``Grounder.predict``); a FIFO is refused by name instead of blocking forever;
predictions hold no full-size arrays, so memory does not grow with the expressions times the
image; a text that is not a string or shows nothing is refused (a pairs file: that pair's
error line); control characters are never echoed; a text the model cannot read as English gets
a warning; captions never draw the font's empty boxes; and no pairs file, however odd, gets a
traceback from the reader."""
import csv
import io
import json
import logging
import os
import pickle
import tempfile
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from vglaw.cli import main
from vglaw.data.transforms import load_image
from vglaw.errors import InputError, InputTypeError, UnreadableFileError
from vglaw.fileio import json_text
from vglaw.inference import pictures
from vglaw.inference.batch import key, made_from, predict_pairs, read_pairs
from vglaw.inference.predictor import Grounder
from vglaw.model.io import checkpoint_files

from test_batch_predict import lines_of, one_colour_png, shapes_image, write_jsonl
from test_predict import checkpoint  # noqa: F401 - the tiny random checkpoint fixture


@pytest.fixture(scope="module")
def grounder(checkpoint):
    return Grounder.from_pretrained(checkpoint, device="cpu")


# ----------------------------------------------------------------------------- the pixel limit
def test_an_image_over_the_pixel_limit_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    big = one_colour_png(tmp_path / "big.png", 8000)  # 64 megapixels in 0.1 MB
    decoded = []

    def load(self):
        decoded.append(self)
        raise AssertionError("the pixels were decoded")

    with monkeypatch.context() as patch:
        patch.setattr(ImageFile.ImageFile, "load", load)
        with pytest.raises(InputError, match=r"^image too large: .*big.png is 8000x8000 \(64.0 megapixels\), over "
                                             r"the limit of 40 megapixels \(raise it with vglaw predict --max-pixels N, or "
                                             r"max_pixels= in Python\)$") as refused:
            load_image(big)
    assert "\n" not in str(refused.value) and not decoded
    photo = load_image(one_colour_png(tmp_path / "photo.png", 3500))  # 12.25 MP, a phone photo's size, passes
    assert photo.size == (3500, 3500) and photo.mode == "RGB"


def test_the_pixel_limit_holds_on_every_path(tmp_path, checkpoint, capsys):
    small = tmp_path / "small.png"
    shapes_image(small, 0)
    width, height = Image.open(small).size
    tight = Grounder.from_pretrained(checkpoint, device="cpu", max_pixels=width * height - 1)
    for image in (small, Image.open(small), np.asarray(Image.open(small).convert("RGB"))):
        with pytest.raises(InputError, match=rf"^image too large: .* is {width}x{height} "):
            tight.predict(image, "the red circle")
    assert Grounder.from_pretrained(checkpoint, device="cpu", max_pixels=width * height).predict(small, "a").box
    with pytest.raises(InputError, match="max_pixels must be a positive whole number"):
        Grounder.from_pretrained(checkpoint, device="cpu", max_pixels=0)
    # vglaw predict: one line, nothing written
    big = one_colour_png(tmp_path / "big.png", 7000)
    assert main(["predict", "--checkpoint", str(checkpoint), "--image", str(big), "--text", "the red circle",
                 "--out", str(tmp_path / "big.vglaw.png")]) == 2
    err = capsys.readouterr().err
    assert "image too large:" in err and err.count("\n") == 1, err
    assert not (tmp_path / "big.vglaw.png").exists()
    # --pairs: that pair's error line, counted; the others answered
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"id": "big", "image": "big.png", "text": "the red circle"},
                                                   {"id": "ok", "image": "small.png", "text": "the red circle"}])
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--checkpoint", str(checkpoint), "--pairs", str(pairs), "--out", str(out),
                 "--num-workers", "0"]) == 0
    assert "1 error lines (1 image too large)" in capsys.readouterr().out
    lines = {line["id"]: line for line in lines_of(out)}
    assert lines["big"]["error"].startswith(f"image too large: {big} is 7000x7000 (49.0 megapixels)")
    assert "box_xyxy" in lines["ok"]
    # --max-pixels moves the limit both ways, on both paths
    assert main(["predict", "--checkpoint", str(checkpoint), "--image", str(small), "--text", "the red circle",
                 "--max-pixels", str(width * height - 1), "--out", str(tmp_path / "small.vglaw.png")]) == 2
    assert "image too large:" in capsys.readouterr().err and not (tmp_path / "small.vglaw.png").exists()
    assert main(["predict", "--checkpoint", str(checkpoint), "--pairs", str(pairs), "--out", str(tmp_path / "all.jsonl"),
                 "--num-workers", "0", "--max-pixels", str(7000 * 7000)]) == 0
    assert "0 error lines" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="2"):  # argparse's one line
        main(["predict", "--image", str(small), "--text", "a", "--max-pixels", "0"])
    assert "--max-pixels: must be at least 1, got 0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- FIFOs
def outcome(run, fifo: Path, seconds: float = 10):
    """What ``run()`` raised (None if nothing), or "hangs" when it is still blocked on ``fifo``
    after ``seconds`` (a writer then opens and closes the FIFO, so the blocked open returns)."""
    raised = []

    def target():
        try:
            run()
        except Exception as e:  # noqa: BLE001 - the test looks at what it is
            raised.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        return "hangs"
    return raised[0] if raised else None


def test_a_fifo_is_refused_by_name_and_never_opened(tmp_path, checkpoint, grounder):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    error = outcome(lambda: load_image(fifo), fifo)
    assert isinstance(error, UnreadableFileError), error
    assert str(error) == f"cannot read image {fifo}: it is a FIFO (named pipe), not a regular file"
    pairs_fifo = tmp_path / "pairs.jsonl"
    os.mkfifo(pairs_fifo)
    error = outcome(lambda: read_pairs(pairs_fifo), pairs_fifo)
    assert isinstance(error, InputError) and str(error) == f"pairs file {pairs_fifo} is a FIFO (named pipe), not a " \
                                                           "regular file", error
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "image": "x.jpg", "text": "the red circle"}])
    out = tmp_path / "out.jsonl"
    assert outcome(lambda: predict_pairs(grounder, pairs, out, model_files=checkpoint_files(checkpoint),
                                         num_workers=0), fifo) is None
    assert lines_of(out)[0]["error"] == f"cannot read image {fifo}: it is a FIFO (named pipe), not a regular file"


# ----------------------------------------------------------------------------- memory
def test_predictions_hold_no_full_size_maps_whatever_the_expressions(grounder):
    """Eight answers on a 2-megapixel image: the old predictions held three full-size maps each
    (144 MB in all); now each holds its mask as RLE and its maps at the canvas size, made at full
    size only when read."""
    image = Image.new("RGB", (2000, 1000), (120, 30, 200))
    preds = grounder.predict(image, [f"the thing number {i}" for i in range(8)])
    assert len(pickle.dumps(preds)) < 2000 * 1000 / 2
    p = preds[3]
    assert p.mask.shape == p.prob.shape == p.attention.shape == (1000, 2000)
    assert np.array_equal(p.mask, p.prob > grounder.mask_threshold) and p.prob.dtype == np.float32


# ----------------------------------------------------------------------------- expressions
ODD_TEXTS = {"int": 42, "float": 1.5, "null": None, "zero_width": "\u200b\u200c\u200d", "bom_joiner": "\ufeff\u2060",
             "nul": "\x00", "escape": "\x1b[31m\x1b[0m", "spaces": " \t\u3000", "surrogate": "red \ud800 circle"}


def test_a_text_that_is_not_a_string_or_shows_nothing_is_its_pairs_error_line(tmp_path, capsys):
    shapes_image(tmp_path / "a.png", 0)
    rows = [{"id": name, "image": "a.png", "text": text} for name, text in ODD_TEXTS.items()]
    rows.append({"id": "ok", "image": "a.png", "text": "the red \u200bcircle"})
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--pairs", str(path), "--out", str(out), "--num-workers", "0"]) == 0
    assert ("9 error lines (3 text must be a string, 1 text is not valid Unicode, 5 empty expression)"
            in capsys.readouterr().out)
    lines = {line["id"]: line for line in lines_of(out)}
    assert lines["int"]["error"] == "text must be a string, got int 42"
    assert lines["float"]["error"] == "text must be a string, got float 1.5"
    assert lines["null"]["error"] == "text must be a string, got NoneType None"
    assert lines["surrogate"]["error"].startswith("text is not valid Unicode") and lines["surrogate"]["text"] == \
        ODD_TEXTS["surrogate"]
    for name in ("zero_width", "bom_joiner", "nul", "escape", "spaces"):
        assert lines[name]["error"] == "empty expression" and lines[name]["text"] == ODD_TEXTS[name], name
    assert "error" not in lines["ok"] and lines["ok"]["text"] == "the red \u200bcircle"  # as given


def test_the_api_refuses_a_text_that_shows_nothing_or_is_not_a_string(grounder):
    image = Image.new("RGB", (40, 30))
    for text in ("\u200b", "\ufeff\u2060", "\x00", "\x1b[31m", " \n\t"):
        with pytest.raises(InputError, match="^empty expression"):
            grounder.predict(image, text)
    with pytest.raises(InputTypeError, match="^text must be a string, got int 42$"):
        grounder.predict(image, 42)
    with pytest.raises(InputTypeError, match="^text must be a string, got NoneType None$"):
        grounder.predict(image, ["the cat", None])
    with pytest.raises(InputError, match="^text is not valid Unicode"):  # the tokenizer would raise a TypeError
        grounder.predict(image, "the red \ud800 circle")


def test_control_characters_are_not_echoed_and_the_json_keeps_the_text(tmp_path, checkpoint, capsys):
    shapes_image(tmp_path / "a.png", 0)
    text = "the \x1b[31mred\x1b[0m circle\x07\x00\u202e"
    assert main(["predict", "--checkpoint", str(checkpoint), "--image", str(tmp_path / "a.png"), "--text", text,
                 "--out", str(tmp_path / "a.vglaw.png")]) == 0
    shown = capsys.readouterr().out
    assert '"the red circle": box' in shown
    assert not any(c in shown for c in "\x1b\x07\x00\u202e")
    assert json.loads((tmp_path / "a.vglaw.json").read_text())["predictions"][0]["text"] == text


def test_an_expression_the_model_cannot_read_as_english_gets_a_warning(grounder, caplog):
    texts = ["左边的红色汽车", "🚗🚗", "красная машина слева", "the red car on the left", "Ω omega"]
    with caplog.at_level(logging.WARNING):
        grounder.predict(Image.new("RGB", (40, 30)), texts)
    warned = [r.getMessage() for r in caplog.records if "reads English" in r.getMessage()]
    assert len(warned) == 3 and all(any(t in w for w in warned) for t in texts[:3]), warned


def test_captions_draw_a_character_for_every_one_they_are_given(caplog):
    """Pillow's built-in font has basic Latin letters only: what it lacks is drawn without its
    accents, or as '?', never as its empty box, and a warning says so once."""
    clear = getattr(getattr(pictures, "_warn_missing_glyphs", None), "cache_clear", None)
    if clear:  # the warning is given once per process: start afresh
        clear()
    image = Image.new("RGB", (160, 20), (255, 255, 255))

    def caption(text):
        return np.asarray(pictures.with_caption(image, [(text, (0, 0, 0))]))

    with caplog.at_level(logging.WARNING):
        assert np.array_equal(caption("red 中 car 🚗"), caption("red ? car ?"))
        assert np.array_equal(caption("le café à gauche"), caption("le cafe a gauche"))
        assert np.array_equal(caption("a\x1b[31mb\x00c\u200bd"), caption("abcd"))
    assert sum("no glyph" in r.getMessage() for r in caplog.records) == 1


# ----------------------------------------------------------------------------- odd pairs files
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10 ** 40), max_value=10 ** 40)
    | st.floats() | st.text(max_size=12) | st.sampled_from(["a.png", "\u200b", "\x00", "x\ny", "\ud800", "\ufeff"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)
KEYS = st.sampled_from(["id", "image", "text", "ID", "", "note", "a\nb", "\x1b[2J"]) | st.text(max_size=6)
RECORD = (st.fixed_dictionaries({"image": st.sampled_from(["a.png", "dir/b c.jpg", "\u00e9t\u00e9.png"]) | VALUES,
                                 "text": st.text(max_size=20) | VALUES},
                                optional={"id": st.integers(-10 ** 20, 10 ** 20) | st.text(max_size=8) | VALUES,
                                          "note": VALUES})
          | st.dictionaries(KEYS, VALUES, max_size=5))
JUNK = st.binary(max_size=20) | st.sampled_from([b'{"id": 1' + b"1" * 5000 + b"}\n", b"[" * 5000, b"\x00\x00",
                                                b'"a\rb",c\n', b"\xff\xfe"])


def write_pairs(folder: Path, kind: str, records: list[dict], bom: bool, junk: bytes | None) -> Path:
    """``records`` as a pairs file of ``kind`` (what cannot be stored as that kind goes as its
    JSON text), optionally with a BOM first and ``junk`` bytes appended."""
    path = folder / f"pairs.{kind}"
    if kind == "jsonl":
        data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8", "surrogatepass")
    elif kind == "csv":
        columns = list(dict.fromkeys(k for r in records for k in r))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns)
        writer.writeheader()
        writer.writerows({k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()} for r in records)
        data = text.getvalue().encode("utf-8", "surrogatepass")
    else:
        try:
            table = pa.Table.from_pylist(records)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            table = pa.Table.from_pylist([{k: json.dumps(v) for k, v in r.items()} for r in records])
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data + (junk or b""))
    return path


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["jsonl", "csv", "parquet"]), records=st.lists(RECORD, max_size=6), bom=st.booleans(),
       junk=st.one_of(st.none(), st.none(), JUNK))
def test_any_pairs_file_gives_pairs_or_one_line_never_a_traceback(kind, records, bom, junk):
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = write_pairs(Path(folder), kind, records, bom, junk)
        except (pa.ArrowException, UnicodeEncodeError, ValueError):
            return  # pyarrow or the encoder cannot write these records: no such file exists
        try:
            pairs = read_pairs(path)
        except InputError as e:
            event(f"{kind}: one line")
            assert str(e) and "\n" not in str(e) and str(path) in str(e), str(e)
            return
    event(f"{kind}: {'some' if pairs else 'no'} pairs, {'some' if any('error' in p for p in pairs) else 'no'} errors")
    assert len({key(p["id"]) for p in pairs}) == len(pairs)
    for p in pairs:
        assert set(p) <= {"id", "image", "text", "error"}
        assert isinstance(p["id"], (str, int)) and not isinstance(p["id"], bool)
        assert isinstance(p["image"], str) and p["image"]
        assert isinstance(p["text"], str) or (p["text"] is None and p["error"].startswith("text must be a string"))
        assert "\n" not in p.get("error", "")
        json.loads(json_text({**p, "made_from": made_from(p, p["image"], None, "settings")}))  # its line is JSON
