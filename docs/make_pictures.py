"""Regenerate the README's pictures from the code: ``python docs/make_pictures.py``.

- ``docs/demo.png``: several expressions on one image of the demo's fresh synthetic set
  (``vglaw demo``'s ``pictures/several_expressions_0.png``);
- ``docs/serve.png``: the ``vglaw serve`` page after grounding a bundled example, in Debian's
  Chromium driven by Playwright.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from vglaw.hub import DEMO_CHECKPOINT
from vglaw.inference import serve
from vglaw.commands.demo import run_demo
from vglaw.inference.predictor import Grounder

DOCS = Path(__file__).resolve().parent


def demo_picture() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_demo(Path(tmp) / "demo")
        shutil.copy(Path(tmp) / "demo" / "pictures" / "several_expressions_0.png", DOCS / "demo.png")


def serve_picture() -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("docs/serve.png needs Debian's Chromium: apt-get install chromium")
    sock = serve.listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = serve.build_app(Grounder.from_pretrained(DEMO_CHECKPOINT), DEMO_CHECKPOINT)
    server = serve.launch(app, sock, block=False)
    example = json.loads((serve.EXAMPLES / "examples.json").read_text())[0]
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#image input[type=file]").set_input_files(str(serve.EXAMPLES / example["image"]))
            page.locator("#image img").first.wait_for(timeout=30_000)
            page.locator("#expressions textarea").fill("\n".join(example["expressions"]))
            page.get_by_role("button", name="Ground").click()
            page.wait_for_function("() => (document.querySelector('#result-json textarea') || {}).value",
                                   timeout=60_000)
            page.locator("#grounded img").first.wait_for(timeout=30_000)
            page.wait_for_timeout(1000)  # the gallery's images
            page.screenshot(path=str(DOCS / "serve.png"), full_page=True)
            browser.close()
    finally:
        server.should_exit = True


if __name__ == "__main__":
    demo_picture()
    serve_picture()
    print(f"wrote {DOCS / 'demo.png'} and {DOCS / 'serve.png'}")
