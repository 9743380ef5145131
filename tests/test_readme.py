"""The README's examples print what the README says they print, and its front matter stays short."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OUTPUT_MARK = "<!-- output of the command above; tests/test_readme.py runs it -->"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks_before(mark: str) -> tuple[str, str]:
    """(the code block just before ``mark``, the text block just after it) in the README."""
    text = README.read_text()
    at = text.index(mark)
    code = BLOCK.findall(text[:at])[-1][1]
    output = BLOCK.match(text[at + len(mark):].lstrip("\n")).group(2)
    return code, output


def commands(block: str) -> list[list[str]]:
    """The shell commands of a bash block (backslash continuations joined, comments dropped)."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_fits_in_ten_minutes():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    head = text[:text.index("## Ground your own image")]
    assert "## Limits" in head  # near the top
    # one command style: the environment is activated once, no .venv/bin/ prefixes after that
    assert ". .venv/bin/activate" in head and ".venv/bin/vglaw" not in text


def test_the_predict_example_prints_what_the_readme_shows(tmp_path):
    code, output = blocks_before(OUTPUT_MARK)
    [argv] = commands(code)
    assert argv[0] == "vglaw"
    (tmp_path / "vglaw").mkdir()
    (tmp_path / "vglaw" / "assets").symlink_to(ROOT / "vglaw" / "assets")  # the README's paths, from the root
    vglaw = Path(sys.executable).with_name("vglaw")
    done = subprocess.run([str(vglaw), *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == output.splitlines()
