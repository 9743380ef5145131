"""``vglaw train``: build everything from the config, then loop over epochs.

Launch on one process (CPU or one GPU) or with ``torchrun --nproc_per_node N -m vglaw train``.
The run folder gets ``config.yaml``, ``log.jsonl`` (one line per epoch), ``train.log``,
TensorBoard events under ``tb/``, ``checkpoints/last.pt`` and ``best.pt`` (full training
state) and ``best/`` (the best model as a vglaw checkpoint directory, for predict/eval; the
best ones only when ``data.eval_splits`` names a split to choose them on).
"""
from __future__ import annotations

import json
from dataclasses import asdict
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from .. import distributed as dist
from ..config import Config, check_run, config_to_dict
from ..data import GroundingDataset, TrainAugment, collate, load_tokenizer
from ..errors import InputError, MissingFileError
from ..fileio import json_text
from ..model import VGLAW, build_model
from ..model.build import check_model_section
from ..model.confidence import Calibrator
from ..weights.vit import load_detectron2_vit, load_mae_vit
from .calibrate import fit_calibrator
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .loop import TrainState, eval_loader, evaluate, train_one_epoch
from .optim import build_optimizer, build_scheduler
from .samplers import GlobalBatchSampler
from .text_cache import FrozenTextCache

log = logging.getLogger("vglaw.train")


def build_train_model(cfg: Config):
    if cfg.model.cache_text and not cfg.model.freeze_text:
        raise InputError("model.cache_text needs model.freeze_text: a text encoder that trains changes its "
                         "output at every step, so there is nothing to keep")
    if cfg.model.init_from:  # its architecture; model.overrides.existence: true adds the existence output
        model = VGLAW.from_pretrained(cfg.model.init_from, **({"existence": True} if cfg.model.overrides.get(
            "existence") else {}))
    else:
        model = build_model(cfg.model.name, **cfg.model.overrides)
    weights = cfg.model.backbone_weights
    if weights:
        loader = load_detectron2_vit if weights.endswith(".pkl") else load_mae_vit
        log.info("%s", loader(model.backbone, weights))
    if cfg.model.freeze_text:
        model.text_encoder.requires_grad_(False)
        model.freeze_text = True
    return model


def _setup_logging(out: Path) -> logging.Handler | None:
    """``train.log`` (rank 0): the handler, to remove when the run ends."""
    if dist.is_main():
        handler = logging.FileHandler(out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logging.getLogger("vglaw").addHandler(handler)
        return handler
    logging.getLogger("vglaw").setLevel(logging.WARNING)
    return None


def checkpoint_paths(out: Path) -> tuple[Path, Path]:
    """A run folder's ``last.pt`` (to resume) and ``best.pt``."""
    return out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"


def _read_resume_state(out: Path, resume: bool) -> dict | None:
    """With ``resume``, the checkpoint to continue from; without it, None, and a folder that
    already holds a run is refused. Under ``torchrun --max-restarts N ... --resume`` the first
    attempt finds no checkpoint yet and starts the run."""
    last = checkpoint_paths(out)[0]
    if resume and last.is_file():
        return load_checkpoint(last)
    if resume and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        log.info("--resume: no checkpoint at %s yet, starting the run (torchrun restarts will resume it)", last)
        return None
    if resume:
        raise MissingFileError(f"--resume: {out} holds no run to continue ({last} is missing); drop --resume to "
                               "start one there")
    if last.exists():
        raise InputError(f"{out} already holds a run ({last}): add --resume to continue it, or give another "
                         "run.out to start a new one")
    return None


def _start_run_folder(cfg: Config, out: Path) -> logging.Handler | None:
    """The run folder with the merged config and ``train.log`` (its handler); seeds per process."""
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    dist.barrier()
    handler = _setup_logging(out)
    torch.manual_seed(cfg.run.seed + dist.rank())
    random.seed(cfg.run.seed + dist.rank())
    np.random.seed(cfg.run.seed + dist.rank())
    return handler


def _datasets(cfg: Config, model) -> tuple[GroundingDataset, dict[str, GroundingDataset]]:
    """The augmented training split and the evaluation splits."""
    tokenizer = load_tokenizer(cfg.data.tokenizer or model.spec.tokenizer)
    img_size, max_len = model.config.img_size, model.config.max_len
    augment = TrainAugment(img_size, multiscale=cfg.data.multiscale, scale_step=cfg.data.scale_step,
                           crop=cfg.data.crop, crop_prob=cfg.data.crop_prob, flip_prob=cfg.data.flip_prob,
                           translate=cfg.data.translate)
    train_ds = GroundingDataset(cfg.data.prepared, cfg.data.train_split, tokenizer=tokenizer, img_size=img_size,
                                max_len=max_len, train=True, augment=augment, seed=cfg.run.seed,
                                skip_bad=cfg.data.skip_bad_images, negatives=cfg.data.negatives,
                                existence=model.has_existence)
    eval_sets = {s: GroundingDataset(cfg.data.prepared, s, tokenizer=tokenizer, img_size=img_size, max_len=max_len)
                 for s in cfg.data.eval_splits}
    return train_ds, eval_sets


class TrainRun:
    """One run's model, data, optimizer and progress, with its checkpoints and log.

    Its progress is one :class:`TrainState` (epoch, step in the epoch, global step, best score):
    every checkpoint saves it, and :meth:`restore` continues exactly where it stopped."""

    def __init__(self, cfg: Config, device: torch.device, out: Path) -> None:
        self.cfg, self.device, self.out = cfg, device, out
        self.last_path, self.best_path = checkpoint_paths(out)
        self.core = build_train_model(cfg).to(device)
        self.train_ds, self.eval_sets = _datasets(cfg, self.core)
        if not self.eval_sets:
            log.warning("data.eval_splits is empty: no split is evaluated, so no best/ checkpoint and no confidence "
                        "calibrator will be made (checkpoints/last.pt holds the run)")
        self.sampler = GlobalBatchSampler(len(self.train_ds), effective_batch=cfg.optim.effective_batch,
                                          batch_size=cfg.optim.batch_size, rank=dist.rank(),
                                          world_size=dist.world_size(), seed=cfg.run.seed, with_epoch=True)
        log.info("effective batch %d = %d per device x %d process(es) x %d accumulation step(s); %d steps/epoch",
                 cfg.optim.effective_batch, cfg.optim.batch_size, dist.world_size(), self.sampler.accum_steps,
                 self.sampler.steps_per_epoch)
        self.optimizer = build_optimizer(self.core, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.sampler.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.run.precision == "fp16")
        self.state = TrainState()
        self.text_cache = FrozenTextCache(self.core.text_encoder) if cfg.model.cache_text else None
        self.model = self.core  # what the loop runs: compiled and / or DDP-wrapped below
        # uint8 canvases, pinned for the copy to the GPU; workers live for the whole run. The loader
        # draws its seeds from a generator of its own: from torch's global one (which stochastic
        # depth uses) it would draw when its first iterator starts, in a resumed run at another
        # point of that RNG than in the uninterrupted one. (The samples' randomness does not
        # depend on these seeds: see GroundingDataset.)
        workers = cfg.data.num_workers
        self.loader = DataLoader(self.train_ds, batch_sampler=self.sampler, collate_fn=collate, num_workers=workers,
                                 pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                 prefetch_factor=4 if workers > 0 else None,
                                 generator=torch.Generator().manual_seed(cfg.run.seed))
        self.writer = None

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint of this run; log lines of epochs to redo are dropped."""
        self.core.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.state = TrainState(**{name: state[name] for name in TrainState.__dataclass_fields__ if name in state})
        set_rng_state(state["rng"][min(dist.rank(), len(state["rng"]) - 1)])
        log.info("resumed from %s at epoch %d, step %d of the epoch (optimizer step %d)", self.last_path,
                 self.state.epoch, self.state.step_in_epoch, self.state.global_step)
        log_path = self.out / "log.jsonl"
        if dist.is_main() and log_path.exists():
            kept = [line for line in log_path.read_text().splitlines()
                    if json.loads(line)["epoch"] < self.state.epoch]
            log_path.write_text("".join(line + "\n" for line in kept))

    def fill_text_cache(self) -> None:
        """With ``model.cache_text``, encode every expression the training split can show, once,
        in its order: a run and the same run resumed then train on the same bits."""
        if self.text_cache is None:
            return
        started = time.time()
        tokens = self.train_ds.tokenize(self.train_ds.expressions())
        n = self.text_cache.fill(tokens["input_ids"], tokens["attention_mask"], self.device)
        log.info("text cache: %d expressions encoded in %.0f s", n, time.time() - started)

    def wrap(self) -> None:
        """torch.compile and DDP around the model, and the TensorBoard writer (rank 0)."""
        if self.cfg.run.compile:
            self.model = torch.compile(self.model)
        if dist.world_size() > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if dist.is_main():
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out / "tb"))

    def checkpoint(self, path: Path) -> None:
        """Everything to continue exactly: weights, optimizer, schedule, scaler, RNGs, progress."""
        rngs = dist.gather_object(rng_state())
        if dist.is_main():
            save_checkpoint(path, {
                "model": self.core.state_dict(), "model_config": self.core.config_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), **asdict(self.state), "rng": rngs,
                "config": config_to_dict(self.cfg)})
        dist.barrier()

    def _on_step(self) -> None:
        every = self.cfg.run.checkpoint_every
        if every and self.state.global_step % every == 0:
            self.checkpoint(self.last_path)

    def train_epoch(self) -> tuple[dict, bool]:
        """The rest of epoch ``state.epoch``: (mean losses, whether max_steps stopped it). The
        state moves to the next epoch when this one is complete."""
        cfg, state = self.cfg, self.state
        self.sampler.set_epoch(state.epoch, state.step_in_epoch)
        self.train_ds.set_epoch(state.epoch)
        losses = train_one_epoch(
            self.model, self.loader, self.optimizer, self.scheduler, self.scaler, state=state,
            accum_steps=self.sampler.accum_steps, device=self.device, precision=cfg.run.precision,
            loss_weights=cfg.loss, clip_grad_norm=cfg.optim.clip_grad_norm, max_steps=cfg.run.max_steps,
            on_step=self._on_step, writer=self.writer, text_cache=self.text_cache)
        stopped = bool(cfg.run.max_steps and state.global_step >= cfg.run.max_steps)
        if state.step_in_epoch >= self.sampler.steps_per_epoch:  # complete, unless max_steps cut it short
            state.next_epoch()
        return losses, stopped

    def evaluate(self) -> tuple[dict, dict]:
        """Metrics per evaluation split, and the per-sample results (see :func:`evaluate`) of
        the last split: the one that selects the best checkpoint (None without evaluation splits)."""
        if not self.eval_sets:
            return {}, None
        results = {split: evaluate(self.core, eval_loader(ds, self.cfg.optim.batch_size, self.cfg.data.num_workers),
                                   ds, device=self.device, precision=self.cfg.run.precision,
                                   mask_threshold=self.cfg.run.mask_threshold, desc=f"eval {split}", with_samples=True)
                   for split, ds in self.eval_sets.items()}
        return {split: metrics for split, (metrics, _) in results.items()}, results[self.cfg.data.eval_splits[-1]][1]

    def calibrator(self, samples: dict, epoch: int) -> Calibrator | None:
        """The confidence calibrator of this epoch's model, fitted on the selecting split's samples
        (None, with a warning, when that split's answers are all right or all wrong)."""
        split = self.cfg.data.eval_splits[-1]
        try:
            return fit_calibrator(samples["features"], samples["box_iou"], fitted_on={
                "checkpoint": str(self.out / "best"), "data": str(self.cfg.data.prepared), "split": split,
                "epoch": epoch})
        except ValueError as e:
            log.warning("no confidence calibrator for this checkpoint: %s", e)
            return None

    def training_record(self, epoch: int, metrics: dict) -> dict:
        """What ``best/`` records about this run (its ``training.json`` and model card)."""
        meta = self.train_ds.meta
        splits = {self.cfg.data.train_split: len(self.train_ds), **{s: len(ds) for s, ds in self.eval_sets.items()}}
        return {"dataset": meta.get("dataset"), "format": meta.get("format"), "split_by": meta.get("split_by"),
                "prepared": str(self.cfg.data.prepared), "splits": splits, "epoch": epoch,
                "epochs": self.cfg.run.epochs, "metrics": metrics,
                "command": f"vglaw train --config {self.out / 'config.yaml'}  # the run's merged config"}

    def log_epoch(self, epoch: int, losses: dict, metrics: dict, seconds: float) -> None:
        """One line of ``log.jsonl``, TensorBoard scalars and a console line (rank 0)."""
        if not dist.is_main():
            return
        train = {k: v for k, v in losses.items() if k != "lr"}
        record = {"epoch": epoch, "global_step": self.state.global_step, "lr": losses["lr"], "train": train,
                  "eval": metrics, "best": self.state.best, "seconds": round(seconds, 1)}
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json_text(record) + "\n")
        for split, values in metrics.items():
            for key, value in values.items():
                if isinstance(value, (int, float)):  # the gres / grec summaries repeat their scalars at the top
                    self.writer.add_scalar(f"{split}/{key}", value, self.state.global_step)
        log.info("epoch %d: loss %.4f%s", epoch, losses.get("loss", float("nan")),
                 "".join(f" {s}: " + " ".join(f"{k} {m[k]:.4f}" for k in ("prec@0.5", "mIoU", "gIoU", "N-acc")
                                               if m.get(k) is not None) for s, m in metrics.items()))


def selection_score(metrics: dict) -> float:
    """What picks the best checkpoint on the selecting split: REC Prec@0.5, or on a split with
    no-target and multi-target expressions GRES gIoU / 100."""
    return metrics["gIoU"] / 100 if metrics.get("gIoU") is not None else metrics["prec@0.5"]


def train(cfg: Config, resume: bool = False) -> dict:
    """Train (or with ``resume`` continue) the run in ``cfg.run.out``; returns the last metrics.

    ``resume`` continues from ``checkpoints/last.pt`` exactly where it was saved: the resumed
    run logs the same epoch lines and ends with the same weights, bit for bit, as one never
    interrupted (on the same machine and number of threads). Without a checkpoint there it is
    an error, except under ``torchrun --max-restarts N ... --resume``, whose first attempt
    starts the run (so that a restart recovers from a lost worker). Without ``resume`` a folder
    that already holds a run (``checkpoints/last.pt``) is refused."""
    check_run(cfg)  # every value, in one line, before anything is read, written or built
    check_model_section(cfg.model)
    device = dist.init(cfg.run.device)
    out = Path(cfg.run.out)
    state = _read_resume_state(out, resume)
    log_file = _start_run_folder(cfg, out)
    try:
        run = TrainRun(cfg, device, out)
        if state is not None:
            run.restore(state)
        run.fill_text_cache()
        run.wrap()
        return _train_epochs(run)
    finally:  # this run's train.log ends here (another run in this process writes its own)
        if log_file is not None:
            logging.getLogger("vglaw").removeHandler(log_file)
            log_file.close()


def _train_epochs(run: TrainRun) -> dict:
    """The run's remaining epochs; returns the last metrics. At the end of an epoch its log line
    is written first, then ``best`` (when it improved), then ``last``: a run stopped anywhere in
    between redoes that epoch's end when resumed, and rewrites them."""
    cfg, out, metrics = run.cfg, run.out, {}
    if run.state.epoch >= cfg.run.epochs:
        log.warning("nothing left to train: %s is at epoch %d of run.epochs=%d (raise run.epochs to train on)",
                    run.last_path, run.state.epoch, cfg.run.epochs)
    while run.state.epoch < cfg.run.epochs:
        epoch, started = run.state.epoch, time.time()
        losses, stopped = run.train_epoch()  # moves the state to the next epoch when this one is complete
        last_epoch = epoch + 1 == cfg.run.epochs
        evaluated = (epoch + 1) % cfg.run.eval_every == 0 or last_epoch or stopped
        metrics, samples = run.evaluate() if evaluated else ({}, None)
        score = selection_score(metrics[cfg.data.eval_splits[-1]]) if metrics else -1.0
        improved, run.state.best = score > run.state.best, max(run.state.best, score)
        run.log_epoch(epoch, losses, metrics, time.time() - started)
        if improved:
            run.checkpoint(run.best_path)
            if dist.is_main():  # best/ with its calibrator, fitted on the split that chose it
                run.core.calibrator = run.calibrator(samples, epoch)
                run.core.save_pretrained(out / "best", training=run.training_record(epoch, metrics))
        run.checkpoint(run.last_path)
        if stopped:
            break
    if run.writer is not None:
        run.writer.close()
    if dist.is_main():
        best = f"{out / 'best'} (the best epoch's model, for predict and eval); " if (out / "best").is_dir() else ""
        log.info("done: %s%s (the run, to resume)", best, run.last_path)
    return metrics
