"""``vglaw train``: build everything from the config, then loop over epochs.

Launch on one process (CPU or one GPU) or with ``torchrun --nproc_per_node N -m vglaw train``.
The run folder gets ``config.yaml``, ``log.jsonl`` (one line per epoch), ``train.log``,
TensorBoard events under ``tb/``, ``checkpoints/last.pt`` and ``best.pt`` (full training
state) and ``best/`` (the best model as a vglaw checkpoint directory, for predict/eval).
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from .. import distributed as dist
from ..config import Config, config_to_dict
from ..data import GroundingDataset, TrainAugment, collate, load_tokenizer
from ..model import build_model
from ..weights.vit import load_detectron2_vit, load_mae_vit
from .checkpoint import load_checkpoint, load_model, rng_state, save_checkpoint, set_rng_state
from .loop import evaluate, train_one_epoch
from .optim import build_optimizer, build_scheduler
from .samplers import GlobalBatchSampler, ShardSampler
from .text_cache import FrozenTextCache

log = logging.getLogger("vglaw.train")


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build_train_model(cfg: Config):
    if cfg.model.cache_text and not cfg.model.freeze_text:
        raise ValueError("model.cache_text needs model.freeze_text: a text encoder that trains changes its "
                         "output at every step, so there is nothing to keep")
    if cfg.model.init_from:
        model = load_model(cfg.model.init_from)
    else:
        model = build_model(cfg.model.name, **cfg.model.overrides)
    weights = cfg.model.backbone_weights
    if weights:
        loader = load_detectron2_vit if weights.endswith(".pkl") else load_mae_vit
        log.info("%s", loader(model.backbone, weights))
    if cfg.model.freeze_text:
        model.text_encoder.requires_grad_(False)
    return model


def eval_loader(dataset, cfg: Config) -> DataLoader:
    sampler = ShardSampler(len(dataset), dist.rank(), dist.world_size())
    return DataLoader(dataset, batch_size=cfg.optim.batch_size, sampler=sampler, collate_fn=collate,
                      num_workers=cfg.data.num_workers)


def _setup_logging(out: Path) -> None:
    if dist.is_main():
        handler = logging.FileHandler(out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logging.getLogger("vglaw").addHandler(handler)
    else:
        logging.getLogger("vglaw").setLevel(logging.WARNING)


def train(cfg: Config, resume: bool = False) -> dict:
    """Train (or with ``resume`` continue) the run in ``cfg.run.out``; returns the last metrics.

    ``resume`` continues from ``checkpoints/last.pt`` when it exists and starts afresh
    otherwise, so ``torchrun --max-restarts N ... --resume`` recovers from a lost worker."""
    device = dist.init(resolve_device(cfg.run.device))
    out = Path(cfg.run.out)
    last_path, best_path = out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"
    state = None
    if resume and last_path.is_file():
        state = load_checkpoint(last_path)
    elif resume:
        log.warning("--resume: no checkpoint at %s yet, starting from the beginning", last_path)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    dist.barrier()
    _setup_logging(out)
    torch.manual_seed(cfg.run.seed + dist.rank())
    random.seed(cfg.run.seed + dist.rank())
    np.random.seed(cfg.run.seed + dist.rank())

    model = build_train_model(cfg).to(device)
    tokenizer = load_tokenizer(cfg.data.tokenizer or model.config.text_encoder)
    img_size, max_len = model.config.img_size, model.config.max_len
    augment = TrainAugment(img_size, multiscale=cfg.data.multiscale, scale_step=cfg.data.scale_step,
                           crop=cfg.data.crop, crop_prob=cfg.data.crop_prob, flip_prob=cfg.data.flip_prob,
                           translate=cfg.data.translate)
    train_ds = GroundingDataset(cfg.data.prepared, cfg.data.train_split, tokenizer=tokenizer, img_size=img_size,
                                max_len=max_len, train=True, augment=augment, seed=cfg.run.seed,
                                skip_bad=cfg.data.skip_bad_images)
    eval_sets = {s: GroundingDataset(cfg.data.prepared, s, tokenizer=tokenizer, img_size=img_size, max_len=max_len)
                 for s in cfg.data.eval_splits}
    sampler = GlobalBatchSampler(len(train_ds), effective_batch=cfg.optim.effective_batch,
                                 batch_size=cfg.optim.batch_size, rank=dist.rank(), world_size=dist.world_size(),
                                 seed=cfg.run.seed)
    log.info("effective batch %d = %d per device x %d process(es) x %d accumulation step(s); %d steps/epoch",
             cfg.optim.effective_batch, cfg.optim.batch_size, dist.world_size(), sampler.accum_steps,
             sampler.steps_per_epoch)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, sampler.steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.run.precision == "fp16")

    start_epoch, start_step, global_step, best = 0, 0, 0, -1.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, start_step = state["epoch"], state["step_in_epoch"]
        global_step, best = state["global_step"], state["best"]
        set_rng_state(state["rng"][min(dist.rank(), len(state["rng"]) - 1)])
        log.info("resumed from %s at epoch %d, step %d of the epoch (optimizer step %d)", last_path, start_epoch,
                 start_step, global_step)
        if dist.is_main() and (out / "log.jsonl").exists():  # drop lines of epochs that will be redone
            lines = (out / "log.jsonl").read_text().splitlines()
            kept = [line for line in lines if json.loads(line)["epoch"] < start_epoch]
            (out / "log.jsonl").write_text("".join(line + "\n" for line in kept))

    core = model
    if cfg.run.compile:
        model = torch.compile(model)
    if dist.world_size() > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    writer = None
    if dist.is_main():
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"))

    def checkpoint(path: Path, epoch: int, step_in_epoch: int) -> None:
        rngs = dist.gather_object(rng_state())
        if dist.is_main():
            save_checkpoint(path, {
                "model": core.state_dict(), "model_config": core.config_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch, "step_in_epoch": step_in_epoch,
                "global_step": global_step, "best": best, "rng": rngs, "config": config_to_dict(cfg)})
        dist.barrier()

    text_cache = FrozenTextCache(core.text_encoder) if cfg.model.cache_text else None
    metrics: dict = {}
    for epoch in range(start_epoch, cfg.run.epochs):
        sampler.set_epoch(epoch, start_step)
        train_ds.set_epoch(epoch)
        loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers,
                            pin_memory=device.type == "cuda")
        started = time.time()

        def on_step(step: int, step_in_epoch: int, epoch: int = epoch, first: int = start_step) -> None:
            nonlocal global_step
            global_step = step
            if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0:
                checkpoint(last_path, epoch, first + step_in_epoch)

        steps_before = global_step - start_step
        losses, global_step = train_one_epoch(model, loader, optimizer, scheduler, scaler, epoch=epoch,
                                              accum_steps=sampler.accum_steps, cfg=cfg, device=device,
                                              global_step=global_step, on_step=on_step, writer=writer,
                                              text_cache=text_cache)
        lr = losses.pop("lr")
        start_step = 0
        done_in_epoch = global_step - steps_before
        stopped = bool(cfg.run.max_steps and global_step >= cfg.run.max_steps)
        # the epoch is complete unless max_steps cut it short: then resume mid-epoch
        resume_at = (epoch + 1, 0) if done_in_epoch >= sampler.steps_per_epoch else (epoch, done_in_epoch)
        metrics = {}
        if (epoch + 1) % cfg.run.eval_every == 0 or epoch + 1 == cfg.run.epochs or stopped:
            for split, ds in eval_sets.items():
                metrics[split] = evaluate(core, eval_loader(ds, cfg), ds, device=device, precision=cfg.run.precision,
                                          mask_threshold=cfg.run.mask_threshold, desc=f"eval {split}")
        score = metrics[cfg.data.eval_splits[-1]]["prec@0.5"] if metrics else -1.0
        improved = score > best
        best = max(best, score)
        checkpoint(last_path, *resume_at)
        if improved:
            checkpoint(best_path, *resume_at)
            if dist.is_main():
                core.save_pretrained(out / "best")
        if dist.is_main():
            record = {"epoch": epoch, "global_step": global_step, "lr": lr,
                      "train": losses, "eval": metrics, "best": best, "seconds": round(time.time() - started, 1)}
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            for split, values in metrics.items():
                for key, value in values.items():
                    writer.add_scalar(f"{split}/{key}", value, global_step)
            log.info("epoch %d: loss %.4f %s", epoch, losses.get("loss", float("nan")),
                     " ".join(f"{s}: prec@0.5 {m['prec@0.5']:.4f} mIoU {m.get('mIoU', float('nan')):.4f}"
                              for s, m in metrics.items()))
        if stopped:
            break
    if writer is not None:
        writer.close()
    return metrics
