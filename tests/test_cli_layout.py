"""The command line's layout: ``vglaw/cli.py`` only builds the parser and dispatches, each command
is a module of ``vglaw/commands`` (its arguments and its ``run``); a command that runs under
torchrun leaves the process group however it ends; every command that falls back to, or is
given, the bundled demo model says once that it knows only synthetic shapes."""
import ast
import json
import sys
import types
from pathlib import Path

import pytest

import vglaw.cli as cli
from vglaw import distributed
from vglaw.cli import main
from vglaw.errors import InputError
from vglaw.hub import DEMO_CHECKPOINT, DEMO_WARNING

EXAMPLES = DEMO_CHECKPOINT.parent / "examples"


def test_the_cli_only_builds_the_parser_and_dispatches():
    source = Path(cli.__file__).read_text()
    assert len(source.splitlines()) < 150
    functions = {node.name for node in ast.walk(ast.parse(source))
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert functions == {"main", "build_parser", "_check_options"}
    names = [name for name, _, _ in cli.COMMANDS]
    assert names == list(cli.build_parser()._subparsers._group_actions[0].choices)
    for name, module, summary in cli.COMMANDS:
        assert module.__name__.startswith("vglaw.commands."), name
        assert callable(module.add_arguments) and callable(module.run) and summary, name


def _stub(monkeypatch, module: str, **functions) -> None:
    """``module`` replaced by one holding ``functions`` (the command imports it when it runs)."""
    monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(__name__=module, **functions))


def _refuse_to_load(*args, **kwargs):
    raise InputError("stub: no model loaded")


@pytest.fixture
def demo_warnings(caplog):
    """How many times the demo model's warning was logged so far."""
    return lambda: sum(DEMO_WARNING in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("checkpoint", [[], ["--checkpoint", str(DEMO_CHECKPOINT)]], ids=["default", "named"])
@pytest.mark.parametrize("command", ["predict", "predict --pairs", "visualize", "serve", "export"])
def test_every_command_on_the_demo_model_warns_once(command, checkpoint, tmp_path, monkeypatch, demo_warnings):
    from vglaw.inference.predictor import Grounder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Grounder, "from_pretrained", _refuse_to_load)  # each path up to loading the model
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "shapes_0.jpg", "text": "the red circle"}) + "\n")
    (tmp_path / "prepared").mkdir()
    exported = []  # serve runs for real up to loading the model, on a port the system picks
    _stub(monkeypatch, "vglaw.inference.export", check_onnx=lambda checkpoint, out: "parity: ok",
          export_onnx=lambda checkpoint, out, opset: exported.append(checkpoint) or tmp_path / "pairs.jsonl")
    argv = {"predict": ["predict", "--image", str(EXAMPLES / "shapes_0.jpg"), "--text", "the red circle"],
            "predict --pairs": ["predict", "--pairs", "pairs.jsonl", "--image-root", str(EXAMPLES),
                                "--num-workers", "0"],
            "visualize": ["visualize", "--data", "prepared", "--index", "0", "--out", "viz"],
            "serve": ["serve", "--port", "0"], "export": ["export", "--out", "m.onnx"]}[command]
    assert main(argv + checkpoint) == (0 if command == "export" else 2)
    assert demo_warnings() == 1
    assert [Path(c).resolve() for c in exported] == ([DEMO_CHECKPOINT] if command == "export" else [])


def test_serve_on_a_taken_port_is_one_line_without_the_demo_warning(monkeypatch, demo_warnings, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
    assert demo_warnings() == 0 and "--port" in capsys.readouterr().err


def test_another_checkpoint_gets_no_demo_warning(tmp_path, monkeypatch, demo_warnings):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    _stub(monkeypatch, "vglaw.inference.export", check_onnx=lambda checkpoint, out: "parity: ok",
          export_onnx=lambda checkpoint, out, opset: Path("mine"))
    assert main(["export", "--checkpoint", "mine", "--out", "m.onnx"]) == 0
    assert demo_warnings() == 0


@pytest.mark.parametrize("command", ["train", "eval", "calibrate", "predict --pairs"])
@pytest.mark.parametrize("ending", ["error", "ctrl-c"])
def test_a_torchrun_command_leaves_the_process_group_however_it_ends(command, ending, tmp_path, monkeypatch):
    """The group is left once whether the work fails or is interrupted (it once stayed open after
    a failed eval or calibrate)."""
    from vglaw import config
    from vglaw.commands import calibrate, eval as eval_command, predict
    from vglaw.engine import train

    monkeypatch.chdir(tmp_path)
    (tmp_path / "prepared").mkdir()
    (tmp_path / "pairs.jsonl").write_text("")
    left = []
    monkeypatch.setattr(distributed, "shutdown", lambda: left.append(True))

    def work(*args, **kwargs):
        raise InputError("stub: the work failed") if ending == "error" else KeyboardInterrupt()

    monkeypatch.setattr(config, "load_config", lambda path, overrides: types.SimpleNamespace(
        run=types.SimpleNamespace(out=str(tmp_path / "run"))))
    monkeypatch.setattr(train, "train", work)
    monkeypatch.setattr(eval_command, "run_eval", work)
    monkeypatch.setattr(calibrate, "calibrate", work)
    monkeypatch.setattr(predict, "predict_pairs_file", work)
    argv = {"train": ["train", "--config", "c.yaml"],
            "eval": ["eval", "--checkpoint", str(DEMO_CHECKPOINT), "--data", "prepared", "--json", "e.json"],
            "calibrate": ["calibrate", "--checkpoint", str(DEMO_CHECKPOINT), "--data", "prepared", "--out", "c.json"],
            "predict --pairs": ["predict", "--pairs", "pairs.jsonl"]}[command]
    assert main(argv) == (2 if ending == "error" else 130)
    assert left == [True]
