"""Distributed data parallel helpers for runs launched with ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads
them and joins the process group with NCCL on GPUs and gloo on CPU. Without them it returns a
single-process :class:`DistInfo`, so the trainer has one code path. Only rank 0 writes files.

Launch (one machine, 4 GPUs; two machines of 8 GPUs)::

    torchrun --standalone --nproc_per_node 4 --no-python pixelwise train recipe.yaml
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        --no-python pixelwise train recipe.yaml      # the same line on both machines
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..devices import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the ``torchrun`` process group if there is one.

    Args:
        device: the configured device (``auto``, ``cpu``, ``cuda``...); under torchrun each
            process takes ``cuda:<LOCAL_RANK>``.

    Returns:
        A :class:`DistInfo`; ``world_size == 1`` when not launched by torchrun.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        created = True
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev,
                    initialized_here=created)


def cleanup(info: DistInfo) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few Python numbers across processes (float64, on the process's device)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_int(value: int, info: DistInfo) -> int:
    """Rank 0's integer, on every rank."""
    if not info.distributed:
        return value
    t = torch.tensor([int(value)], dtype=torch.int64, device=info.device)
    dist.broadcast(t, src=0)
    return int(t.item())


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's boolean, on every rank (e.g. "stop now")."""
    return bool(broadcast_int(int(flag), info))


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (e.g. BatchNorm running statistics) to every process."""
    if not info.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)
