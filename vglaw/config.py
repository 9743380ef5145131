"""The run config: typed dataclasses, YAML files that are small diffs over the defaults, and
``key=value`` overrides from the command line.

Layering: dataclass defaults (the recipe of the authors' README command; their published code
runs it at a constant lr: ``optim.warmup_steps: 0``, ``optim.drop_epochs: []``) <- the ``_base_``
chain of YAML files <- the given YAML file <- CLI overrides such as ``optim.lr=2e-4``. Unknown keys and
values of the wrong type are rejected with the key named. The merged config is written into
the run folder and into every checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import InputError, InputTypeError, MissingFileError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; read it as a float, as people mean it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


PRECISIONS = ("fp32", "bf16", "fp16")  # every command's --precision choices
MASK_THRESHOLD = 0.35  # the authors' mask threshold: the default of VGLAWConfig.mask_threshold


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


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
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["val"])
    tokenizer: str | None = None  # a BERT directory; default: the text encoder's, else MiniLM's vocab
    num_workers: int = 2
    multiscale: bool = False  # longer side = img_size + scale_step * k, k in -4..4 (the authors' flag, off in their recipe)
    scale_step: int = 32
    crop: str = "canvas"  # canvas: trim to at most the canvas, keeping the box (the authors'); random: a random-size crop keeping the box
    crop_prob: float = 0.5
    flip_prob: float = 0.5
    translate: bool = True
    skip_bad_images: bool = False  # skip unreadable images (counted in the log) instead of stopping


@dataclass
class OptimSection:
    effective_batch: int = 256  # per-device batch x devices x accumulation steps
    batch_size: int = 8  # per device
    optimizer: str = "adam_weight_decay"  # adam_weight_decay (MindSpore's, the authors') | adamw (torch's)
    eps: float = 1e-6
    lr: float = 1e-4  # generator, S, D, heads
    lr_backbone: float = 1e-5
    lr_text: float = 1e-5
    weight_decay: float = 1e-4
    warmup_steps: int = 250  # optimizer steps of linear warmup from warmup_factor x lr (0: none, as the authors' code runs)
    warmup_epochs: float | None = None  # the warmup in epochs instead, when set
    warmup_factor: float = 0.01
    drop_epochs: list[int] = field(default_factory=lambda: [10])  # x drop_factor at each ([]: none, as the authors' code runs)
    drop_factor: float = 0.1
    clip_grad_norm: float = 0.15


@dataclass
class LossSection:
    l1: float = 1.0
    giou: float = 1.0
    focal: float = 1.0
    dice: float = 1.0


@dataclass
class RunSection:
    out: str = "runs/vglaw"
    epochs: int = 20
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_every: int = 0  # also save `last` every N optimizer steps (0: only per epoch)
    eval_every: int = 1  # epochs
    mask_threshold: float | None = None  # evaluation's; None: the model's (model.overrides.mask_threshold)
    compile: bool = False
    max_steps: int = 0  # stop after this many optimizer steps (0: no limit); for smoke runs


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


def build_dataclass(cls, values: dict, where: str = ""):
    """``cls(**values)`` for a config dataclass, nested ones included; unknown keys and values of
    the wrong type are rejected with the key named (``where`` prefixes the names)."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
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
        elif not type_matches(value, annotation):
            raise InputTypeError(f"config key '{where}{key}' must be {annotation}, got {value!r}")
        else:
            kwargs[key] = float(value) if annotation is float else value
    return cls(**kwargs)


def _merge(base: dict, diff: dict) -> dict:
    out = dict(base)
    for key, value in diff.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            and key != "overrides" else value
    if "overrides" in diff and isinstance(base.get("overrides"), dict):
        out["overrides"] = {**base["overrides"], **diff["overrides"]}
    return out


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    if path in seen:
        raise InputError(f"config {path} includes itself through _base_")
    if not path.is_file():
        raise MissingFileError(f"config file {path} not found")
    values = _yaml(path.read_text()) or {}
    if not isinstance(values, dict):
        raise InputError(f"config file {path} must hold a mapping")
    base = values.pop("_base_", None)
    if base is None:
        return values
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
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _yaml(raw)
    return out


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Defaults <- YAML file (with its _base_ chain) <- overrides."""
    values = _read_yaml(Path(path).resolve()) if path else {}
    if overrides:
        values = _merge(values, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    return build_dataclass(Config, values)


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)
