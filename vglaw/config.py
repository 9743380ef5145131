"""The run config: typed dataclasses, YAML files that are small diffs over the defaults, and
``key=value`` overrides from the command line.

Layering: dataclass defaults (the recipe of the authors' README command; their published code
runs it at a constant lr: ``optim.warmup_steps: 0``, ``optim.drop_epochs: []``) <- the ``_base_``
chain of YAML files <- the given YAML file <- CLI overrides such as ``optim.lr=2e-4``. Unknown keys,
values of the wrong type and values outside a field's range (declared with the field, see
:func:`setting`) are rejected in one line that names the key, the value and what is allowed;
:func:`check_run` adds the rules between fields and the run's folders before training builds
anything. The merged config is written into the run folder and into every checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import InputError, InputTypeError, MissingFileError

log = logging.getLogger(__name__)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; read it as a float, as people mean it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


PRECISIONS = ("fp32", "bf16", "fp16")  # every command's --precision choices
OPTIMIZERS = ("adam_weight_decay", "adamw")  # optim.optimizer (vglaw.engine.optim)
CROPS = ("canvas", "random")  # data.crop (vglaw.data.transforms.TrainAugment)
MASK_THRESHOLD = 0.35  # the authors' mask threshold: the default of VGLAWConfig.mask_threshold
MIN_EXISTS = 0.5  # an answer is "not found" where the existence output's probability is below this (--min-exists)
OWN_FORMATS = ("jsonl", "csv", "parquet", "own")  # `vglaw prepare --format`: your own annotations (own: by suffix)
DATA_FORMATS = ("refer", "grefcoco", "transvg", "seqtr", "hf-parquet", *OWN_FORMATS)
MAX_PIXELS = 40_000_000  # the default most pixels (width x height) of an image vglaw decodes: a 12 MP photo passes
MAX_SEED = 1_000_000  # the data seeds multiply run.seed into a 64-bit generator seed


def _yaml(text: str, source: str):
    """YAML ``text`` with the safe loader: plain data only, so a tag such as
    ``!!python/object/apply:os.system`` is refused, in one line that names ``source``."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        reason = " ".join(filter(None, (getattr(e, "context", None), getattr(e, "problem", None)))) or str(e)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    except Exception as e:  # noqa: BLE001 - PyYAML's constructors fail in their own ways (`!!float ''`: IndexError)
        reason, where = f"{type(e).__name__}: {e}", ""
    raise InputError(" ".join(f"{source} is not plain YAML data: {reason}{where}".split()))


def setting(default=dataclasses.MISSING, *, factory=dataclasses.MISSING, at_least=None, above=None,
            at_most=None, one_of=None, not_empty: bool = False):
    """A dataclass field with the values it allows, declared together: numbers ``>= at_least``,
    ``> above`` and ``<= at_most`` (and finite), a value of ``one_of``, a ``not_empty`` string or
    list. A list's rules hold for each item. :func:`build_dataclass` checks them."""
    rule = dict(at_least=at_least, above=above, at_most=at_most, one_of=one_of, not_empty=not_empty)
    return field(default=default, default_factory=factory,
                 metadata={"allowed": {k: v for k, v in rule.items() if v is not None and v is not False}})


def _allowed(rule: dict) -> str:
    """What ``rule`` allows, in words: "one of [...]", ">= 1", "in (0, 1]", "not empty"."""
    if "one_of" in rule:
        return f"one of {list(rule['one_of'])}"
    low = ("[", rule["at_least"]) if "at_least" in rule else ("(", rule["above"]) if "above" in rule else None
    if low and "at_most" in rule:
        return f"in {low[0]}{low[1]}, {rule['at_most']}]"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    return f"<= {rule['at_most']}" if "at_most" in rule else "not empty"


def _fits(value, rule: dict) -> bool:
    if "one_of" in rule:
        return value in rule["one_of"]
    if not isinstance(value, (int, float)):
        return True  # strings and lists: only not_empty applies
    return (math.isfinite(value) and value >= rule.get("at_least", -math.inf) and value > rule.get("above", -math.inf)
            and value <= rule.get("at_most", math.inf))


def check_allowed(key: str, value, rule: dict) -> None:
    """An InputError naming ``key``, ``value`` and what is allowed when ``value`` (each item of a
    list) breaks ``rule`` (see :func:`setting`); None passes (the field's "not set")."""
    if value is None or not rule:
        return
    if rule.get("not_empty") and not value:
        raise InputError(f"config key '{key}' must not be empty, got {value!r}")
    numeric = {k: v for k, v in rule.items() if k != "not_empty"}
    if numeric and not all(_fits(v, numeric) for v in (value if isinstance(value, (list, tuple)) else [value])):
        raise InputError(f"config key '{key}' must be {_allowed(numeric)}"
                         f"{' (each item)' if isinstance(value, (list, tuple)) else ''}, got {value!r}")


@dataclass
class ModelSection:
    name: str = "vitb"  # a variant of vglaw.model.VARIANTS
    overrides: dict = field(default_factory=dict)  # VGLAWConfig fields, e.g. {law_type: none}
    freeze_text: bool = False  # keep the text encoder fixed (eval mode, no gradients)
    cache_text: bool = False  # with freeze_text: encode each training expression once (kept in memory)
    backbone_weights: str | None = None  # detectron2 .pkl or MAE .pth of the ViT
    init_from: str | None = None  # a vglaw checkpoint directory to start from


@dataclass
class DataSection:
    prepared: str = ""  # folder written by `vglaw prepare`
    train_split: str = setting("train", not_empty=True)
    eval_splits: list[str] = setting(factory=lambda: ["val"])  # the last one selects `best`; [] none: no `best`
    tokenizer: str | None = None  # a BERT directory; default: the text encoder's, else MiniLM's vocab
    num_workers: int = setting(2, at_least=0)
    multiscale: bool = False  # longer side = img_size + scale_step * k, k in -4..4 (the authors' flag, off in their recipe)
    scale_step: int = setting(32, at_least=1)
    crop: str = setting("canvas", one_of=CROPS)  # canvas: trim to at most the canvas, keeping the box (the authors'); random: a random-size crop keeping the box
    crop_prob: float = setting(0.5, at_least=0, at_most=1)
    flip_prob: float = setting(0.5, at_least=0, at_most=1)
    translate: bool = True
    skip_bad_images: bool = False  # skip unreadable images (counted in the log) instead of stopping
    negatives: float = setting(0.0, at_least=0, at_most=1)  # share of training samples made no-target: the expression shown with another image (needs the existence output)


@dataclass
class OptimSection:
    effective_batch: int = setting(256, at_least=1)  # per-device batch x devices x accumulation steps
    batch_size: int = setting(8, at_least=1)  # per device
    optimizer: str = setting("adam_weight_decay", one_of=OPTIMIZERS)  # adam_weight_decay (MindSpore's, the authors') | adamw (torch's)
    eps: float = setting(1e-6, above=0)
    lr: float = setting(1e-4, above=0)  # generator, S, D, heads
    lr_backbone: float = setting(1e-5, at_least=0)  # 0 keeps the part fixed
    lr_text: float = setting(1e-5, at_least=0)
    weight_decay: float = setting(1e-4, at_least=0)
    warmup_steps: int = setting(250, at_least=0)  # optimizer steps of linear warmup from warmup_factor x lr (0: none, as the authors' code runs)
    warmup_epochs: float | None = setting(None, at_least=0)  # the warmup in epochs instead, when set
    warmup_factor: float = setting(0.01, at_least=0, at_most=1)
    drop_epochs: list[int] = setting(factory=lambda: [10], at_least=1)  # x drop_factor at each ([]: none, as the authors' code runs)
    drop_factor: float = setting(0.1, above=0, at_most=1)
    clip_grad_norm: float = setting(0.15, above=0)


@dataclass
class LossSection:
    l1: float = setting(1.0, at_least=0)
    giou: float = setting(1.0, at_least=0)
    focal: float = setting(1.0, at_least=0)
    dice: float = setting(1.0, at_least=0)
    exists: float = setting(1.0, at_least=0)  # the existence output's BCE (models with model.overrides.existence only)


@dataclass
class RunSection:
    out: str = setting("runs/vglaw", not_empty=True)
    epochs: int = setting(20, at_least=1)
    seed: int = setting(0, at_least=0, at_most=MAX_SEED)
    precision: str = setting("fp32", one_of=PRECISIONS)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (checked by vglaw.device.resolve_device)
    checkpoint_every: int = setting(0, at_least=0)  # also save `last` every N optimizer steps (0: only per epoch)
    eval_every: int = setting(1, at_least=1)  # epochs
    mask_threshold: float | None = setting(None, at_least=0, at_most=1)  # evaluation's; None: the model's (model.overrides.mask_threshold)
    compile: bool = False
    max_steps: int = setting(0, at_least=0)  # stop after this many optimizer steps (0: no limit); for smoke runs


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    run: RunSection = field(default_factory=RunSection)


def type_matches(value, annotation) -> bool:
    """Whether ``value`` fits a config annotation (int, float, str, bool, lists, tuples of ints, dicts,
    unions with None)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(type_matches(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (inner,) = typing.get_args(annotation)
        return isinstance(value, list) and all(type_matches(v, inner) for v in value)
    if origin is tuple:
        return isinstance(value, (tuple, list)) and all(type_matches(v, int) for v in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or annotation)


def _type_name(annotation) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int too large for a float: outside any range
        return math.inf


def build_dataclass(cls, values: dict, where: str = ""):
    """``cls(**values)`` for a config dataclass, nested ones included; unknown keys, values of the
    wrong type and values outside a field's :func:`setting` are rejected with the key named
    (``where`` prefixes the names)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(hints), key=str)
    if unknown:
        raise InputError(f"unknown config key(s) {[f'{where}{k}' for k in unknown]}; "
                         f"known in {where.rstrip('.') or cls.__name__}: {sorted(hints)}")
    kwargs = {}
    for key, value in values.items():
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise InputTypeError(f"config key '{where}{key}' must be a mapping, got {value!r}")
            kwargs[key] = build_dataclass(annotation, value, f"{where}{key}.")
            continue
        if annotation is float and type_matches(value, float):
            value = _as_float(value)
        if not type_matches(value, annotation):
            raise InputTypeError(f"config key '{where}{key}' must be {_type_name(annotation)}, got {value!r}")
        check_allowed(f"{where}{key}", value, fields[key].metadata.get("allowed", {}))
        kwargs[key] = value
    return cls(**kwargs)


def _merge(base: dict, diff: dict) -> dict:
    out = dict(base)
    for key, value in diff.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            and key != "overrides" else value
    if isinstance(diff.get("overrides"), dict) and isinstance(base.get("overrides"), dict):
        out["overrides"] = {**base["overrides"], **diff["overrides"]}
    return out


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    if path in seen:
        raise InputError(f"config {path} includes itself through _base_")
    try:
        found = path.is_file()
        text = path.read_text(encoding="utf-8") if found else ""
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"config file {path} cannot be read as UTF-8 text: {e}") from None
    if not found:
        raise MissingFileError(f"config file {path} not found")
    values = _yaml(text, f"config file {path}") or {}
    if not isinstance(values, dict):
        raise InputError(f"config file {path} must hold a mapping")
    base = values.pop("_base_", None)
    if base is None:
        return values
    if not isinstance(base, str) or not base.strip() or not base.isprintable():
        raise InputError(f"config file {path}: _base_ must be the path of another config file, got {base!r}")
    return _merge(_read_yaml((path.parent / base).resolve(), seen + (path,)), values)


def parse_overrides(items: list[str]) -> dict:
    """["optim.lr=2e-4", "data.eval_splits=[val,testA]"] -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"override {item!r}: {'.'.join(parts[:i + 1])!r} is set to a value by another override")
        node[parts[-1]] = _yaml(raw, f"override {item!r}")
    return out


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Defaults <- YAML file (with its _base_ chain) <- overrides; every field checked (type and range)."""
    values = _read_yaml(Path(path).resolve()) if path else {}
    if overrides:
        values = _merge(values, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    return build_dataclass(Config, values)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_run(cfg: Config, world_size: int | None = None) -> None:
    """Everything a training run can check before it reads, writes or builds anything: every field
    again (however ``cfg`` was made), the rules between fields, the batch split over ``world_size``
    processes (default: torchrun's ``WORLD_SIZE``, else 1) and the run's folders. The model section
    is checked by ``vglaw.model.check_model_section``. Raises InputError in one line."""
    build_dataclass(Config, config_to_dict(cfg))
    optim, run = cfg.optim, cfg.run
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if optim.effective_batch % (optim.batch_size * world_size):
        raise InputError(f"config key 'optim.effective_batch' must be a multiple of optim.batch_size "
                         f"{optim.batch_size} x {world_size} process(es), got {optim.effective_batch}")
    late = [d for d in optim.drop_epochs if d >= run.epochs]
    if late:  # a recipe cut short (run.epochs=2 for a smoke run) keeps its drops: said, not refused
        log.warning("optim.drop_epochs %s: the lr never drops at %s in a run of %d epoch(s)",
                    optim.drop_epochs, late, run.epochs)
    if not cfg.data.prepared or not Path(cfg.data.prepared).is_dir():
        raise MissingFileError(f"config key 'data.prepared': {cfg.data.prepared!r} is not a folder "
                               f"(give the folder written by vglaw prepare)")
    prepared = Path(cfg.data.prepared)
    if not (prepared / "meta.json").is_file():
        raise MissingFileError(f"config key 'data.prepared': {prepared} holds no meta.json (give the folder "
                               f"written by vglaw prepare)")
    have = sorted(f.stem for f in prepared.glob("*.jsonl"))
    for key, split in [("data.train_split", cfg.data.train_split)] + [("data.eval_splits", s) for s in cfg.data.eval_splits]:
        if split not in have:
            raise MissingFileError(f"config key '{key}': {prepared} has no split {split!r}; its splits: {have}")
    if cfg.data.negatives > 0 and not cfg.model.overrides.get("existence"):
        raise InputError(f"config key 'data.negatives' ({cfg.data.negatives}) trains the existence output: set "
                         "model.overrides.existence: true (with model.init_from too)")
    if cfg.model.backbone_weights and not Path(cfg.model.backbone_weights).is_file():
        raise MissingFileError(f"config key 'model.backbone_weights': {cfg.model.backbone_weights} not found")
    _check_writable(Path(run.out))


def _check_writable(out: Path) -> None:
    """``run.out`` is a folder, or can be made in its nearest existing parent: tried with an empty
    folder made and removed there at once (the permission bits do not say it for root)."""
    key = f"config key 'run.out': {str(out)!r}"
    if out.exists() and not out.is_dir():
        raise InputError(f"{key} is a file, not a folder")
    parent = _nearest_existing(out.absolute())
    if not parent.is_dir():
        raise InputError(f"{key} cannot be made: {parent} is not a folder")
    try:
        tempfile.TemporaryDirectory(dir=parent, prefix=".vglaw-write-check-").cleanup()
    except OSError as e:
        raise InputError(f"{key} cannot be written: {parent}: {e.strerror or e}") from None


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)
