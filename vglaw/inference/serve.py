"""``vglaw serve``: a web page and an HTTP API that ground expressions in an image (Gradio).

The page takes an image (an upload or a bundled example) and expressions, one per line, and
shows per expression the box and mask, where the box head's language-guided pooling looks, and
the JSON result that ``vglaw predict`` writes. The same function is Gradio's API endpoint
``/ground``. Requests wait in a bounded queue and run one at a time, so concurrent users cannot
run the server out of memory; bad input gets a message on the page.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from PIL import Image

from ..data.transforms import load_image
from ..errors import InputError, MissingExtraError
from ..hub import DEMO_CHECKPOINT, is_demo_checkpoint
from ..model.card import read_training, training_lines
from .pictures import answer_caption, attention_tile, draw_predictions
from .postprocess import predictions_json
from .predictor import Grounder

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
MAX_EXPRESSIONS = 10
MAX_CHARS = 300
MAX_UPLOAD_MB = 10
MAX_PIXELS = 25_000_000  # decoded width x height
QUEUE_SIZE = 32  # requests waiting at most; more are refused with a message
log = logging.getLogger(__name__)


def parse_expressions(text: str | None) -> list[str]:
    """One expression per non-empty line, within the server's limits."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise InputError("no expression: type what to find, one per line (e.g. 'the small red circle')")
    if len(lines) > MAX_EXPRESSIONS:
        raise InputError(f"{len(lines)} expressions: at most {MAX_EXPRESSIONS} at once")
    for line in lines:
        if len(line) > MAX_CHARS:
            raise InputError(f"an expression of {len(line)} characters: at most {MAX_CHARS}")
    return lines


def open_upload(path: str | os.PathLike | None) -> Image.Image:
    """The uploaded file as RGB, decoded as ``vglaw predict`` decodes it (:func:`load_image`),
    refusing what is not an image or too large to decode."""
    if path is None:
        raise InputError("no image: upload one or pick an example below")
    name = Path(path).name
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{name} is not an image that can be read: {e}") from None
    if width * height > MAX_PIXELS:
        raise InputError(f"{name} is {width}x{height}: over the server's limit of {MAX_PIXELS:,} pixels")
    try:
        return load_image(path)
    except InputError as e:  # named as uploaded, not by the server's copy of it
        raise type(e)(str(e).replace(str(path), name)) from None


def request_folder(root: Path, keep_seconds: float = 3600) -> Path:
    """A new folder of its own for one request's pictures under ``root``; folders older than
    ``keep_seconds`` are removed. Each answer's files have names no other request uses, so a file
    is never rewritten while a client downloads it (Gradio's own cache names its pictures by their
    content and rewrites them in place: two equal answers at once could truncate a download)."""
    now = time.time()
    if root.is_dir():
        for old in root.iterdir():
            if now - old.stat().st_mtime > keep_seconds:
                shutil.rmtree(old, ignore_errors=True)
    folder = root / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder


def ground(grounder: Grounder, image_path: str | None, expressions: str | None, law_off: bool = False, *,
           out_dir: str | os.PathLike):
    """The page's and the API's function: (picture of the boxes and masks, [(attention map,
    expression)], JSON text); the pictures are PNG files written into a new folder under ``out_dir``."""
    texts = parse_expressions(expressions)
    rgb = open_upload(image_path)
    predictions = grounder.predict(rgb, texts, use_law=not law_off)
    result = predictions_json(Path(image_path).name, rgb, predictions)
    result["law"] = not law_off
    folder = request_folder(Path(out_dir))
    picture = folder / "grounded.png"
    draw_predictions(rgb, predictions).save(picture)
    heatmaps = []
    for i, p in enumerate(predictions):
        path = folder / f"attention_{i}.png"
        attention_tile(rgb, p, caption=False).save(path)  # the gallery captions it
        heatmaps.append((str(path), answer_caption(p)))
    return str(picture), heatmaps, json.dumps(result, indent=1)


def describe(checkpoint: Path, grounder: Grounder) -> str:
    """What the page says about the checkpoint it serves."""
    config = grounder.model.config
    arch = (f"{config.embed_dim}-wide ViTDet, {config.depth} blocks, canvas {config.img_size} px, "
            f"LAW `{config.law_type}` rank {config.law_rank}")
    if is_demo_checkpoint(checkpoint):
        return (f"**Checkpoint: the bundled demo model** ({arch}). It was trained only on synthetic images of "
                "coloured circles, squares and triangles, so it knows nothing else: **on photos its answers are "
                "meaningless**. Serve a RefCOCO-trained checkpoint (`vglaw serve --checkpoint DIR`) for photos."
                + scoring(grounder))
    return f"**Checkpoint:** `{checkpoint}` ({arch}). Training data: {trained_on(checkpoint)}" + scoring(grounder)


def scoring(grounder: Grounder) -> str:
    """What the page says about the scores beside each answer."""
    if grounder.calibrator is None:
        return " This checkpoint has no confidence calibrator: answers carry no score."
    hidden = "" if grounder.min_score is None else f" Answers scoring below {grounder.min_score} are shown as not found."
    return (" Each answer's score is the calibrated probability that its box is right (IoU >= 0.5 with the "
            f"object meant), fitted on {grounder.calibrator.fitted_on_words()}.{hidden}")


def trained_on(checkpoint: Path) -> str:
    """The checkpoint's training record (``training.json``), as one line."""
    lines = [line[2:] for line in training_lines(read_training(checkpoint)) if line.startswith("- ")]
    return "; ".join(lines) + "." if lines else "Not recorded with this checkpoint."


def _image_input(gr):
    """Gradio's image input (the page shows the picture; the examples fill it), except that
    :func:`ground` gets the uploaded file as it was sent. Gradio's own preprocessing converts an
    image whose mode is not RGB and saves it again (a 16-bit PNG comes out white, a palette PNG
    loses its transparency, a CMYK JPEG is re-compressed), so the page would answer differently
    from ``vglaw predict``; a file it cannot decode would get Gradio's error instead of vglaw's
    message. (The instance's method is replaced: a subclass of a Gradio component would make
    Gradio write a ``.pyi`` stub beside this module.)"""
    image = gr.Image(type="filepath", label="Image", sources=["upload"], elem_id="image")
    image.preprocess = lambda payload: None if payload is None else payload.path
    return image


def build_app(grounder: Grounder, checkpoint: Path):
    """The Gradio app (not launched)."""
    try:
        import gradio as gr
    except ImportError:
        raise MissingExtraError("vglaw serve needs Gradio: pip install 'vglaw[demo]'") from None

    answers = Path(gr.utils.get_upload_folder()) / "vglaw"  # served from Gradio's folder as they are

    def run(image_path, expressions, law_off):
        try:
            return ground(grounder, image_path, expressions, law_off, out_dir=answers)
        except InputError as e:
            log.warning("request refused: %s", e)  # expected: one line, no traceback
            raise gr.Error(str(e), print_exception=False) from None

    examples = json.loads((EXAMPLES / "examples.json").read_text())
    with gr.Blocks(title="vglaw: ground expressions in an image") as app:
        gr.Markdown("# VG-LAW: ground an expression in an image\n" + describe(checkpoint, grounder)
                    + f"\n\nLimits: images up to {MAX_UPLOAD_MB} MB and {MAX_PIXELS:,} pixels, up to "
                      f"{MAX_EXPRESSIONS} expressions of up to {MAX_CHARS} characters.")
        with gr.Row():
            with gr.Column():
                image = _image_input(gr)
                expressions = gr.Textbox(label="Expressions, one per line", lines=3, elem_id="expressions")
                law_off = gr.Checkbox(label="LAW off: run the static backbone, to compare", value=False)
                button = gr.Button("Ground", variant="primary", elem_id="ground")
                gr.Examples([[str(EXAMPLES / e["image"]), "\n".join(e["expressions"])] for e in examples],
                            inputs=[image, expressions])
            with gr.Column():
                grounded = gr.Image(label="Boxes and masks (one colour per expression)", type="filepath",
                                    format="png", elem_id="grounded")
                heatmaps = gr.Gallery(label="Where the box head looks, per expression (white: its box)", columns=3,
                                      object_fit="contain")
                result = gr.Textbox(label="JSON result (boxes in pixels, masks as COCO RLE)", lines=8,
                                    elem_id="result-json")
        button.click(run, [image, expressions, law_off], [grounded, heatmaps, result], api_name="ground")
    return app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)


def launch(app, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> None:
    """Serve ``app`` with the upload limit; with ``block=False`` return once it listens."""
    app.launch(server_name=host, server_port=port, max_file_size=f"{MAX_UPLOAD_MB}mb", prevent_thread_lock=not block,
               show_error=True)


def serve(checkpoint: str | os.PathLike | None = None, *, host: str = "127.0.0.1", port: int = 7860,
          device: str = "auto", precision: str = "fp32", min_score: float | None = None, block: bool = True):
    """Load the checkpoint (default: the bundled demo model) and serve the app; returns it.
    Answers scoring below ``min_score`` are shown as not found."""
    checkpoint = Path(checkpoint or DEMO_CHECKPOINT)
    grounder = Grounder.from_pretrained(checkpoint, device=device, precision=precision, min_score=min_score)
    app = build_app(grounder, checkpoint)
    launch(app, host=host, port=port, block=block)
    return app
