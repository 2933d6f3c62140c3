"""Data-parallel training under ``torchrun`` (PyTorch DistributedDataParallel).

``torchrun --nproc_per_node=N -m trainer train ...`` starts N processes; each trains
on its shard of the users (``TrainData.epoch_order``) and DDP averages gradients
after every backward pass: NCCL between GPUs, gloo between CPU processes. Only
rank 0 publishes artifacts. Without ``torchrun`` everything here is a no-op.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


EXIT_BARRIER_S = 60  # the most a rank waits for the others at exit


def context() -> DistContext:
    """The current process group (initialised from torchrun's environment on first use)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        atexit.register(shutdown)  # a clean exit on every rank, without a "process group not destroyed" warning
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """Each process gets its own GPU (by local rank); CPU processes share the CPU."""
    if ctx.active and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def broadcast_from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (any picklable object); ``value`` itself without torchrun.

    Decisions that steer the loop (early stopping, the best epoch, a version name) must be
    the same on every rank: a rank that stops while another steps on waits forever in DDP.
    """
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        if dist.get_backend() == "gloo":
            # every rank leaves together: a rank destroying gloo's group while rank 0 was still printing
            # made rank 0 abort at exit (tests/deploy/test_torchrun.py, once in ~5 runs); bounded, so a
            # rank that failed while the others wait in a collective cannot hang the exit
            try:
                dist.monitored_barrier(timeout=timedelta(seconds=EXIT_BARRIER_S))
            except RuntimeError:
                pass
        dist.destroy_process_group()
