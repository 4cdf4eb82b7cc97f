"""torchrun support: one process per device, DistributedDataParallel, rank 0 does all the writing.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them the trainer runs as a single process and
none of this starts a process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from incdsl.train import TrainError


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes, and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start_processes(device: str = "auto") -> Processes:
    """Join torchrun's process group when launched by it (NCCL on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Processes(int(os.environ.get("RANK", "0")), world_size, chosen)


def pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise TrainError(f"'{device}' is not a device", hint="try cpu, cuda or cuda:1") from None
    if chosen.type == "meta":  # tensors without data: a model there cannot learn or predict anything
        raise TrainError(
            "--device meta holds no data, so nothing can be trained or evaluated on it",
            hint="try cpu or cuda",
        )
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device {device} asked for, but torch sees no CUDA GPU")
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    return chosen


def sum_over_processes(values: list[float], processes: Processes) -> list[float]:
    """Element-wise sums of ``values`` over all processes."""
    if not processes.distributed:
        return values
    total = torch.tensor(values, dtype=torch.float64, device=processes.device)
    dist.all_reduce(total)
    return total.tolist()


def sync_batchnorm(model: torch.nn.Module, processes: Processes, enabled: bool) -> torch.nn.Module:
    """``model`` with SyncBatchNorm (``--sync-bn``): BatchNorm's batch statistics over the whole global
    batch, not each process's share. PyTorch's SyncBatchNorm runs on GPUs only; in one process there
    is nothing to synchronise."""
    if not enabled or not processes.distributed:
        return model
    if processes.device.type != "cuda":
        raise TrainError(
            "--sync-bn needs GPUs: PyTorch's SyncBatchNorm runs on CUDA only",
            hint="drop --sync-bn (the processes still validate with the same statistics, rank 0's)",
        )
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def share_buffers(module: torch.nn.Module, processes: Processes) -> None:
    """Give every process rank 0's buffers (BatchNorm's running statistics): each process updates its
    own in its last training steps, and rank 0's are the ones its checkpoint saves, so that every
    process validates the model the checkpoint holds."""
    if processes.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def wait_for_all(processes: Processes) -> None:
    if processes.distributed:
        dist.barrier()


def stop_processes(processes: Processes) -> None:
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()
