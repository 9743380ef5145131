"""``vglaw serve``: the Gradio page and its HTTP API, on loopback, with the bundled demo model:
answers equal to ``Grounder.predict``, messages for bad input, 20 concurrent users, the page
driven in a real browser (Debian's Chromium through Playwright), and what guards the server: a
port in use, the size of a request's uploads, uploads deleted once unused, requests from other
origins, the security headers."""
import json
import os
import re
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

gradio = pytest.importorskip("gradio", reason="the demo extra (pip install 'vglaw[demo]') is not installed")
import httpx  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

from vglaw.inference import serve as serve_module  # noqa: E402
from vglaw.hub import DEMO_CHECKPOINT  # noqa: E402
from vglaw.inference.predictor import Grounder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["the small red circle", "the blue square"]
FRIEND = "https://friend.example"  # the origin the server is told to accept requests from


def draw_shapes(path: Path, seed: int, size=(160, 120)) -> Path:
    """A picture of coloured shapes like the ones the demo model knows."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(150, 230, 3)))
    draw = ImageDraw.Draw(img)
    x, y = int(rng.integers(10, 50)), int(rng.integers(10, 60))
    draw.ellipse([x, y, x + 25, y + 25], fill=(215, 45, 40))
    x, y = int(rng.integers(80, 120)), int(rng.integers(10, 70))
    draw.rectangle([x, y, x + 35, y + 35], fill=(45, 85, 215))
    img.save(path)
    return path


@pytest.fixture(scope="module")
def grounder():
    return Grounder.from_pretrained(DEMO_CHECKPOINT)


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    """Gradio's folder for uploads (and the server's answers), empty at the start."""
    folder = tmp_path_factory.mktemp("gradio")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def server(grounder, uploads):
    sock = serve_module.listen("127.0.0.1", 0)
    app = serve_module.build_app(grounder, DEMO_CHECKPOINT)
    running = serve_module.launch(app, sock, allow_origins=[FRIEND], block=False)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    running.should_exit = True


def boxes_of(json_text: str) -> list[list[float]]:
    return [p["box_xyxy"] for p in json.loads(json_text)["predictions"]]


def expected_boxes(grounder, path, texts) -> list[list[float]]:
    return [list(p.box) for p in grounder.predict(path, texts)]


def test_the_api_answers_as_the_predictor_does(server, grounder, tmp_path):
    from vglaw.inference.pictures import COLOURS, draw_predictions

    path = draw_shapes(tmp_path / "shapes.png", seed=0)
    grounded, heatmaps, result = Client(server, verbose=False).predict(
        handle_file(str(path)), "\n".join(TEXTS), False, api_name="/ground")
    assert boxes_of(result) == expected_boxes(grounder, path, TEXTS)
    data = json.loads(result)
    assert (data["width"], data["height"], data["law"]) == (160, 120, True)
    # one picture, each expression's mask, box and caption in one colour: the picture vglaw predict draws
    picture = np.asarray(Image.open(grounded).convert("RGB"))
    assert np.array_equal(picture, np.asarray(draw_predictions(Image.open(path).convert("RGB"),
                                                               grounder.predict(path, TEXTS))))
    for c in COLOURS[:2]:
        assert (picture == c).all(-1).sum() > 50
    # each answer's score, as the predictor gives it, in the JSON and the gallery's captions
    scores = [p.score for p in grounder.predict(path, TEXTS)]
    assert [p["score"] for p in data["predictions"]] == scores and all(0 <= s <= 1 for s in scores)
    assert [h["caption"] for h in heatmaps] == [f"{t} (score {s:.2f})" for t, s in zip(TEXTS, scores)]
    _, _, without_law = Client(server, verbose=False).predict(handle_file(str(path)), "\n".join(TEXTS), True,
                                                             api_name="/ground")
    static = [list(p.box) for p in grounder.predict(path, TEXTS, use_law=False)]
    assert boxes_of(without_law) == static and static != boxes_of(result)


def test_the_readmes_gradio_client_example_prints_what_the_readme_shows(server, monkeypatch, capsys):
    import re

    text = (ROOT / "README.md").read_text()
    mark = "<!-- what it prints against `vglaw serve` on the bundled model; tests/test_serve.py runs it -->"
    at = text.index(mark)
    code = re.findall(r"```python\n(.*?)```", text[:at], re.S)[-1]
    shown = re.match(r"```text\n(.*?)```", text[at + len(mark):].lstrip("\n"), re.S).group(1)
    assert 'Client("http://127.0.0.1:7860/")' in code
    monkeypatch.chdir(ROOT)  # its paths start at the repository's root
    exec(code.replace("http://127.0.0.1:7860/", server), {})
    assert capsys.readouterr().out.replace(server, "http://127.0.0.1:7860/").splitlines() == shown.splitlines()


def test_an_expression_naming_nothing_is_not_found_on_the_page_and_in_the_api(server, grounder):
    from vglaw.inference.pictures import draw_predictions

    image = ROOT / "vglaw" / "assets" / "examples" / "shapes_1.jpg"  # no blue circle in it
    texts = ["the blue circle", "the yellow triangle"]
    grounded, heatmaps, result = Client(server, verbose=False).predict(
        handle_file(str(image)), "\n".join(texts), False, api_name="/ground")
    absent, present = json.loads(result)["predictions"]
    assert absent["no_target"] is True and absent["found"] is False and absent["boxes"] == []
    assert absent["exists"] < grounder.min_exists <= present["exists"] and present["found"]
    assert absent["exists"] == grounder.predict(image, texts)[0].exists  # as vglaw predict answers
    # the page draws nothing for it, only its caption: "... : not found"
    picture = np.asarray(Image.open(grounded).convert("RGB"))
    assert np.array_equal(picture, np.asarray(draw_predictions(Image.open(image).convert("RGB"),
                                                               grounder.predict(image, texts))))
    assert heatmaps[0]["caption"].endswith(": not found")


def awkward_files(folder: Path) -> list[Path]:
    """Drawn shapes saved the ways that Gradio's image input re-encodes before a function sees them
    (it converts every image whose mode is not RGB and saves it again): a 16-bit grey PNG (Gradio
    made it all white), a palette PNG with a transparent background (it dropped the transparency),
    a CMYK JPEG (saved again, lossily); and a JPEG whose EXIF tag says to rotate it."""
    rgb = Image.open(draw_shapes(folder / "drawn.png", seed=3, size=(170, 110))).convert("RGB")
    grey = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(folder / "grey16.png")
    palette = rgb.quantize(colors=8)
    palette.save(folder / "palette.png", transparency=palette.getpixel((0, 0)))  # the background
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rgb.save(folder / "rotated.jpg", exif=exif, quality=95)
    return [folder / n for n in ("grey16.png", "palette.png", "cmyk.jpg", "rotated.jpg")]


def test_every_image_gets_the_answer_vglaw_predict_gives(server, grounder, tmp_path):
    """The server reads the uploaded file itself, byte for byte as sent, with the loader that
    ``Grounder.predict`` and ``vglaw predict`` use."""
    from vglaw.data.transforms import load_image

    client = Client(server, verbose=False)
    answers, expected = {}, {}
    for path in awkward_files(tmp_path):
        _, _, result = client.predict(handle_file(str(path)), "\n".join(TEXTS), False, api_name="/ground")
        data, rgb = json.loads(result), load_image(path)
        answers[path.name] = (data["image"], data["width"], data["height"], boxes_of(result))
        expected[path.name] = (path.name, rgb.width, rgb.height, expected_boxes(grounder, path, TEXTS))
    assert answers == expected


def test_building_the_app_writes_nothing_into_the_package(server):
    assert not Path(serve_module.__file__).with_suffix(".pyi").exists()  # Gradio's stub for component subclasses


def test_bad_input_gets_a_message_and_the_server_keeps_serving(server, grounder, tmp_path, monkeypatch, capfd,
                                                               caplog):
    from gradio_client.exceptions import AppError

    good = draw_shapes(tmp_path / "good.png", seed=1)
    (tmp_path / "text.jpg").write_bytes(b"this is not an image")
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:200])
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1900, 1900, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > serve_module.MAX_UPLOAD_MB * 2**20
    cases = [(tmp_path / "text.jpg", "x", "text.jpg is not an image that can be read"),
             (tmp_path / "truncated.png", "x", "truncated"),
             (big, "x", "exceeds the maximum file size"), (good, "", "no expression"), (good, "a" * 5000, "5000 characters"),
             (good, "\n".join(["the circle"] * 50), "50 expressions")]
    client = Client(server, verbose=False)
    for path, text, message in cases:
        with pytest.raises(Exception) as err:
            client.predict(handle_file(str(path)), text, False, api_name="/ground")
        assert message in str(err.value) and "Traceback" not in str(err.value), (path.name, str(err.value))
        assert "preprocess" not in str(err.value)  # vglaw's message, not Gradio's internals
    monkeypatch.setattr(serve_module, "MAX_PIXELS", 100 * 100)  # the server checks the decoded size too
    with pytest.raises(AppError, match="over the server's limit of 10,000 pixels"):
        client.predict(handle_file(str(good)), "x", False, api_name="/ground")
    monkeypatch.setattr(serve_module, "MAX_PIXELS", 2 * 160 * 120)  # and its pixels times the expressions
    with pytest.raises(AppError, match=r"3 expressions on good.png \(160x120\): at most 2 at this size"):
        client.predict(handle_file(str(good)), "a\nb\nc", False, api_name="/ground")
    monkeypatch.undo()
    _, _, result = client.predict(handle_file(str(good)), "\n".join(TEXTS), False, api_name="/ground")
    assert boxes_of(result) == expected_boxes(grounder, good, TEXTS)
    # the server logs each refusal as one line, without a traceback
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request refused")]
    assert len(refused) == len(cases) + 1 and all("\n" not in line for line in refused), refused
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("distinct", [False, True], ids=["identical", "distinct-expressions"])
def test_twenty_concurrent_requests_on_one_image_all_come_back_whole(server, grounder, tmp_path, distinct):
    """Requests on the same image at once used to share Gradio's content-named output files, and
    one rewrote a file while another was downloading it (a response shorter than its
    Content-Length). Every answer's files are now its own."""
    path = draw_shapes(tmp_path / "same.png", seed=10)
    texts = [TEXTS[0], TEXTS[1], "the circle", "the square on the right", "the red thing"]
    jobs = [[texts[i % len(texts)]] if distinct else TEXTS for i in range(20)]
    expected = {tuple(j): expected_boxes(grounder, path, j) for j in jobs}

    def call(job):
        grounded, heatmaps, result = Client(server, verbose=False).predict(
            handle_file(str(path)), "\n".join(job), False, api_name="/ground")
        for picture in [grounded] + [h["image"] for h in heatmaps]:  # every file downloaded, and whole
            Image.open(picture).load()
        return result

    for _ in range(3):
        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(call, jobs))
        for job, result in zip(jobs, results):
            assert boxes_of(result) == expected[tuple(job)]


def test_the_page_in_a_real_browser(server, grounder, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no Chromium here: apt-get install chromium (CI installs it)")
    from playwright.sync_api import sync_playwright

    path = awkward_files(tmp_path)[1]  # a palette PNG with transparency: Gradio's preprocessing dropped it
    example = serve_module.EXAMPLES / "shapes_0.jpg"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        refused = []  # what the server's Content-Security-Policy kept the page from doing
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(server)
        assert "trained only on synthetic images" in page.content()

        def ground(before: str = "") -> str:
            page.get_by_role("button", name="Ground").click()
            page.wait_for_function("before => ((document.querySelector('#result-json textarea') || {}).value "
                                   "|| before) !== before", arg=before, timeout=60_000)
            return page.locator("#result-json textarea").input_value()

        page.locator("#image input[type=file]").set_input_files(str(path))
        page.locator("#image img").first.wait_for(timeout=30_000)  # the upload arrived and shows
        page.locator("#expressions textarea").fill("\n".join(TEXTS))
        uploaded = ground()
        page.locator("#expressions textarea").fill(TEXTS[1])
        again = ground(before=uploaded)  # the same upload again: the page does not send it again
        page.get_by_text("the leftmost shape").first.click()  # an example fills the image and expressions
        page.wait_for_function("() => document.querySelector('#image img').src.includes('shapes_0')",
                               timeout=30_000)
        example_texts = page.locator("#expressions textarea").input_value().splitlines()
        from_example = ground(before=again)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert boxes_of(uploaded) == expected_boxes(grounder, path, TEXTS)
    assert boxes_of(again) == expected_boxes(grounder, path, TEXTS[1:])
    assert example_texts[0] == "the leftmost shape"
    assert boxes_of(from_example) == expected_boxes(grounder, example, example_texts)
    assert refused == []


def test_the_page_says_what_a_checkpoint_was_trained_on(tmp_path):
    from vglaw import build_model

    build_model("tiny").save_pretrained(tmp_path / "ck", training={
        "dataset": "refcoco", "format": "refer", "split_by": "unc", "prepared": "data/prepared/refcoco",
        "splits": {"train": 120624, "val": 10834}, "epoch": 19, "epochs": 20})
    text = serve_module.describe(tmp_path / "ck", Grounder.from_pretrained(tmp_path / "ck"))
    assert "Training data: dataset: refcoco (refer format" in text and "train: 120,624 expressions" in text
    build_model("tiny").save_pretrained(tmp_path / "bare")
    assert "Training data: Not recorded" in serve_module.describe(tmp_path / "bare",
                                                                  Grounder.from_pretrained(tmp_path / "bare"))


def upload(server, files, **headers):
    """Gradio's upload route called as any HTTP client would: ``files`` is [(name, bytes)]."""
    return httpx.post(server + "gradio_api/upload", files=[("files", f) for f in files], headers=headers)


def call_ground(server, path: str, text: str, **headers):
    """(event, data) of one call to /ground through Gradio's plain HTTP API, on an uploaded file's path."""
    r = httpx.post(server + "gradio_api/call/ground", headers=headers,
                   json={"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, text, False]})
    r.raise_for_status()
    stream = httpx.get(server + f"gradio_api/call/ground/{r.json()['event_id']}", timeout=60).text
    event, data = [line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith(("event:", "data:"))][-2:]
    return event, json.loads(data)


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_a_port_in_use_gets_one_line_naming_the_option_before_the_model_loads(capsys, monkeypatch):
    from vglaw.cli import main

    loaded = []
    monkeypatch.setattr(Grounder, "from_pretrained", lambda *a, **k: loaded.append(a))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == f"vglaw serve: error: cannot listen on 127.0.0.1 port {port}: in use (another server is listening " \
                  "on it); choose another with --port\n"
    assert loaded == []
    for port in ("99999", "-1"):  # not served on 99999 - 65536, nor blamed on --host
        assert main(["serve", "--port", port]) == 2
        assert capsys.readouterr().err == f"vglaw serve: error: --port {port}: a port is 0..65535 (0: any free one)\n"
    assert loaded == []
    assert main(["serve", "--allow-origin", "app.example.com"]) == 2  # an origin has a scheme
    assert capsys.readouterr().err == ("vglaw serve: error: --allow-origin app.example.com: an origin is "
                                       "http(s)://host[:port], e.g. https://app.example.com\n")


def test_one_request_uploading_more_than_the_limit_in_all_is_refused(server, uploads, monkeypatch):
    """The limit is on the request, not on each file: files each under it but over it together are
    refused before any is stored (and a body of unknown length is refused too)."""
    before = files_under(uploads)
    megabytes = np.random.default_rng(0).bytes(2**20)
    half = (serve_module.MAX_UPLOAD_MB // 2 + 1) * megabytes
    r = upload(server, [("a.png", half), ("b.png", half)])
    assert r.status_code == 413 and f"over the server's limit of {serve_module.MAX_UPLOAD_MB} MB per request" in r.text
    r = upload(server, [(f"{i}.png", megabytes) for i in range(serve_module.MAX_UPLOAD_MB + 5)])
    assert r.status_code == 413
    chunked = httpx.post(server + "gradio_api/upload", content=iter([megabytes] * 3),
                         headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert chunked.status_code == 411
    assert files_under(uploads) == before
    assert upload(server, [("a.png", megabytes), ("b.png", megabytes)]).status_code == 200  # under it in all
    monkeypatch.setattr(serve_module, "MAX_HELD_MB", 1)  # uploads kept at once
    r = upload(server, [("c.png", megabytes)])
    assert r.status_code == 503 and re.match(r"the server already holds \d+ MB of uploads \(at most 1 MB\)", r.text)


def test_uploads_are_kept_while_in_use_and_deleted_once_unused(server, grounder, uploads, tmp_path):
    """The page grounds its uploaded image again on each click without uploading it again, so an
    upload stays while it is used; it is deleted UPLOAD_KEEP_S after its last use (or its upload)."""
    good = draw_shapes(tmp_path / "good.png", seed=2)
    used, unused = upload(server, [("good.png", good.read_bytes()), ("other.png", b"not grounded")]).json()
    assert call_ground(server, used, TEXTS[0])[0] == "complete"
    event, data = call_ground(server, used, TEXTS[1])  # the page's second click on the same upload
    assert event == "complete" and boxes_of(data[2]) == expected_boxes(grounder, good, [TEXTS[1]])
    assert Path(used).is_file() and Path(unused).is_file()
    old = time.time() - serve_module.UPLOAD_KEEP_S - 1
    for path in (used, unused):
        os.utime(path, (old, old))
    newer = upload(server, [("new.png", good.read_bytes() + b"\0")]).json()[0]  # each upload deletes the unused
    assert not Path(used).exists() and not Path(unused).exists() and Path(newer).is_file()
    event, data = call_ground(server, used, TEXTS[0])
    assert (event, data["error"]) == ("error", "good.png is no longer on the server (an upload is deleted 10 minutes "
                                               "after its last use): upload it again")
    os.utime(newer, (old, old))
    assert call_ground(server, newer, TEXTS[0])[0] == "complete"  # in use: kept
    assert Path(newer).is_file()
    os.utime(newer, (old, old))
    call_ground(server, str(serve_module.EXAMPLES / "shapes_0.jpg"), TEXTS[0])  # each answer deletes the unused
    assert not Path(newer).exists() and not Path(newer).parent.exists()


def test_requests_from_other_origins_are_refused_unless_allowed(server, uploads, tmp_path):
    """A web page elsewhere must not use the server (upload to it, call it) through a visitor's
    browser; the server's own page and the origins named with --allow-origin may."""
    evil, own = {"Origin": "https://evil.example"}, {"Origin": server.rstrip("/")}
    image = ("shapes.png", draw_shapes(tmp_path / "shapes.png", seed=4).read_bytes())
    before = files_under(uploads)
    r = upload(server, [image], **evil)
    assert r.status_code == 403 and "requests from web pages on https://evil.example are refused" in r.text
    assert files_under(uploads) == before
    assert httpx.post(server + "gradio_api/call/ground", json={"data": [None, "x", False]}, headers=evil).status_code == 403
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    assert httpx.options(server + "gradio_api/call/ground", headers={**evil, **preflight}).status_code == 403
    path = upload(server, [image], **own).json()[0]
    assert call_ground(server, path, TEXTS[0], **own)[0] == "complete"
    r = httpx.options(server + "gradio_api/call/ground", headers={"Origin": FRIEND, **preflight})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == FRIEND
    r = upload(server, [image], Origin=FRIEND)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == FRIEND
    assert call_ground(server, r.json()[0], TEXTS[0], Origin=FRIEND)[0] == "complete"


def test_every_response_carries_the_security_headers(server):
    responses = [httpx.get(server), httpx.get(server + "gradio_api/info"), httpx.get(server + "config"),
                 upload(server, [("x.png", b"x")]), upload(server, [("x.png", b"x")], Origin="https://evil.example")]
    for r in responses:
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY", r.url
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 403]
