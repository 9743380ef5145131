"""``vglaw predict --pairs``: the pairs of a file, exactly as ``Grounder.predict`` answers them
one by one, through grouping, batching, resuming after a kill and sharding over processes."""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from vglaw.cli import main
from vglaw.data.masks import decode_rle
from vglaw.data.transforms import load_image
from vglaw.errors import InputError, UnreadableFileError
from vglaw.hub import DEMO_CHECKPOINT
from vglaw.inference.batch import PartWriter, coco_results, group, pack, parts_folder, predict_pairs, read_pairs
from vglaw.inference.predictor import Grounder
from vglaw.model.io import checkpoint_files

ROOT = Path(__file__).resolve().parents[1]
DEMO_FILES = checkpoint_files(DEMO_CHECKPOINT)  # what the demo grounder is loaded from
TEXTS = ["the leftmost shape", "the red circle", "the biggest square on the right", "the topmost triangle",
         "the small green shape", "the shape at the bottom"]


@pytest.fixture(scope="module")
def grounder():
    return Grounder.from_pretrained(DEMO_CHECKPOINT, device="cpu")


def shapes_image(path: Path, seed: int) -> None:
    """A small picture of coloured shapes (the demo model's world), of a random size."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(90, 260, 2))
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(150, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y, s = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 30)), int(rng.integers(15, 40))
        colour = [(220, 30, 30), (30, 160, 40), (40, 60, 220)][int(rng.integers(0, 3))]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + s, y + s], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def make_pairs(root: Path, images: int = 6, seed: int = 0) -> list[dict]:
    """Pairs over ``images`` images in a nested folder, 1 to 6 expressions each, images interleaved
    (as a real file lists them: not sorted by image)."""
    rng = np.random.default_rng(seed)
    names = [f"photos/set{k % 2}/img_{k}.png" for k in range(images)]
    for k, name in enumerate(names):
        shapes_image(root / name, seed * 100 + k)
    pairs = [{"image": name, "text": text} for k, name in enumerate(names) for text in TEXTS[:1 + k % 6]]
    order = rng.permutation(len(pairs))
    return [{"id": f"q{n}", **pairs[i]} for n, i in enumerate(order)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_equal_to_pair_by_pair(lines, pairs, root, grounder, masks=True):
    assert [line["id"] for line in lines] == [p["id"] for p in pairs]  # input order, each pair once
    for line, pair in zip(lines, pairs):
        want = grounder.predict(root / pair["image"], pair["text"])
        assert (line["image"], line["text"]) == (pair["image"], pair["text"])
        assert np.abs(np.subtract(line["box_xyxy"], want.box)).max() <= 1e-4, pair
        assert abs(line["score"] - want.score) <= 1e-4
        assert (line["width"], line["height"]) == want.mask.shape[::-1]
        if masks:
            assert np.array_equal(decode_rle(line["mask_rle"]).astype(bool), want.mask), pair


def test_the_batch_path_equals_grounder_predict_pair_by_pair(tmp_path, grounder):
    pairs = make_pairs(tmp_path)
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    # batch 5: the image with 6 expressions is split, small ones are packed together
    units = group(pairs, list(range(len(pairs))), 5)
    batches = [[units[k].image for k in batch] for batch in pack(units, 5)]
    assert any(len(set(images)) > 1 for images in batches) and len(units) > len({p["image"] for p in pairs})
    summary = predict_pairs(grounder, path, tmp_path / "out.jsonl", model_files=DEMO_FILES, masks=True, batch_size=5,
                            num_workers=1, coco=tmp_path / "coco.json")
    assert summary["done_now"] == len(pairs) and summary["errors"]["total"] == 0
    lines = lines_of(tmp_path / "out.jsonl")
    assert_equal_to_pair_by_pair(lines, pairs, tmp_path, grounder)
    assert not parts_folder(tmp_path / "out.jsonl").exists()
    coco = json.loads((tmp_path / "coco.json").read_text())
    # one entry per object the answer names: none for "not found", each of several boxes
    assert coco == coco_results(lines) and len(coco) == sum(0 if line["no_target"] else len(line["boxes"])
                                                             for line in lines)
    assert [c["image_id"] for c in coco] == [line["id"] for line in lines for _ in
                                             ([] if line["no_target"] else line["boxes"])]
    assert lines[0]["boxes"] == [lines[0]["box_xyxy"]]  # one object: the box head's box
    x0, y0, x1, y1 = lines[0]["box_xyxy"]
    assert coco[0]["image_id"] == "q0" and coco[0]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.01)
    assert coco[0]["segmentation"] == lines[0]["mask_rle"] and coco[0]["score"] == lines[0]["score"]


def test_jsonl_csv_and_parquet_give_the_same_pairs(tmp_path):
    rows = [{"id": "a", "image": "x.jpg", "text": "the dog"}, {"id": "b", "image": "y/z.png", "text": "a cat, left"}]
    write_jsonl(tmp_path / "p.jsonl", rows)
    with open(tmp_path / "p.csv", "w") as f:
        f.write('id,image,text\na,x.jpg,the dog\nb,y/z.png,"a cat, left"\n')
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    assert read_pairs(tmp_path / "p.jsonl") == read_pairs(tmp_path / "p.csv") == read_pairs(tmp_path / "p.parquet") == rows
    # without an id column, the row's index names the pair
    write_jsonl(tmp_path / "noid.jsonl", [{"image": "x.jpg", "text": "t"}] * 2)
    assert [p["id"] for p in read_pairs(tmp_path / "noid.jsonl")] == [0, 1]
    write_jsonl(tmp_path / "bad.jsonl", [{"image": "x.jpg", "expression": "t"}])
    with pytest.raises(InputError, match=r"bad.jsonl has no column 'text'.*expression"):
        read_pairs(tmp_path / "bad.jsonl")
    write_jsonl(tmp_path / "dup.jsonl", [{"id": 3, "image": "x.jpg", "text": "t"}] * 2)
    with pytest.raises(InputError, match="id 3 appears twice"):
        read_pairs(tmp_path / "dup.jsonl")


def test_bad_images_and_empty_expressions_get_error_lines_not_a_crash(tmp_path, grounder, capsys):
    pairs = make_pairs(tmp_path, images=2)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    pairs += [{"id": "broken", "image": "broken.jpg", "text": "the red circle"},
              {"id": "gone", "image": "nowhere.png", "text": "the red circle"},
              {"id": "empty", "image": pairs[0]["image"], "text": "   "}]
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    assert main(["predict", "--pairs", str(path), "--out", str(tmp_path / "out.jsonl"), "--num-workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "3 error lines (2 cannot read image, 1 empty expression)" in out
    lines = {line["id"]: line for line in lines_of(tmp_path / "out.jsonl")}
    assert "broken.jpg" in lines["broken"]["error"] and "nowhere.png" in lines["gone"]["error"]
    assert lines["empty"]["error"] == "empty expression"
    good = [p for p in pairs if p["id"] not in ("broken", "gone", "empty")]
    assert_equal_to_pair_by_pair([lines[p["id"]] for p in good], good, tmp_path, grounder, masks=False)
    assert "mask_rle" not in lines[good[0]["id"]]  # masks only with --masks
    # a rerun tries the error lines again: the missing image is there now
    shapes_image(tmp_path / "nowhere.png", 5)
    assert main(["predict", "--pairs", str(path), "--out", str(tmp_path / "out.jsonl"), "--num-workers", "0"]) == 0
    assert "3 done now" in capsys.readouterr().out
    lines = {line["id"]: line for line in lines_of(tmp_path / "out.jsonl")}
    assert "error" not in lines["gone"] and lines["empty"]["error"] == "empty expression"
    assert_equal_to_pair_by_pair([lines["gone"]], [pairs[-2]], tmp_path, grounder, masks=False)


def test_a_rerun_skips_what_is_written_and_drops_a_torn_line(tmp_path, grounder):
    pairs = make_pairs(tmp_path)
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    predict_pairs(grounder, path, tmp_path / "full.jsonl", model_files=DEMO_FILES, batch_size=4, num_workers=0)
    full = (tmp_path / "full.jsonl").read_text()
    # what a run killed mid-write leaves: some whole lines in its part, then half a line
    out = tmp_path / "resumed.jsonl"
    part = parts_folder(out) / "rank0.jsonl"
    part.parent.mkdir()
    written = full.splitlines(keepends=True)[:5]
    part.write_text("".join(written) + written[5 - 1][:17])
    summary = predict_pairs(grounder, path, out, model_files=DEMO_FILES, batch_size=4, num_workers=0)
    assert (summary["already_done"], summary["done_now"]) == (5, len(pairs) - 5)
    assert out.read_text() == full and not part.parent.exists()
    assert predict_pairs(grounder, path, out, model_files=DEMO_FILES, batch_size=4, num_workers=0)["done_now"] == 0
    assert out.read_text() == full
    write_jsonl(tmp_path / "other.jsonl", [{"id": "new", "image": pairs[0]["image"], "text": "x"}])
    with pytest.raises(InputError, match="holds results for .* pairs that .*other.jsonl does not have"):
        predict_pairs(grounder, tmp_path / "other.jsonl", out, model_files=DEMO_FILES)


def test_each_write_is_on_disk_before_the_next_pass(tmp_path):
    """What a kill after a pass finds: every line written so far, whole (read by another handle
    while the writer is still open)."""
    writer = PartWriter(tmp_path / "part.jsonl")
    writer.write([{"id": 1, "error": "x"}, {"id": 2, "error": "y"}])
    assert lines_of(tmp_path / "part.jsonl") == [{"id": 1, "error": "x"}, {"id": 2, "error": "y"}]
    writer.write([{"id": 3, "error": "z"}])
    assert len(lines_of(tmp_path / "part.jsonl")) == 3
    writer.close()


def test_kill_9_loses_at_most_the_batch_in_flight_and_a_rerun_completes_the_file(tmp_path, grounder):
    pairs = make_pairs(tmp_path, images=40)
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed run's processes: the answers are then the same to the last digit
    try:
        predict_pairs(grounder, path, tmp_path / "full.jsonl", model_files=DEMO_FILES, batch_size=1, num_workers=0)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "killed.jsonl"
    part = parts_folder(out) / "rank0.jsonl"
    command = [sys.executable, "-m", "vglaw", "predict", "--pairs", str(path), "--out", str(out), "--batch-size", "1",
               "--num-workers", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and run.poll() is None:
        if part.is_file() and part.read_text().count("\n") >= 3:
            run.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert run.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    kept = part.read_text().count("\n")
    assert 3 <= kept < len(pairs) and not out.exists()
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(pairs) - kept} done now" in rerun.stdout and f"{kept} already in" in rerun.stdout
    assert out.read_text() == (tmp_path / "full.jsonl").read_text()


def test_two_gloo_processes_each_take_a_share_and_rank_0_merges(tmp_path, grounder):
    pairs = make_pairs(tmp_path, images=7)
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "vglaw",
                          "predict", "--pairs", str(path), "--out", str(tmp_path / "out.jsonl"), "--masks",
                          "--batch-size", "4", "--num-workers", "1", "--device", "cpu"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    # every pair once: the processes' lines add up to the pairs, and the merge has each in order
    assert f"{len(pairs)} pairs: {len(pairs)} done now" in run.stdout
    assert_equal_to_pair_by_pair(lines_of(tmp_path / "out.jsonl"), pairs, tmp_path, grounder)
    assert not parts_folder(tmp_path / "out.jsonl").exists()


def test_the_readmes_pairs_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """`vglaw predict --pairs vglaw/assets/examples/pairs.jsonl --out results.jsonl`, from the checkout."""
    monkeypatch.chdir(ROOT)
    assert main(["predict", "--pairs", "vglaw/assets/examples/pairs.jsonl", "--out", str(tmp_path / "r.jsonl")]) == 0
    readme = (ROOT / "README.md").read_text()
    assert "vglaw predict --pairs vglaw/assets/examples/pairs.jsonl --out results.jsonl" in readme
    lines = lines_of(tmp_path / "r.jsonl")
    assert [line["id"] for line in lines] == ["a1", "a2", "b1"] and all("error" not in line for line in lines)
    assert "3 pairs: 3 done now" in capsys.readouterr().out



def one_colour_png(path: Path, side: int, rows_per_block: int = 500) -> Path:
    """A real ``side`` x ``side`` black 8-bit grayscale PNG, written without holding its pixels:
    one deflate block of ``rows_per_block`` rows (ending in a full flush, so every copy of it
    decodes alike) repeated; 0.4 MB at 20000 x 20000, in a fraction of a second."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = bytes((side + 1) * rows_per_block)  # each row: filter type 0, then its pixels
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(rows) + deflate.flush(zlib.Z_FULL_FLUSH)
    checksum = 1
    for _ in range(side // rows_per_block):
        checksum = zlib.adler32(rows, checksum)
    data = b"\x78\xda" + block * (side // rows_per_block) + deflate.flush() + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def test_an_image_too_large_to_decode_is_its_pairs_error_line_and_the_run_goes_on(tmp_path, grounder, capsys):
    """A 20000 x 20000 PNG is over PIL's decompression-bomb limit: decoded in a DataLoader
    worker it gets an error line, the other pairs their answers, and --image gets one line."""
    with Image.open(one_colour_png(tmp_path / "small.png", 1000)) as img:  # the writer makes real PNGs
        assert (img.size, img.mode) == ((1000, 1000), "L") and np.asarray(img).max() == 0
    huge = one_colour_png(tmp_path / "huge.png", 20000)
    pairs = make_pairs(tmp_path, images=2)
    pairs.insert(1, {"id": "huge", "image": "huge.png", "text": "the red circle"})
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--pairs", str(path), "--out", str(out), "--num-workers", "1"]) == 0
    assert "1 error lines (1 cannot read image)" in capsys.readouterr().out
    lines = {line["id"]: line for line in lines_of(out)}
    assert lines["huge"]["error"].startswith(f"cannot read image {tmp_path / 'huge.png'}: ")
    assert "decompression bomb" in lines["huge"]["error"]
    good = [p for p in pairs if p["id"] != "huge"]
    assert_equal_to_pair_by_pair([lines[p["id"]] for p in good], good, tmp_path, grounder, masks=False)
    assert main(["predict", "--image", str(huge), "--text", "the red circle", "--out", str(tmp_path / "h.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vglaw predict: error: cannot read image {huge}: ") and err.count("\n") == 1, err
    assert not (tmp_path / "h.png").exists()


def test_load_image_turns_whatever_decoding_raises_into_one_line_naming_the_file(tmp_path, monkeypatch):
    with pytest.raises(UnreadableFileError, match=r"^cannot read image .*huge.png: .*decompression bomb"):
        load_image(one_colour_png(tmp_path / "huge.png", 20000))
    shapes_image(tmp_path / "ok.png", 0)

    def plugin_bug(*args, **kwargs):  # an error type no one expects from a decoder
        raise ZeroDivisionError("division by zero\nin a plugin")

    monkeypatch.setattr(Image, "open", plugin_bug)
    with pytest.raises(UnreadableFileError, match=r"^cannot read image .*ok.png: division by zero in a plugin$"):
        load_image(tmp_path / "ok.png")


def test_a_rerun_redoes_each_pair_whose_image_text_model_or_settings_changed(tmp_path, grounder, capsys):
    pairs = make_pairs(tmp_path, images=2)  # 3 pairs: one on the first image, two on the second
    path, out = tmp_path / "pairs.jsonl", tmp_path / "out.jsonl"
    command = ["predict", "--pairs", str(path), "--out", str(out), "--num-workers", "0"]
    write_jsonl(path, pairs)
    assert main(command) == 0
    changed = next(i for i, p in enumerate(pairs) if p["text"] != "the shape at the bottom")
    pairs[changed]["text"] = "the shape at the bottom"
    write_jsonl(path, pairs)
    assert main(command) == 0
    assert "3 pairs: 1 done now (1 of them redone: their image, text, model or settings changed" in (
        capsys.readouterr().out)
    assert_equal_to_pair_by_pair(lines_of(out)[changed:changed + 1], pairs[changed:changed + 1], tmp_path, grounder,
                                 masks=False)

    def rerun(model=grounder, files=DEMO_FILES, **settings):
        summary = predict_pairs(model, path, out, model_files=files, num_workers=0, **settings)
        return summary["done_now"], summary["redone"]

    assert rerun() == (0, 0)
    image = "photos/set1/img_1.png"  # a new picture under the same name: its two pairs are done again
    shapes_image(tmp_path / image, 99)
    assert rerun() == (2, 2)
    on_it = [k for k, p in enumerate(pairs) if p["image"] == image]
    assert_equal_to_pair_by_pair([lines_of(out)[k] for k in on_it], [pairs[k] for k in on_it], tmp_path, grounder,
                                 masks=False)
    assert rerun(masks=True) == (3, 3) and all("mask_rle" in line for line in lines_of(out))
    # the model: a copy of the checkpoint is the same model; another calibrator is not
    copy = Path(shutil.copytree(DEMO_CHECKPOINT, tmp_path / "copy"))
    assert rerun(files=checkpoint_files(copy), masks=True) == (0, 0)
    calibration = json.loads((copy / "calibration.json").read_text())
    calibration["intercept"] += 1.0
    (copy / "calibration.json").write_text(json.dumps(calibration))
    recalibrated = Grounder.from_pretrained(copy, device="cpu")
    before = lines_of(out)[0]["score"]
    assert rerun(recalibrated, checkpoint_files(copy), masks=True) == (3, 3)
    after = lines_of(out)[0]["score"]
    assert after != before
    assert abs(after - recalibrated.predict(tmp_path / pairs[0]["image"], pairs[0]["text"]).score) <= 1e-4
    # lines that do not say what made them (an older vglaw's) are never kept
    write_jsonl(out, [{k: v for k, v in line.items() if k != "made_from"} for line in lines_of(out)])
    assert rerun(recalibrated, checkpoint_files(copy), masks=True) == (3, 3)


def test_an_output_that_is_an_input_is_refused_and_nothing_is_written(tmp_path, grounder, capsys):
    pairs = make_pairs(tmp_path, images=2)
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    before = path.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(path)
    for option, target in [("--out", path), ("--out", tmp_path / "link.jsonl"), ("--out", tmp_path / "." / path.name),
                           ("--coco-results", path)]:
        args = ["--out", str(tmp_path / "r.jsonl")] if option == "--coco-results" else []
        assert main(["predict", "--pairs", str(path), option, str(target), *args]) == 2
        err = capsys.readouterr().err
        assert f"error: {option} {target} is the input file {path}" in err and err.count("\n") == 1, err
        assert path.read_bytes() == before
    image = tmp_path / pairs[0]["image"]
    with pytest.raises(InputError, match=f"--out {image} is the input file .*{pairs[0]['image']}"):
        predict_pairs(grounder, path, image, model_files=DEMO_FILES)
    with pytest.raises(InputError, match="is the input file .*model.safetensors"):
        predict_pairs(grounder, path, DEMO_CHECKPOINT / "model.safetensors", model_files=DEMO_FILES)
    assert not (tmp_path / "r.jsonl").exists() and not parts_folder(tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("rows", [[{"id": 1, "image": "a.png", "text": "x"}, {"id": 1, "image": "a.png", "text": "y"}],
                                  [{"image": "a.png"}]], ids=["duplicate-id", "no-text-column"])
def test_a_bad_pairs_file_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys, rows):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the pairs file was read")

    monkeypatch.setattr(Grounder, "from_pretrained", no_model)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert main(["predict", "--pairs", str(pairs), "--out", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(pairs) in err[0] and not (tmp_path / "out.jsonl").exists()
