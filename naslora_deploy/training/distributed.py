"""Data-parallel training under ``torchrun`` without wrapping the model in DDP.

The two-stage step freezes and unfreezes parameter groups between backward
passes, which DDP's fixed gradient hooks do not allow; averaging the gradients
of whatever was just differentiated by hand is simple and exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints progress."""
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def average_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """All-reduce and average the gradients of ``params`` across processes."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def shard(order: List[int], info: DistInfo) -> List[int]:
    """This rank's equal share of an epoch's sample order (the remainder is dropped)."""
    if not info.enabled:
        return order
    per_rank = len(order) // info.world_size
    return order[info.rank :: info.world_size][:per_rank]


def ranks_agree(tensors: Iterable[torch.Tensor], info: DistInfo) -> bool:
    """True if every rank holds bit-identical ``tensors``."""
    if not info.enabled:
        return True
    flat = torch.cat(
        [t.detach().reshape(-1).double() for t in tensors]
    )  # on the model's device (nccl needs CUDA)
    gathered = [torch.empty_like(flat) for _ in range(info.world_size)]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op alone)."""
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
