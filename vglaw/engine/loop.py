"""One training epoch and one evaluation pass."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from .. import distributed as dist
from ..data import collate
from ..data.readers import target_count
from ..data.transforms import image_region, normalize_canvas
from ..device import autocast
from ..errors import VglawError
from ..model.confidence import EXISTS_FEATURE, FEATURES, confidence_features
from ..progress import progress
from ..config import MIN_EXISTS
from .gref_metrics import GREF_ROWS, gref_row, gref_summaries
from .losses import grounding_loss
from .metrics import authors_target_box, confidence_metrics, make_meter
from .samplers import ShardSampler


class NonFiniteLossError(VglawError, RuntimeError):
    """The loss became NaN or infinite: the run stops before that update."""


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def optimizer_step(model, optimizer, scheduler, scaler, clip_grad_norm: float) -> None:
    """Clip the accumulated gradients' global norm, apply them, and move the schedule on."""
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


@dataclass
class TrainState:
    """A run's progress, saved with every checkpoint and restored from it as one unit."""

    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps of ``epoch`` already done
    global_step: int = 0  # optimizer steps of the whole run
    best: float = -1.0  # the best evaluation score so far
    # the epoch's steps so far, so that an epoch resumed in its middle logs what an uninterrupted one does
    epoch_sums: dict[str, float] = field(default_factory=dict)  # each loss term summed over micro-batches and processes
    epoch_micro_batches: int = 0  # micro-batches of all processes
    epoch_skipped: int = 0  # samples skipped (unusable) by all processes
    lr: float | None = None  # the last optimizer step's (the scheduler has moved on since)

    def next_epoch(self) -> None:
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.epoch_sums, self.epoch_micro_batches, self.epoch_skipped, self.lr = {}, 0, 0, None

    def epoch_means(self) -> dict:
        """Each loss term's mean over the epoch's micro-batches so far, ``skipped_samples`` and
        the last step's ``lr``."""
        means = {k: v / max(self.epoch_micro_batches, 1) for k, v in self.epoch_sums.items()}
        return {**means, "lr": self.lr, "skipped_samples": self.epoch_skipped}


def train_one_epoch(model, loader, optimizer, scheduler, scaler, *, state: TrainState, accum_steps: int,
                    device: torch.device, precision: str, loss_weights, clip_grad_norm: float, max_steps: int = 0,
                    on_step=None, writer=None, text_cache=None) -> dict:
    """Run the epoch's micro-batches; every ``accum_steps`` of them make one optimizer step,
    which advances ``state.step_in_epoch`` and ``state.global_step`` and adds to the epoch's
    sums in ``state`` (then ``on_step()`` runs: checkpoints). Stops early at ``max_steps``
    optimizer steps of the run (0: no limit). ``text_cache`` (a FrozenTextCache) supplies the
    frozen text encoder's output. Returns :meth:`TrainState.epoch_means`: each loss term's mean
    over the epoch (its steps before a resume included) and all processes, ``skipped_samples``
    and the last step's ``lr``. Raises NonFiniteLossError on NaN/inf, before that step's update
    is applied.

    The loss terms stay on the device while the micro-batches of a step run: the host reads
    them once per optimizer step (one all-reduce over processes, one copy), which is also where
    finiteness is checked, so the GPU is never made to wait for the host inside a step.
    """
    model.train()  # a frozen text encoder stays in eval mode (VGLAW.train)
    core = model.module if hasattr(model, "module") else model
    seen, step_skipped, start = 0, 0, time.perf_counter()
    step_terms = None  # (5,) this process's loss terms summed over the step's micro-batches
    bar = progress(loader, f"epoch {state.epoch}", show=dist.is_main(), unit="batch")
    for i, batch in enumerate(bar):
        step_skipped += batch["skipped"]
        text = text_cache(batch["input_ids"], batch["attention_mask"], device) if text_cache is not None else None
        batch = to_device(batch, device)
        last = (i + 1) % accum_steps == 0
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, precision):
                out = model(normalize_canvas(batch["image"], batch["extent"]), batch["input_ids"],
                            batch["attention_mask"], text=text)
            losses = grounding_loss(out, batch, loss_weights)
            scaler.scale(losses["loss"] / accum_steps).backward()
        terms = torch.stack([v.detach().float() for v in losses.values()])
        step_terms = terms if step_terms is None else step_terms + terms
        seen += batch["image"].shape[0] * dist.world_size()
        if not last:
            continue
        # the step's one read: its loss terms and skipped samples, over processes
        *sums, skipped = dist.all_reduce_sum(torch.cat([step_terms, step_terms.new_tensor([step_skipped])])).tolist()
        values, step_terms, step_skipped = dict(zip(losses, sums)), None, 0
        if not math.isfinite(values["loss"]):
            raise NonFiniteLossError(
                f"non-finite loss at epoch {state.epoch}, optimizer step {state.global_step} (loss terms summed over the "
                f"step's micro-batches and processes: {values}); stopping before this update. The last "
                "checkpoint is intact; lower the learning rate or check the data, then --resume")
        for k, v in values.items():
            state.epoch_sums[k] = state.epoch_sums.get(k, 0.0) + v
        state.epoch_micro_batches += accum_steps * dist.world_size()
        state.epoch_skipped += int(skipped)
        lr = state.lr = optimizer.param_groups[-1]["lr"]  # the lr this step uses (the scheduler then moves on)
        optimizer_step(core, optimizer, scheduler, scaler, clip_grad_norm)
        state.global_step += 1
        state.step_in_epoch += 1
        step_loss = values["loss"] / (accum_steps * dist.world_size())
        bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}",
                        samples_s=f"{seen / (time.perf_counter() - start):.1f}")
        if writer is not None:
            writer.add_scalar("train/loss", step_loss, state.global_step)
            writer.add_scalar("train/lr", lr, state.global_step)
        if on_step is not None:
            on_step()
        if max_steps and state.global_step >= max_steps:
            break
    bar.close()
    return state.epoch_means()


@torch.no_grad()
def evaluate(model, loader, dataset, *, device: torch.device, precision: str = "fp32",
             mask_threshold: float | None = None, desc: str = "eval", calibrator=None, with_samples: bool = False,
             protocol: str = "original", min_exists: float = MIN_EXISTS):
    """REC and RES metrics of a split over all processes, under ``protocol`` (:mod:`.metrics`:
    ``original``, in original image pixels, or ``authors``, on the canvas as the authors'
    evaluation computes them).

    On a split with no-target or multi-target expressions the REC and RES metrics are those of its
    single-target expressions, and ``gres`` and ``grec`` hold the generalized metrics
    (:mod:`.gref_metrics`) over all of them, in original pixels whatever ``protocol``: an answer
    says "no target" where the existence output is below ``min_exists`` (a model without it: where
    its mask is empty); its boxes are as predictions give them (:func:`~vglaw.data.masks.answer_boxes`),
    each scored with the existence probability (1 without the output).

    With a ``calibrator`` (:class:`~vglaw.model.confidence.Calibrator`) the metrics also say how
    well its scores tell right boxes from wrong ones on the single-target expressions
    (:func:`~vglaw.engine.metrics.confidence_metrics`). With ``with_samples``, returns
    ``(metrics, samples)``: ``samples`` holds per sample, in dataset order, ``box_iou`` (N,) under
    the protocol (0 for a no-target expression: no box is right; NaN for a multi-target one),
    ``single`` (N,) bool, the single-target expressions, ``boxes`` (N, 4) xyxy in
    original pixels, ``features`` {name: (N,)}, the confidence features, ``exists`` (N,) for a
    model with the existence output, and with a calibrator ``score`` (N,)."""
    meter = make_meter(protocol)
    model.eval()
    core = getattr(model, "module", model)  # a DDP or compiled wrapper's inner model
    if mask_threshold is None:
        mask_threshold = core.config.mask_threshold
    n = len(dataset)  # per-sample values, each filled on one process and summed over them
    # rows: box IoU, the box (4), the confidence features, existence, and the generalized scores
    rows = 6 + len(FEATURES)
    per_sample = torch.zeros(rows + len(GREF_ROWS), n, dtype=torch.float64)
    for batch in progress(loader, desc, show=dist.is_main(), unit="batch"):
        batch = to_device(batch, device)
        with autocast(device, precision):
            out = model(normalize_canvas(batch["image"], batch["extent"]), batch["input_ids"],
                        batch["attention_mask"], box_attention=True)
        boxes = out["boxes"].float().cpu()  # one copy per batch, not one per sample
        probs = out["mask_logits"][:, 0].float().sigmoid().cpu()
        exists_logits = out["exists_logits"].float().cpu() if "exists_logits" in out else None
        exists = None if exists_logits is None else exists_logits.sigmoid()
        inside = image_region(batch["extent"], out["mask_logits"].shape[-1], device)
        feats = torch.stack(list(confidence_features(out["boxes"], out["mask_logits"], out["box_attention"],
                                                     inside).values())).cpu()  # (F, B)
        canvas_masks = batch["mask"].cpu() if protocol == "authors" else None
        for j, meta in enumerate(batch["meta"]):
            letterbox, index = meta["letterbox"], meta["index"]
            record = dataset.records[index]
            box = letterbox.boxes_to_original(boxes[j:j + 1])[0]
            single = target_count(record) == 1
            per_sample[0, index] = 0.0 if record.get("no_target") else math.nan  # no box is right; several
            if single and protocol == "authors":  # the canvas: the box as predicted, the whole canvas's mask
                has_mask = bool(batch["has_mask"][j])
                per_sample[0, index] = meter.add(boxes[j], authors_target_box(record["box"], letterbox),
                                                 probs[j] > mask_threshold if has_mask else None,
                                                 canvas_masks[j] if has_mask else None)
            gt_mask = dataset.gt_mask(index) if protocol == "original" or dataset.generalized else None
            pred_mask = None
            if gt_mask is not None:
                pred_mask = letterbox.maps_to_original(probs[j:j + 1])[0] > mask_threshold
            if single and protocol == "original":
                per_sample[0, index] = meter.add(box, dataset.gt_box(index).float(), pred_mask, gt_mask)
            per_sample[1:5, index] = box.double()
            per_sample[5:rows - 1, index] = feats[:, j].double()
            per_sample[rows - 1, index] = math.nan if exists is None else exists_logits[j].item()
            if dataset.generalized:
                p = 1.0 if exists is None else exists[j].item()
                per_sample[rows:, index] = torch.tensor(gref_row(
                    pred_mask, box.tolist(), gt_mask, dataset.gt_boxes(index), bool(record.get("no_target")),
                    None if exists is None else p < min_exists, p, sample_id=record.get("sent_id")),
                    dtype=torch.float64)
    metrics = meter.summary(device)
    per_sample = dist.all_reduce_sum(per_sample.to(device)).cpu()
    samples = {"box_iou": per_sample[0], "boxes": per_sample[1:5].T.float(),
               "features": dict(zip(FEATURES, per_sample[5:rows - 1].float()))}
    if getattr(core, "has_existence", False):
        samples["features"][EXISTS_FEATURE] = per_sample[rows - 1].float()
        samples["exists"] = per_sample[rows - 1].float().sigmoid()
    if dataset.generalized:
        metrics.update(gref_summaries(per_sample[rows:]))
    samples["single"] = torch.tensor([target_count(r) == 1 for r in dataset.records])
    if calibrator is not None:
        samples["score"] = calibrator(samples["features"])
        single = samples["single"]
        if single.any():
            metrics.update(confidence_metrics(samples["score"][single].numpy(), (samples["box_iou"][single] >= 0.5).numpy()))
    return (metrics, samples) if with_samples else metrics


def eval_loader(dataset, batch_size: int, num_workers: int) -> DataLoader:
    """Batches of ``dataset`` for evaluation: under torchrun each sample on exactly one process."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), dist.rank(), dist.world_size()),
                      collate_fn=collate, num_workers=num_workers)
