"""Many processes, one run: joining torchrun's process group and agreeing across ranks.

Under `torchrun` every process gets RANK, LOCAL_RANK and WORLD_SIZE in its environment. Each joins one
process group (NCCL between GPUs, gloo between CPU processes); rank 0 is the one that logs, evaluates and
writes checkpoints. Without torchrun, WORLD_SIZE is absent and the run is a single process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from homegpt.device import pick_device


def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun: join the process group (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, pick_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world, device


def agree(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank if any rank says so (a signal may reach only one of them)."""
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(value, world: int):
    """Rank 0's `value` on every rank (any picklable object: it travels between our own processes only)."""
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def min_int(value: int, world: int, device: torch.device) -> int:
    """The smallest of every rank's `value`."""
    if world == 1:
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())
