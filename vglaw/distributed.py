"""A small torch.distributed layer that is a no-op in a single process.

Launch with ``torchrun --nproc_per_node N -m vglaw train ...``: the process group is set up
from torchrun's environment (NCCL on GPU, gloo on CPU).

Every collective runs on tensors on the training device (the callers put them there). NCCL
accepts only CUDA tensors and gloo accepts CPU tensors, so a tensor on the device the process
trains on suits whichever backend the group has, including a group that a caller created
itself; a second, CPU-side gloo group (``"cpu:gloo,cuda:nccl"``) would instead make each
collective on CPU values a host round trip, and would need its own connections between nodes.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from .device import resolve_device


def is_enabled() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_enabled() else 0


def world_size() -> int:
    return dist.get_world_size() if is_enabled() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: str = "auto") -> torch.device:
    """Join the process group when launched by torchrun; returns this process's device
    (:func:`vglaw.device.resolve_device`; ``cuda`` is GPU ``LOCAL_RANK`` under torchrun)."""
    chosen = resolve_device(device, local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_enabled():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        timeout = datetime.timedelta(minutes=30)
        store = _restart_store(timeout)
        if store is None:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)
    return chosen


def _restart_store(timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun with the agent's store, that store outlives a restart (--max-restarts), and
    a restarted group could read the connection addresses of the workers it replaces (seen as
    gloo "connectFullMesh ... Connection refused" to a dead port). Keys are therefore prefixed
    with the restart count. None outside torchrun or when the agent hosts no store."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"vglaw/restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def shutdown() -> None:
    if is_enabled():
        dist.destroy_process_group()


@contextlib.contextmanager
def group() -> Iterator[None]:
    """A command's process group: the block joins it with :func:`init` (after checking its inputs,
    so that a bad one is one line before a device is chosen) and leaves it on leaving the block,
    however it leaves (an error, Ctrl-C). A no-op in a single process."""
    try:
        yield
    finally:
        shutdown()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (in place; returned for convenience). ``tensor`` must be on the
    training device: a CUDA tensor under NCCL."""
    if is_enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if is_enabled():
        dist.barrier()


def gather_object(obj) -> list:
    """Every process's ``obj``, in rank order (on every process). Under NCCL the objects travel
    as bytes on the current CUDA device, which :func:`init` sets."""
    if not is_enabled():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
