"""What a new user meets first: the demo's output folder, devices, the demo model's warning,
where eval writes, start-up time and quiet loading, readable pictures, consistent flags."""
import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vglaw.cli import build_parser, main
from vglaw.config import PRECISIONS
from vglaw.device import resolve_device
from vglaw.errors import InputError
from vglaw.hub import DEMO_CHECKPOINT, DEMO_MARKER as MARKER, DEMO_WARNING
from vglaw.inference import pictures
from vglaw.commands.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """``python -m vglaw ARGS`` in its own process, as a user runs it (logging to stderr)."""
    return subprocess.run([sys.executable, "-m", "vglaw", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from vglaw import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny"
    build_model("tiny", img_size=64, pretrain_img_size=64, window_size=2).save_pretrained(path)
    return path


# 1. vglaw never deletes what it did not write

def test_demo_refuses_a_folder_it_did_not_write_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "sub" / "notes.txt").write_text("mine too")
    assert main(["demo", "--out", str(out)]) == 2
    assert "already holds files that vglaw demo did not write" in capsys.readouterr().err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["notes.txt", "sub", "sub/notes.txt"]


def test_a_rerun_of_the_demo_replaces_only_its_own_files(tmp_path):
    out = tmp_path / "demo"
    run_demo(out, images=2, panels=1)
    first = set(json.loads((out / MARKER).read_text())["files"])
    assert {"metrics.json", "summary.md", "data/prepared/val.jsonl"} <= first
    (out / "notes.txt").write_text("mine")  # the user's files, beside and inside the demo's folders
    (out / "data" / "notes.txt").write_text("mine too")
    run_demo(out, images=2, panels=1, seed=5)
    assert (out / "notes.txt").read_text() == "mine" and (out / "data" / "notes.txt").read_text() == "mine too"
    second = set(json.loads((out / MARKER).read_text())["files"])
    assert "notes.txt" not in second and "data/notes.txt" not in second
    assert json.loads((out / "metrics.json").read_text())["seed"] == 5
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert on_disk == second | {MARKER, "notes.txt", "data/notes.txt"}  # nothing of the first run is left over


# 3. one device resolver

def test_devices_resolve_or_fail_with_the_valid_values(monkeypatch, caplog):
    caplog.set_level("INFO", logger="vglaw")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    assert "device: cpu" in caplog.text  # the log says which
    for name in ("cuda", "cuda:1", "gpu", "mps0"):
        with pytest.raises(InputError, match="auto, cpu, cuda or cuda:N"):
            resolve_device(name)


@pytest.mark.parametrize("command", [
    ["predict", "--image", "{image}", "--text", "x"],
    ["visualize", "--data", "{data}", "--index", "0", "--out", "{tmp}/viz"],
    ["eval", "--checkpoint", "{checkpoint}", "--data", "{data}", "--json", "{tmp}/e.json"],
    ["serve"],
    ["train", "--config", "{config}", "run.device={device}"],
], ids=lambda c: c[0])
@pytest.mark.parametrize("device", ["cuda", "gpu"])
def test_every_command_refuses_a_device_it_cannot_use(command, device, tmp_path, monkeypatch, capsys,
                                                      tiny_checkpoint, synth_prepared):
    from conftest import write_run_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    Image.new("RGB", (20, 20)).save(tmp_path / "x.png")
    values = {"image": tmp_path / "x.png", "data": synth_prepared, "tmp": tmp_path, "checkpoint": tiny_checkpoint,
              "config": write_run_config(tmp_path / "c.yaml", synth_prepared, tmp_path / "run"), "device": device}
    args = [a.format(**values) for a in command]
    if command[0] != "train":
        args += ["--device", device]
    assert main(args) == 2  # never a silent CPU run, never a traceback
    err = capsys.readouterr().err
    assert re.search(rf"device '{device}'.*auto, cpu, cuda or cuda:N", err) and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "e.json").exists()


# 4. the demo model warns on the command line; predict defaults to it

def test_predict_defaults_to_the_demo_model_and_warns_once_and_about_long_expressions(tmp_path):
    Image.new("RGB", (64, 48), (200, 200, 200)).save(tmp_path / "photo.jpg")
    long = "the small red circle " + "that is very very far away " * 30
    run = run_cli("predict", "--image", "photo.jpg", "--text", "the red circle", "--text", long, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count(DEMO_WARNING) == 1
    kept = re.findall(r"is (\d+) tokens; the model reads its first (\d+)", run.stderr)
    max_len = json.loads((DEMO_CHECKPOINT / "config.json").read_text())["max_len"]
    assert len(kept) == 1 and int(kept[0][0]) > max_len and int(kept[0][1]) == max_len - 2
    assert (tmp_path / "photo.vglaw.png").is_file() and (tmp_path / "photo.vglaw.json").is_file()
    assert "Loading weights" not in run.stderr and "device: " in run.stderr


# 7. eval writes where it is told, or in the current folder; unique, named columns

def test_eval_writes_nothing_inside_the_checkpoint(tiny_checkpoint, synth_prepared, tmp_path, monkeypatch, capsys):
    from vglaw.commands.eval import COLUMNS, format_table

    before = sorted(p.name for p in tiny_checkpoint.parent.rglob("*"))
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(synth_prepared),
                 "--num-workers", "0"]) == 0
    assert sorted(p.name for p in tiny_checkpoint.parent.rglob("*")) == before
    written = tmp_path / f"eval_{tiny_checkpoint.parent.name}_tiny.json"  # the run folder and the name
    assert json.loads(written.read_text())["results"]["val"]["samples"] > 0
    assert f"wrote {written.name}" in capsys.readouterr().out
    header = format_table({"val": {}}).splitlines()[0].strip("| ").split(" | ")
    assert len(header) == len(set(header)) == len(COLUMNS) + 1
    assert {"box P@0.5", "mask P@0.5", "mask mIoU"} <= set(header)


# 8. fast help, quiet loading, bars only on a terminal

def test_help_imports_no_heavy_library():
    """``vglaw --help`` and every command's help build the parser only: torch, torchvision and
    transformers (about 6 s) are imported inside the commands."""
    commands = [[]] + [[name] for name in build_parser()._subparsers._group_actions[0].choices]
    code = ("import sys\nfrom vglaw.cli import main\n"
            f"for argv in {commands!r}:\n"
            "    try:\n        main(argv + ['--help'])\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'transformers', 'gradio') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_loading_a_model_prints_no_progress_bar(monkeypatch, capfd):
    from vglaw.model.io import from_pretrained

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    from_pretrained(DEMO_CHECKPOINT)  # loads the pretrained MiniLM text encoder
    assert "Loading weights" not in capfd.readouterr().err


def test_progress_bars_show_on_a_terminal_only(monkeypatch):
    import io

    from vglaw.progress import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    for stream, shown in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        list(progress(range(3), "work"))
        assert ("work" in stream.getvalue()) == shown
    monkeypatch.setattr(sys, "stderr", Terminal())
    list(progress(range(3), "work", show=False))  # not the main process
    assert sys.stderr.getvalue() == ""


# 9. pictures a reader understands

def test_captions_wrap_at_words_and_end_in_an_ellipsis():
    font = pictures._font(14)
    text = "the small red circle to the left of the very large blue square near the bottom edge " * 3
    lines = pictures.fit_text(text, 150, font, max_lines=3)
    assert len(lines) == 3 and all(font.getlength(line) <= 150 for line in lines)
    assert all(line in text for line in lines[:-1]) and lines[-1].endswith("…")
    assert lines[-1][:-1].rstrip() in text and text.split()[0] == lines[0].split()[0]
    words = set(text.split())
    assert all(w in words for line in lines[:-1] for w in line.split())  # never cut mid-word
    assert pictures.fit_text("a" * 300, 100, font, max_lines=2)[0].endswith("…")  # one word too long: cut, marked


def test_masks_keep_the_objects_colour_and_have_an_outline():
    image = Image.new("RGB", (40, 40), (240, 220, 0))  # a yellow object
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = np.asarray(pictures.overlay_mask(image, mask, (30, 120, 255))).astype(int)
    inside, edge, outside = out[20, 20], out[10, 20], out[2, 2]
    assert inside[0] > 150 and inside[1] > 150  # still yellowish under the light fill
    assert tuple(edge) == (30, 120, 255) and tuple(outside) == (240, 220, 0)


def test_one_colour_per_expression_for_its_mask_box_and_caption():
    from vglaw.inference.predictor import Prediction

    h, w = 60, 80
    preds = []
    for i, (x0, x1) in enumerate(((5, 30), (45, 75))):
        mask = np.zeros((h, w), bool)
        mask[20:40, x0:x1] = True
        preds.append(Prediction(f"thing {i}", (x0, 20, x1, 40), mask, mask.astype(np.float32), mask.astype(np.float32)))
    out = np.asarray(pictures.draw_predictions(Image.new("RGB", (w, h), (128, 128, 128)), preds))
    factor = pictures.upscale(Image.new("RGB", (w, h))).width / w
    picture_h = int(h * factor)
    for i, p in enumerate(preds):
        c = np.array(pictures.colour(i))
        x0, y0, x1, y1 = (int(v * factor) for v in p.box)
        assert (out[y0 + 1:y1 - 1, x0] == c).all(-1).mean() > 0.9  # box edge
        assert (out[picture_h:] == c).all(-1).sum() > 20  # caption text
    assert len({pictures.colour(i) for i in range(6)}) == 6


def test_heat_maps_have_a_colour_scale():
    image = Image.new("RGB", (50, 40), (100, 100, 100))
    out = pictures.attention_overlay(image, np.random.default_rng(0).random((40, 50)).astype(np.float32))
    assert out.width > image.width and out.height == image.height
    bar = np.asarray(out)[:, image.width + 4:image.width + 16]
    top, bottom = bar[13].mean(0), bar[-14].mean(0)
    assert top[0] > 220 and top[1] > 190 and bottom.max() < 110 and bottom[2] > bottom[0] + 50  # yellow (max) over dark blue (0)


def test_every_panel_of_a_sample_is_labelled(monkeypatch):
    captions = []
    real = pictures.with_caption
    monkeypatch.setattr(pictures, "with_caption", lambda img, lines, **kw: captions.extend(t for t, _ in lines)
                        or real(img, lines, **kw))
    mask = np.zeros((30, 40), bool)
    mask[5:20, 5:20] = True
    pictures.sample_panel(Image.new("RGB", (40, 30)), "the red circle", [5, 5, 20, 20], [6, 5, 21, 20], mask, mask)
    assert captions[:2] == ["ground-truth box", "predicted box (IoU 0.88)"]
    assert captions[2:4] == ["ground-truth mask", "predicted mask (IoU 1.00)"] and captions[-1] == '"the red circle"'


# 10. consistent flags

def _options(command: str) -> dict[str, argparse.Action]:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return {a.option_strings[-1]: a for a in sub._actions if a.option_strings and a.dest != "help"}


def test_every_option_has_help_and_shows_its_default():
    parser = build_parser()
    for command, sub in parser._subparsers._group_actions[0].choices.items():
        text = " ".join(sub.format_help().split()).replace("- ", "-")  # unwrapped
        for name, action in _options(command).items():
            assert action.help and action.help.strip(), (command, name)
            if action.default not in (None, False):
                assert "default" in action.help or f"(default: {action.default}" in text, \
                    (command, name)
        if "--precision" in _options(command):
            assert tuple(_options(command)["--precision"].choices) == PRECISIONS, command
        if "--device" in _options(command):
            assert _options(command)["--device"].default == "auto", command
    assert build_parser().parse_args(["serve", "--precision", "fp16"]).precision == "fp16"


def test_an_unknown_flag_is_named(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--txt", "the red circle", "--image", "x.png"])
    err = capsys.readouterr().err
    assert "unrecognized option --txt (did you mean --text?)" in err and "usage: vglaw predict" in err
    with pytest.raises(SystemExit):  # an abbreviation argparse accepts is not unknown
        main(["predict", "--heat", "--image", "x.png", "--help"])
    assert "unrecognized" not in capsys.readouterr().err
    with pytest.raises(SystemExit):  # nor is an ambiguous one: argparse names the candidates
        main(["predict", "--im", "x.png"])
    err = capsys.readouterr().err
    assert "unrecognized" not in err and "--image, --image-root" in err


def test_a_file_that_is_not_a_checkpoint_gets_vglaws_message(tmp_path, capsys):
    Image.new("RGB", (10, 10)).save(tmp_path / "ok.png")
    (tmp_path / "README.md").write_text("# not a checkpoint\n")
    assert main(["predict", "--checkpoint", str(tmp_path / "README.md"), "--image", str(tmp_path / "ok.png"),
                 "--text", "x"]) == 2
    err = capsys.readouterr().err
    assert "README.md is not a vglaw checkpoint" in err
    assert "weights_only" not in err and "False" not in err  # never torch's advice to unpickle


def test_the_readme_setup_text_matches_the_makefile():
    makefile, readme = (ROOT / "Makefile").read_text(), (ROOT / "README.md").read_text()
    extras = re.search(r"pip install --quiet -e '\.\[([\w,]+)\]'", makefile).group(1).split(",")
    said = re.search(r"install vglaw with its (.+?) extras?", " ".join(readme.split())).group(1)
    assert sorted(re.findall(r"`(\w+)`", said)) == sorted(extras)
