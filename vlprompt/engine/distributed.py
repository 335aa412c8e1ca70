"""Multi-process training under ``torchrun``: process group set-up and who does the writing.

One process per device (gloo on CPU, NCCL on GPU). Every rank trains on its share of each batch
(``DistributedSampler``; the configured batch size is the global one), gradients are averaged by
DistributedDataParallel, and only rank 0 prints, logs and writes checkpoints and run records.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_distributed() -> bool:
    """Whether this process was started by torchrun (or another launcher setting WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def init_distributed(use_cuda: bool = True) -> bool:
    """Join the process group torchrun describes; returns True when running distributed."""
    if not launched_distributed() or not dist.is_available():
        return False
    if not dist.is_initialized():
        cuda = use_cuda and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown_distributed() -> None:
    """Leave the process group (no barrier: after a failure on one rank, a barrier would hang)."""
    if is_distributed():
        dist.destroy_process_group()


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, or ``model`` itself."""
    return model.module if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else model
