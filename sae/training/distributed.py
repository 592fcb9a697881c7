"""Data-parallel training under torchrun: process group, devices, and torch DDP around the SAE.

sae-lens's trainer calls `sae.training_forward_pass(...)`, not `sae(...)`, so torch's
`DistributedDataParallel` (whose gradient all-reduce is armed by its `forward`) would never see the step.
`wrap_ddp` puts the SAE in a small module whose `forward` is that training pass, wraps it in DDP, and points
the SAE instance's `training_forward_pass` at the DDP module: the trainer, optimiser and saving code keep
using the plain SAE and its parameters, and every backward averages the gradients over the processes.
Each loss in sae-lens is a mean over the batch, so with equal per-rank batches the averaged gradient is
the gradient of the global batch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", backend: str = "auto") -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and world > 1:
        device = f"cuda:{local_rank}"
    if device.startswith("cuda") and torch.device(device).index is not None:  # plain "cuda": the current one
        torch.cuda.set_device(torch.device(device))
    if world > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        logger.info("rank %d/%d joined the %s process group on %s", rank, world, backend, device)
    return DistInfo(rank, world, local_rank, device)


class _TrainingPass(nn.Module):
    def __init__(self, sae: nn.Module) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, step_input: Any) -> Any:
        return type(self.sae).training_forward_pass(self.sae, step_input)


def wrap_ddp(sae: nn.Module, info: DistInfo) -> DistributedDataParallel | None:
    """Route `sae.training_forward_pass` through DDP (no-op in a single process); rank 0's initial weights
    are broadcast to every rank."""
    if not info.distributed:
        return None
    device_ids = [torch.device(info.device).index] if info.device.startswith("cuda") else None
    ddp = DistributedDataParallel(_TrainingPass(sae), device_ids=device_ids)

    def training_forward_pass(step_input: Any) -> Any:
        return ddp(step_input)

    object.__setattr__(sae, "training_forward_pass", training_forward_pass)
    return ddp


def unwrap_ddp(sae: nn.Module) -> None:
    """Give the SAE back its own training pass (before saving or evaluating)."""
    sae.__dict__.pop("training_forward_pass", None)


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_agree(value: Any, info: DistInfo) -> Any:
    """Raise unless every rank holds the same `value` (e.g. a config fingerprint); returns it."""
    values = gather_objects(value, info)
    if any(v != values[0] for v in values):
        raise ValueError(f"processes disagree: {values}")
    return value


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
