"""The command line's front: a wrong path, a missing input or a bad value is one line at once,
before torch is imported or a model loads; a mistyped local checkpoint never goes to the Hub;
Ctrl-C ends any command with one line and exit status 130; result JSON never holds NaN."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vglaw.errors import MissingFileError
from vglaw.hub import DEMO_CHECKPOINT, resolve_checkpoint

EXAMPLES = DEMO_CHECKPOINT.parent / "examples"
IMAGE = str(EXAMPLES / "shapes_0.jpg")

# (arguments, what the one line says); run in a folder holding runs/, d/ and the file f.txt
BAD_INPUT = [
    (["predict", "--image", "missing.jpg", "--text", "x"], "vglaw predict: error: --image missing.jpg: no such file"),
    (["predict", "--image", "d", "--text", "x"], "--image d is a folder, not an image file"),
    (["predict", "--image", IMAGE], "give --text"),
    (["predict", "--pairs", "d"], "--pairs d is a folder, not a pairs file"),
    (["predict", "--pairs", "missing.jsonl"], "--pairs missing.jsonl: no such file"),
    (["predict", "--pairs", str(EXAMPLES / "pairs.jsonl"), "--image-root", "f.txt"], "--image-root f.txt is a file"),
    (["predict", "--image", IMAGE, "--text", "x", "--out", "d"], "--out d is a folder"),
    (["predict", "--checkpoint", "runs/missing", "--image", IMAGE, "--text", "x"], "no checkpoint at runs/missing"),
    (["predict", "--onnx", "missing.onnx", "--image", IMAGE, "--text", "x"], "--onnx missing.onnx: no such file"),
    (["predict", "--pairs", "x.jsonl", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["predict", "--image", IMAGE, "--text", "x", "--min-score", "nan"], "argument --min-score: a probability"),
    (["eval", "--checkpoint", "./missing", "--data", "d"], "no checkpoint at ./missing"),
    (["eval", "--checkpoint", str(DEMO_CHECKPOINT), "--data", "missing"], "--data missing: no such folder"),
    (["eval", "--checkpoint", str(DEMO_CHECKPOINT), "--data", "d", "--calibration", "d"], "--calibration d is a folder"),
    (["calibrate", "--checkpoint", str(DEMO_CHECKPOINT), "--data", "f.txt"], "--data f.txt is a file, not a prepared"),
    (["visualize", "--data", "d", "--index", "0", "--out", "f.txt"], "--out f.txt is a file"),
    (["export", "--checkpoint", "runs/missing", "--out", "m.onnx"], "no checkpoint at runs/missing"),
    (["convert", "--from", "mindspore", "missing.ckpt", "--out", "o"], "CHECKPOINT missing.ckpt: no such file"),
    (["prepare", "--data-root", "missing", "--dataset", "refcoco", "--out", "o"], "--data-root missing: no such folder"),
    (["leakage", "--data", "d", "--coco", "missing.json"], "--coco missing.json: no such file"),
    (["demo", "--checkpoint", "runs/missing"], "no checkpoint at runs/missing"),
]


def test_bad_input_is_one_line_before_torch_or_the_hub_is_imported(tmp_path):
    """Each case in one process that imports nothing but vglaw's command line: the answer comes
    at once (today's loading of torch and a model took 5-10 s before it), names the option and
    the path, exit status 2; torch and huggingface_hub are never imported."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "d").mkdir()
    (tmp_path / "f.txt").write_text("x")
    code = ("import contextlib, io, json, sys\nfrom vglaw.cli import main\nresults = []\n"
            f"for argv in {[argv for argv, _ in BAD_INPUT]!r}:\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err):\n"
            "        try:\n            rc = main(argv)\n        except SystemExit as e:\n            rc = e.code\n"
            "    results.append([rc, err.getvalue()])\n"
            "print(json.dumps([results, [m for m in ('torch', 'huggingface_hub') if m in sys.modules]]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    results, imported = json.loads(run.stdout.splitlines()[-1])
    for (argv, says), (rc, err) in zip(BAD_INPUT, results):
        last = err.strip().splitlines()[-1]
        assert rc == 2 and says in last, (argv, err)
        assert len(err.strip().splitlines()) == 1 or "usage:" in err, (argv, err)  # argparse adds its usage
    assert imported == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.txt", "runs"]  # nothing written


def test_only_user_slash_name_with_no_such_folder_here_goes_to_the_hub(tmp_path, monkeypatch):
    """A path (./x, ../x, ~/x, /x, a/b/c, and runs/x beside a folder runs: a mistyped run folder)
    that is not there is "no checkpoint at ..."; only USER/NAME with no folder USER here is a repo."""
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **k: asked.append(repo) or str(tmp_path))
    for source in ["runs/missing", "./missing", "../missing", "~/vglaw-missing", "/vglaw/missing", "runs/x/best"]:
        with pytest.raises(MissingFileError, match=f"^no checkpoint at {source}"):
            resolve_checkpoint(source)
    assert asked == []
    assert resolve_checkpoint("someone/vglaw-model") == tmp_path and asked == ["someone/vglaw-model"]


def test_ctrl_c_during_predict_pairs_is_one_line_saying_what_was_kept(tmp_path):
    """A real SIGINT to the process group (as Ctrl-C in a terminal sends it, DataLoader workers
    included) once the first answers are on disk: exit status 130, one line naming how many
    result lines were kept and how to continue, no traceback."""
    with open(tmp_path / "pairs.jsonl", "w") as f:  # the bundled example images, enough pairs to interrupt
        for i in range(300):
            f.write(json.dumps({"id": i, "image": f"shapes_{i % 3}.jpg", "text": f"the shape number {i}"}) + "\n")
    out, part = tmp_path / "results.jsonl", tmp_path / "results.jsonl.parts" / "rank0.jsonl"
    run = subprocess.Popen([sys.executable, "-m", "vglaw", "predict", "--pairs", str(tmp_path / "pairs.jsonl"),
                            "--image-root", str(EXAMPLES), "--out", str(out), "--batch-size", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (part.is_file() and part.stat().st_size) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=120)
    kept = len(part.read_text().splitlines())
    assert run.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert [line for line in err.splitlines() if "interrupted" in line] == [err.splitlines()[-1]]
    assert err.splitlines()[-1] == (f"vglaw predict: interrupted: {kept} result lines kept for {out}; rerun the "
                                    "same command to continue")
    assert 0 < kept < 300


def test_result_json_never_holds_nan(tmp_path):
    """eval's results and a calibrator are written as strict JSON: a NaN is an error naming
    where it is, and no file is written."""
    from vglaw.commands.eval import write_results
    from vglaw.model.confidence import Calibrator

    with pytest.raises(ValueError, match=r"results\.val\.mIoU is not a finite number"):
        write_results({"val": {"samples": 3, "mIoU": float("nan")}}, tmp_path / "eval.json")
    calibrator = dataclasses.replace(Calibrator.load(DEMO_CHECKPOINT / "calibration.json"), metrics={"ece": float("inf")})
    with pytest.raises(ValueError, match=r"metrics\.ece is not a finite number"):
        calibrator.save(tmp_path / "calibration.json")
    assert list(tmp_path.iterdir()) == []
