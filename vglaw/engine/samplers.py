"""Samplers that make a run independent of the number of processes.

Training: each epoch shuffles the indices with a seed of its own and cuts them into global
batches of ``effective_batch`` samples; every process takes its share of each micro-step.
The same config therefore sees the same global batches on 1 CPU or 64 GPUs, and a resumed
run can skip exactly the global batches already done. Evaluation: every sample exactly once
(no padding duplicates).
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler

from ..errors import InputError


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this process's micro-batches (lists of indices) for one epoch.

    Global batch g of the epoch's permutation holds ``effective_batch`` indices; micro-step a
    of it gives process r the slice ``[(a * world + r) * batch, ... + batch)``.
    """

    def __init__(self, n: int, *, effective_batch: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, with_epoch: bool = False) -> None:
        """``with_epoch``: yield ``(epoch, index)`` pairs, so that a dataset in persistent loader
        workers (which never see the main process's ``set_epoch``) augments for the right epoch."""
        if effective_batch % (batch_size * world_size):
            raise InputError(f"effective_batch {effective_batch} is not a multiple of batch_size {batch_size} "
                             f"x world size {world_size}")
        if n < effective_batch:
            raise InputError(f"the training split has {n} samples, fewer than effective_batch {effective_batch}")
        self.n, self.effective_batch, self.batch_size = n, effective_batch, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.accum_steps = effective_batch // (batch_size * world_size)
        self.epoch, self.start_step, self.with_epoch = 0, 0, with_epoch

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.effective_batch  # the incomplete last global batch is dropped

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Which epoch's permutation to use, and how many of its global batches to skip."""
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        for step in range(self.start_step, self.steps_per_epoch):
            batch = perm[step * self.effective_batch:(step + 1) * self.effective_batch]
            for a in range(self.accum_steps):
                start = (a * self.world_size + self.rank) * self.batch_size
                indices = batch[start:start + self.batch_size]
                yield [(self.epoch, i) for i in indices] if self.with_epoch else indices

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum_steps


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: every sample on exactly one process."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
