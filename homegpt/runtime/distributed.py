"""Many processes, one run: joining torchrun's process group, agreeing across ranks, sharding with FSDP2.

Under `torchrun` every process gets RANK, LOCAL_RANK and WORLD_SIZE in its environment. Each joins one
process group (NCCL between GPUs, gloo between CPU processes); rank 0 is the one that logs and writes
checkpoints. With DDP every rank holds the whole model; with FSDP2 (`parallel = "fsdp"`) each holds a shard,
so every rank takes part in evaluation and in gathering a checkpoint. Without torchrun, WORLD_SIZE is
absent and the run is a single process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from homegpt.errors import UserError
from homegpt.runtime.device import pick_device


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


# --- FSDP2: parameters, gradients and optimizer moments sharded across ranks --------------------------------

try:  # public since PyTorch 2.5; older versions have no FSDP2 either
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - old PyTorch
    DTensor, distribute_tensor = (), None


def shard_model(model, compile_blocks: bool) -> None:
    """FSDP2 (`fully_shard`): every rank holds 1/world of each parameter, its gradient and its AdamW moments.

    Each transformer block is its own unit: its parameters are all-gathered just before it runs and freed
    right after, so only one block is ever whole in memory. The embeddings, the final LayerNorm and the
    output head tied to the token embedding form the root unit. With compile, each block is compiled before
    it is sharded (the order torchtitan uses).
    """
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise UserError('parallel = "fsdp" needs PyTorch 2.6 or newer: upgrade torch or use parallel = "ddp"') from None
    for block in model.transformer.h:
        if compile_blocks:
            block.compile()
        fully_shard(block)
    fully_shard(model)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a sharded DTensor, moved to the CPU (a collective: every rank must call it in
    the same order); any other tensor as it is."""
    return t.full_tensor().cpu() if isinstance(t, DTensor) else t


def shard_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A whole tensor (read from a checkpoint on every rank) laid out like `param`: this rank's shard of it
    when param is a DTensor, else value on param's device."""
    value = value.to(param.device)
    if not isinstance(param, DTensor):
        return value
    try:  # every rank already has the whole tensor: cut locally, no communication
        return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
    except TypeError:  # older signature: scattered from rank 0
        return distribute_tensor(value, param.device_mesh, param.placements)
