"""Bad config values are one line (exit status 2) that names the key, the value and what is
allowed, before training reads, writes or builds anything; a bad model config in a checkpoint is
refused before any tensor is allocated; the loader never fails any other way."""
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vglaw
from conftest import write_run_config
from vglaw.cli import main
from vglaw.config import Config, check_run, config_to_dict, load_config
from vglaw.errors import InputError

DEMO = Path(vglaw.__file__).parent / "assets" / "demo"


@pytest.fixture
def run_config(tmp_path, synth_prepared) -> Path:
    """A tiny run that trains as it is (batch 2 of 4, 2 epochs); its run.out does not exist yet."""
    return write_run_config(tmp_path / "cfg.yaml", synth_prepared, tmp_path / "run")


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vglaw train: error: "), err
    assert "Traceback" not in err
    return lines[0]


BAD_VALUES = [  # (override, what the line must name)
    ("optim.batch_size=0", "'optim.batch_size' must be >= 1, got 0"),
    ("optim.effective_batch=0", "'optim.effective_batch' must be >= 1, got 0"),
    ("optim.batch_size=-8", "'optim.batch_size' must be >= 1, got -8"),
    ("optim.effective_batch=5", "'optim.effective_batch' must be a multiple of optim.batch_size 2 x 1"),
    ("data.num_workers=-1", "'data.num_workers' must be >= 0, got -1"),
    ("run.precision=fp8", "'run.precision' must be one of ['fp32', 'bf16', 'fp16'], got 'fp8'"),
    ("optim.lr=-1", "'optim.lr' must be > 0, got -1"),
    ("optim.lr=.nan", "'optim.lr' must be > 0, got nan"),
    ("run.epochs=0", "'run.epochs' must be >= 1, got 0"),
    ("run.epochs=-3", "'run.epochs' must be >= 1, got -3"),
    ("run.eval_every=0", "'run.eval_every' must be >= 1, got 0"),
    ("optim.drop_epochs=[-1]", "'optim.drop_epochs' must be >= 1 (each item), got [-1]"),
    ("optim.warmup_steps=-1", "'optim.warmup_steps' must be >= 0, got -1"),
    ("optim.drop_factor=2", "'optim.drop_factor' must be in (0, 1], got 2"),
    ("data.flip_prob=1.5", "'data.flip_prob' must be in [0, 1], got 1.5"),
    ("data.crop=middle", "'data.crop' must be one of ['canvas', 'random'], got 'middle'"),
    ("optim.optimizer=sgd", "'optim.optimizer' must be one of ['adam_weight_decay', 'adamw'], got 'sgd'"),
    ("model.name=vitx", "'model.name' must be one of ['tiny', 'vitb'], got 'vitx'"),
    ("model.overrides.depth=-1", "'model.overrides.depth' must be in [1, 128], got -1"),
    ("model.overrides.embed_dim=1e9", "'model.overrides.embed_dim' must be int, got 1000000000.0"),
    ("model.overrides.embed_dim=1000000000", "'model.overrides.embed_dim' must be in [1, 8192], got 1000000000"),
    ("model.overrides.num_heads=5", "'embed_dim' must be a multiple of num_heads 5, got 32"),
    ("data.eval_splits=[val,nosuch]", "has no split 'nosuch'; its splits: ['train', 'val']"),  # a split the prepared folder lacks
    ("data.train_split=trian", "'data.train_split': "),  # named before anything is written
]


@pytest.mark.parametrize("override,expected", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_key_value_and_range_and_nothing_is_written(run_config, override, expected,
                                                                                   capsys):
    before = sorted(run_config.parent.rglob("*"))
    assert main(["train", "--config", str(run_config), override]) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert sorted(run_config.parent.rglob("*")) == before  # no run folder, nothing else


def test_a_run_folder_that_cannot_be_made_is_one_line_before_anything_is_written(run_config, capsys, tmp_path):
    (tmp_path / "a_file").write_text("")
    outs = [tmp_path / "a_file", tmp_path / "a_file" / "run"]
    outs += [Path("/proc/nope")] if Path("/proc/self").is_dir() else []  # refused even to root
    for out in outs:
        before = sorted(tmp_path.rglob("*"))
        assert main(["train", "--config", str(run_config), f"run.out={out}"]) == 2
        assert f"'run.out': '{out}'" in one_error_line(capsys.readouterr().err)
        assert sorted(tmp_path.rglob("*")) == before


def test_a_config_built_in_python_is_checked_as_well(run_config):
    cfg = load_config(run_config)
    cfg.optim.lr = -1.0
    with pytest.raises(InputError, match=r"'optim.lr' must be > 0, got -1.0"):
        check_run(cfg)
    with pytest.raises(InputError, match=r"multiple of optim.batch_size 2 x 4 process\(es\), got 4"):
        check_run(load_config(run_config), world_size=4)
    check_run(load_config(run_config))  # the good config passes, and leaves nothing behind
    assert [p.name for p in run_config.parent.iterdir()] == ["cfg.yaml"]


def test_lr_drops_after_the_last_epoch_are_said_not_refused(run_config, caplog):
    # a recipe cut short for a smoke run (run.epochs=2 over drops at 10 and 13) still runs
    check_run(load_config(run_config, ["run.epochs=2", "optim.drop_epochs=[1, 10, 13]"]))
    assert "the lr never drops at [10, 13] in a run of 2 epoch(s)" in caplog.text


def test_a_yaml_tag_that_would_run_code_is_one_line_naming_the_file_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'run: !!python/object/apply:os.system ["touch {marker}"]\n')
    for args in (["--config", str(evil)],
                 ["--config", str(tmp_path / "ok.yaml"), f'run.out=!!python/object/apply:os.system ["touch {marker}"]']):
        (tmp_path / "ok.yaml").write_text("run: {epochs: 1}\n")
        done = subprocess.run([sys.executable, "-m", "vglaw", "train", *args], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2, done.stderr
        line = one_error_line(done.stderr)
        assert "python/object/apply:os.system" in line and (str(evil) in line or "override 'run.out=" in line)
        assert not marker.exists()


BAD_MODEL_CONFIGS = [  # (config.json change, what the line must name)
    ({"depth": -1}, "'depth' must be in [1, 128], got -1"),
    ({"embed_dim": 1e9}, "'embed_dim' must be int, got 1000000000.0"),
    ({"embed_dim": 10 ** 9}, "'embed_dim' must be in [1, 8192], got 1000000000"),
    ({"embed_dim": 130}, "'embed_dim' must be a multiple of num_heads 4, got 130"),
    ({"img_size": 100}, "'img_size' must be a multiple of patch_size 8, got 100"),
    ({"patch_size": 0}, "'patch_size' must be in [1, 4096], got 0"),
    ({"global_blocks": [1, 9]}, "'global_blocks' must be block indexes below depth 4, got [1, 9]"),
    ({"law_type": "lora"}, "'law_type' must be one of ['svd', 'la', 'od1', 'od2', 'od3', 'none'], got 'lora'"),
    ({"mask_threshold": 1.5}, "'mask_threshold' must be in [0, 1], got 1.5"),
    ({"text_config": {"hidden_size": 10 ** 9}}, "'text_config.hidden_size' must be in [1, 8192], got 1000000000"),
    ({"generator_heads": 7}, "'generator_heads' must divide text_config.hidden_size 384, got 7"),
]


def test_a_checkpoint_with_a_bad_model_config_is_one_line_before_any_tensor_is_allocated(tmp_path):
    folder = tmp_path / "ck"
    shutil.copytree(DEMO, folder)
    good = json.loads((folder / "config.json").read_text())
    for change, expected in BAD_MODEL_CONFIGS:
        config = {**good, **change}
        if "text_config" in change:
            config["text_config"] = {**good["text_config"], **change["text_config"]}
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(InputError) as e:
            vglaw.from_pretrained(folder)
        assert expected in str(e.value) and "\n" not in str(e.value), (change, str(e.value))


# what a person could type: the config's sections and some of their keys (few, so that two
# overrides often meet: `run=1 run.epochs=2`), and YAML's odd corners
KEYS = ["run", "optim", "model", "model.overrides", "model.overrides.depth", "run.epochs", "run.out", "optim.lr",
        "optim.drop_epochs", "data.eval_splits", "run.epochs.x", "", "optim..lr", "_base_", "x"]
VALUE_TEXT = st.one_of(
    st.sampled_from(["0", "-1", "1e9", "1e400", ".nan", "-.inf", "true", "null", "~", "[]", "[-1, 2]", "{}",
                     "{a: 1}", "{depth: 2}", "fp8", "''", "2001-01-01", "!!float x", "!!int 1.5", "!!timestamp x",
                     "!!python/object/apply:os.system [true]", "!!binary 'x'", "&a [*a]", "[", "'", ": :", "@"]),
    st.integers().map(str), st.floats().map(str), st.text(max_size=12))
YAML_TOKENS = st.sampled_from(
    ["run:", "optim:", "data:", "model:", "overrides:", "_base_:", " epochs:", " lr:", " batch_size:", " drop_epochs:",
     " precision:", " eval_splits:", " depth:", "\n", "\n  ", "  ", "- ", " ", "1", "-3", "0.5", "1e400", ".nan", "fp8",
     "[", "]", "{", "}", ",", ":", "? ", "&a ", "*a", "!!python/object/apply:os.system ", "!!float ", "!!set ",
     "!!str ", "'", '"', '"a\\nb"', '"\\0"', "#", "---", "...", "%YAML 1.1", "\t", "cfg.yaml", "/", "~", "null",
     "true", "model: {overrides: {depth: 2}}\n"])
YAML_TEXT = st.one_of(st.lists(YAML_TOKENS, max_size=30).map("".join), st.text(max_size=60))
OVERRIDES = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), VALUE_TEXT),
                               st.text(max_size=20)), max_size=4)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=YAML_TEXT, overrides=OVERRIDES)
def test_any_yaml_text_and_overrides_load_or_are_one_line_input_errors(text, overrides):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cfg.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        for args in ((path, overrides), (None, overrides), (path, None)):
            try:
                assert isinstance(load_config(*args), Config)
            except InputError as e:  # anything else fails the test
                assert str(e).strip() and "\n" not in str(e), repr(str(e))
