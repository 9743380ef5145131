"""``vglaw predict --pairs``: the pairs of a file, exactly as ``Grounder.predict`` answers them
one by one, through grouping, batching, resuming after a kill and sharding over processes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vglaw.cli import main
from vglaw.data.masks import decode_rle
from vglaw.errors import InputError
from vglaw.hub import DEMO_CHECKPOINT
from vglaw.inference.batch import PartWriter, coco_results, group, pack, parts_folder, predict_pairs, read_pairs
from vglaw.inference.predictor import Grounder

ROOT = Path(__file__).resolve().parents[1]
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
    summary = predict_pairs(grounder, path, tmp_path / "out.jsonl", masks=True, batch_size=5, num_workers=1,
                            coco=tmp_path / "coco.json")
    assert summary["done_now"] == len(pairs) and summary["errors"]["total"] == 0
    lines = lines_of(tmp_path / "out.jsonl")
    assert_equal_to_pair_by_pair(lines, pairs, tmp_path, grounder)
    assert not parts_folder(tmp_path / "out.jsonl").exists()
    coco = json.loads((tmp_path / "coco.json").read_text())
    assert coco == coco_results(lines) and len(coco) == len(pairs)
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
    predict_pairs(grounder, path, tmp_path / "full.jsonl", batch_size=4, num_workers=0)
    full = (tmp_path / "full.jsonl").read_text()
    # what a run killed mid-write leaves: some whole lines in its part, then half a line
    out = tmp_path / "resumed.jsonl"
    part = parts_folder(out) / "rank0.jsonl"
    part.parent.mkdir()
    written = full.splitlines(keepends=True)[:5]
    part.write_text("".join(written) + written[5 - 1][:17])
    summary = predict_pairs(grounder, path, out, batch_size=4, num_workers=0)
    assert (summary["already_done"], summary["done_now"]) == (5, len(pairs) - 5)
    assert out.read_text() == full and not part.parent.exists()
    assert predict_pairs(grounder, path, out, batch_size=4, num_workers=0)["done_now"] == 0
    assert out.read_text() == full
    write_jsonl(tmp_path / "other.jsonl", [{"id": "new", "image": pairs[0]["image"], "text": "x"}])
    with pytest.raises(InputError, match="holds results for .* pairs that .*other.jsonl does not have"):
        predict_pairs(grounder, tmp_path / "other.jsonl", out)


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
    predict_pairs(grounder, path, tmp_path / "full.jsonl", batch_size=1, num_workers=0)
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
