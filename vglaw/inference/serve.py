"""``vglaw serve``: a web page and an HTTP API that ground expressions in an image (Gradio).

The page takes an image (an upload or a bundled example) and expressions, one per line, and
shows per expression the box and mask, where the box head's language-guided pooling looks, and
the JSON result that ``vglaw predict`` writes. The same function is Gradio's API endpoint
``/ground``. Requests wait in a bounded queue and run one at a time, each within a size limit
(upload bytes, image pixels times expressions), and uploads are deleted once unused, so no
client can run the server out of memory or disk; bad input gets a message on the page.
Requests from web pages on other origins are refused unless ``allow_origins`` names them, and
every response carries the usual security headers.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from ..config import MIN_EXISTS
from ..data.transforms import load_image
from ..errors import InputError, MissingExtraError
from ..fileio import json_text
from ..hub import checkpoint_or_demo, is_demo_checkpoint
from ..model.card import read_training, training_lines
from .pictures import answer_caption, attention_tile, draw_predictions
from .postprocess import predictions_json
from .predictor import Grounder

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
MAX_EXPRESSIONS = 10
MAX_CHARS = 300
MAX_UPLOAD_MB = 10  # one HTTP request's body: all the files it uploads together
FORM_BYTES = 2**16  # room for a form's own headers beside its files
MAX_PIXELS = 20_000_000  # decoded width x height, times the number of expressions (each answer is drawn at full size)
UPLOAD_KEEP_S = 600  # an upload is deleted this long after it was uploaded or last grounded
MAX_HELD_MB = 500  # uploads kept at once; more are refused until older ones are deleted
QUEUE_SIZE = 32  # requests waiting at most; more are refused with a message
# The page is Gradio's: its inline scripts and styles need 'unsafe-inline'; nothing loads from elsewhere.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data: blob:; font-src 'self' data:; media-src 'self' data: blob:; "
                               "worker-src 'self' blob:; object-src 'none'; base-uri 'self'; form-action 'self'; "
                               "frame-ancestors 'none'",
}
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


def open_upload(path: str | os.PathLike | None, expressions: int = 1) -> Image.Image:
    """The uploaded file as RGB, decoded as ``vglaw predict`` decodes it (:func:`load_image`),
    refusing what is not an image, or too large to decode and draw ``expressions`` answers for."""
    if path is None:
        raise InputError("no image: upload one or pick an example below")
    name = Path(path).name
    if not Path(path).is_file():
        raise InputError(f"{name} is no longer on the server (an upload is deleted {UPLOAD_KEEP_S // 60} minutes "
                         "after its last use): upload it again")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).replace(str(path), name)  # named as uploaded, not by the server's copy of it
        raise InputError(f"{name} is not an image that can be read: {reason}") from None
    if width * height > MAX_PIXELS:
        raise InputError(f"{name} is {width}x{height}: over the server's limit of {MAX_PIXELS:,} pixels")
    if width * height * expressions > MAX_PIXELS:
        raise InputError(f"{expressions} expressions on {name} ({width}x{height}): at most "
                         f"{MAX_PIXELS // (width * height)} at this size (image pixels x expressions are at most "
                         f"{MAX_PIXELS:,} per request)")
    try:
        return load_image(path)
    except InputError as e:
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
    rgb = open_upload(image_path, len(texts))
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
    return str(picture), heatmaps, json_text(result, indent=1)


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
    exists = ("" if not getattr(grounder.model, "has_existence", False) else
              " It says \"not found\" (and draws nothing) where the probability that the expression names something "
              f"in the image is below {grounder.min_exists}.")
    return exists + _score_words(grounder)


def _score_words(grounder: Grounder) -> str:
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


def forget_uploads(uploads: set[str], keep_seconds: float) -> int:
    """Delete the uploaded files in ``uploads`` (Gradio's set of them) not modified for
    ``keep_seconds`` (each use touches its file); returns the bytes of those kept."""
    held, now = 0, time.time()
    for name in list(uploads):
        path = Path(name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            uploads.discard(name)
            continue
        if now - stat.st_mtime < keep_seconds:
            held += stat.st_size
            continue
        path.unlink(missing_ok=True)
        uploads.discard(name)
        try:
            path.parent.rmdir()  # Gradio's folder for the file (named by its content), once empty
        except OSError:
            pass
    return held


class Guard:
    """ASGI middleware in front of the served app. It refuses a request that a web page on another
    origin sent (a browser names the page's origin in the ``Origin`` header) unless that origin is
    in ``allow_origins``; refuses a request body over ``MAX_UPLOAD_MB`` (all of its files together)
    and a new upload while ``MAX_HELD_MB`` of uploads are kept, after deleting the unused ones; and
    adds ``SECURITY_HEADERS`` to every response."""

    def __init__(self, app, *, uploads: set[str], allow_origins=()):
        self.app, self.uploads, self.allow_origins = app, uploads, set(allow_origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers, MutableHeaders
        from starlette.responses import PlainTextResponse

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        refusal = self.refusal(Headers(scope=scope))
        if refusal is None:
            return await self.app(scope, receive, send_with_headers)
        status, message = refusal
        log.warning("request refused: %s", message)
        await PlainTextResponse(message, status_code=status)(scope, receive, send_with_headers)

    def refusal(self, headers) -> tuple[int, str] | None:
        """(HTTP status, message) for a request to refuse; None for one to serve."""
        origin = headers.get("origin")
        if origin is not None and origin not in self.allow_origins and urlsplit(origin).netloc != headers.get("host"):
            return 403, (f"requests from web pages on {origin} are refused: the server accepts them only from its own "
                         "page and the origins named with --allow-origin")
        if "transfer-encoding" in headers:  # a body of unknown length
            return 411, "send the request's Content-Length (the server does not take chunked bodies)"
        length = int(headers.get("content-length") or 0)
        if length > MAX_UPLOAD_MB * 2**20 + FORM_BYTES:
            return 413, (f"a request of {length / 2**20:.1f} MB: over the server's limit of {MAX_UPLOAD_MB} MB per "
                         "request (all its files together)")
        if headers.get("content-type", "").startswith("multipart/form-data"):
            held = forget_uploads(self.uploads, UPLOAD_KEEP_S)
            if held + length > MAX_HELD_MB * 2**20:
                return 503, (f"the server already holds {held / 2**20:.0f} MB of uploads (at most {MAX_HELD_MB} MB): "
                             f"try again in a few minutes, once unused ones are deleted")
        return None


def check_origin(origin: str) -> str:
    """``origin`` (an ``--allow-origin`` value) as browsers send it: scheme://host[:port]."""
    parts = urlsplit(origin.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or parts.fragment:
        raise InputError(f"--allow-origin {origin}: an origin is http(s)://host[:port], e.g. https://app.example.com")
    return f"{parts.scheme}://{parts.netloc}".lower()


def build_app(grounder: Grounder, checkpoint: Path):
    """The Gradio app (not launched)."""
    try:
        import gradio as gr
    except ImportError:
        raise MissingExtraError("vglaw serve needs Gradio: pip install 'vglaw[demo]'") from None

    answers = Path(gr.utils.get_upload_folder()) / "vglaw"  # served from Gradio's folder as they are

    def run(image_path, expressions, law_off):
        try:
            if image_path in app.upload_file_set:
                with contextlib.suppress(FileNotFoundError):
                    os.utime(image_path)  # in use: kept UPLOAD_KEEP_S from now
            return ground(grounder, image_path, expressions, law_off, out_dir=answers)
        except InputError as e:
            log.warning("request refused: %s", e)  # expected: one line, no traceback
            raise gr.Error(str(e), print_exception=False) from None
        finally:
            forget_uploads(app.upload_file_set, UPLOAD_KEEP_S)

    examples = json.loads((EXAMPLES / "examples.json").read_text())
    with gr.Blocks(title="vglaw: ground expressions in an image") as app:
        gr.Markdown("# VG-LAW: ground an expression in an image\n" + describe(checkpoint, grounder)
                    + f"\n\nLimits: uploads up to {MAX_UPLOAD_MB} MB, up to {MAX_EXPRESSIONS} expressions of up to "
                      f"{MAX_CHARS} characters, and image pixels x expressions up to {MAX_PIXELS:,} per request "
                      f"(e.g. 10 expressions on a {MAX_PIXELS // 10 / 1e6:g}-megapixel image, 1 on a "
                      f"{MAX_PIXELS / 1e6:g}-megapixel one). An upload is deleted {UPLOAD_KEEP_S // 60} minutes "
                      "after its last use.")
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


def listen(host: str = "127.0.0.1", port: int = 7860) -> socket.socket:
    """A socket listening on ``host``:``port``, for :func:`launch`; one line naming the option to
    change where that is not possible (a port in use, say)."""
    if not 0 <= port <= 65535:  # getaddrinfo would take 99999 as 34463, and blame --host for -1
        raise InputError(f"--port {port}: a port is 0..65535 (0: any free one)")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen()
    except socket.gaierror as e:
        raise InputError(f"--host {host}: not an address to listen on ({e.strerror})") from None
    except (OSError, OverflowError) as e:
        reason = "in use (another server is listening on it)" if getattr(e, "errno", None) == errno.EADDRINUSE else (
            getattr(e, "strerror", None) or str(e))
        raise InputError(f"cannot listen on {host} port {port}: {reason}; choose another with --port") from None
    return sock


def launch(app, sock: socket.socket, *, allow_origins=(), block: bool = True):
    """Serve the Gradio ``app`` on ``sock`` (from :func:`listen`) behind :class:`Guard`; returns the
    uvicorn server (``block=False``: once it answers; stop it with ``server.should_exit = True``)."""
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    # With CORSMiddleware on the outer app, Gradio leaves CORS to it: the origins named are allowed, no other.
    outer = FastAPI(middleware=[Middleware(Guard, uploads=app.upload_file_set, allow_origins=allow_origins),
                                Middleware(CORSMiddleware, allow_origins=list(allow_origins), allow_methods=["*"],
                                           allow_headers=["*"])])
    outer = gr.mount_gradio_app(outer, app, path="/", max_file_size=f"{MAX_UPLOAD_MB}mb", show_error=True)
    server = uvicorn.Server(uvicorn.Config(outer, log_level="warning"))
    if block:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C: uvicorn has shut down, then raises it again
            server.run(sockets=[sock])
        return server
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    return server


def serve(checkpoint: str | os.PathLike | None = None, *, host: str = "127.0.0.1", port: int = 7860,
          device: str = "auto", precision: str = "fp32", min_score: float | None = None, allow_origins=(),
          block: bool = True, min_exists: float = MIN_EXISTS):
    """Load the checkpoint (default: the bundled demo model) and serve the app on ``host``:``port``
    (taken first, before the model loads); returns the uvicorn server. Answers scoring below
    ``min_score``, or (a model with the existence output) whose expression names nothing in the
    image by ``min_exists``, are shown as not found; web pages on ``allow_origins`` may call the API."""
    allow_origins = [check_origin(o) for o in allow_origins]
    sock = listen(host, port)
    checkpoint = Path(checkpoint_or_demo(checkpoint))  # the bundled model says so once, after the port is taken
    grounder = Grounder.from_pretrained(checkpoint, device=device, precision=precision, min_score=min_score,
                                        min_exists=min_exists)
    app = build_app(grounder, checkpoint)
    print(f"vglaw serve: http://{host}:{sock.getsockname()[1]}/ (Ctrl+C stops it)", flush=True)
    return launch(app, sock, allow_origins=allow_origins, block=block)
