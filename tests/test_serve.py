"""``vglaw serve``: the Gradio page and its HTTP API, on loopback, with the bundled demo model:
answers equal to ``Grounder.predict``, messages for bad input, 20 concurrent users, and the page
driven in a real browser (Debian's Chromium through Playwright)."""
import json
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

gradio = pytest.importorskip("gradio", reason="the demo extra (pip install 'vglaw[demo]') is not installed")
from gradio_client import Client, handle_file  # noqa: E402

from vglaw.inference import serve as serve_module  # noqa: E402
from vglaw.hub import DEMO_CHECKPOINT  # noqa: E402
from vglaw.inference.predictor import Grounder  # noqa: E402

TEXTS = ["the small red circle", "the blue square"]


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
def server(grounder):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = serve_module.build_app(grounder, DEMO_CHECKPOINT)
    serve_module.launch(app, port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


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
    monkeypatch.undo()
    _, _, result = client.predict(handle_file(str(good)), "\n".join(TEXTS), False, api_name="/ground")
    assert boxes_of(result) == expected_boxes(grounder, good, TEXTS)
    # the server logs each refusal as one line, without a traceback
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request refused")]
    assert len(refused) == len(cases) and all("\n" not in line for line in refused), refused
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
        page.get_by_text("the leftmost shape").first.click()  # an example fills the image and expressions
        page.wait_for_function("() => document.querySelector('#image img').src.includes('shapes_0')",
                               timeout=30_000)
        example_texts = page.locator("#expressions textarea").input_value().splitlines()
        from_example = ground(before=uploaded)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert boxes_of(uploaded) == expected_boxes(grounder, path, TEXTS)
    assert example_texts[0] == "the leftmost shape"
    assert boxes_of(from_example) == expected_boxes(grounder, example, example_texts)


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
