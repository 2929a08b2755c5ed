"""Which device and which precision: CUDA, Apple MPS or CPU; bf16, fp16 (with loss scaling) or fp32.

    dtype "auto": bf16 autocast on CUDA GPUs that support it (Ampere and newer); fp16 autocast with a
                  gradient scaler on older CUDA GPUs (V100, T4), whose bf16 is missing or emulated;
                  fp32 on CPU and MPS.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from contextlib import nullcontext

import torch

from homegpt.errors import UserError

DTYPES = ("auto", "fp32", "bf16", "fp16")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available: use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for, but MPS is not available: use --device cpu")
    return dev


def resolve_dtype(device: torch.device, dtype: str = "auto") -> str:
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "fp32"


def autocast_for(device: torch.device, dtype: str = "auto"):
    """The autocast context for a device and dtype setting (a no-op for fp32)."""
    resolved = resolve_dtype(device, dtype)
    if resolved == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if resolved == "bf16" else torch.float16)


def make_scaler(device: torch.device, dtype: str = "auto") -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling (its range is too small for small gradients); bf16 and fp32 do not.

    Apple MPS gets no scaler: it does not support one, and homegpt trains fp32 there by default.
    """
    if resolve_dtype(device, dtype) != "fp16" or device.type == "mps":
        return None
    return torch.amp.GradScaler(device.type)


def enable_fast_matmul(device: torch.device) -> None:
    """TF32 tensor cores for fp32 matmuls on Ampere+ GPUs: ~8x faster, with ample precision for training."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt() parameter numbers (malloc.h)
_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory for reuse on Linux CPUs: CPU training ran 6-19% faster. True if applied.

    Why: a training step allocates and frees the same large activation buffers every time. glibc's malloc
    serves big blocks with fresh mmap() pages and returns them on free(), so every step pays a page fault
    for each 4 KiB of every activation. Serving everything from the heap (M_MMAP_MAX = 0) and not trimming
    it (M_TRIM_THRESHOLD = 1 GiB) lets the next step reuse the same pages. The cost is a few percent more
    resident memory. It is process-wide and stays for the life of the process; HOMEGPT_TUNE_MALLOC=0 turns
    it off. Other C libraries (macOS, musl) are left alone.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("HOMEGPT_TUNE_MALLOC", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _allocator_tuned = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):  # not glibc
        return False
    return _allocator_tuned


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def find_micro_batch(fits: Callable[[int], bool], largest: int) -> int:
    """The largest power-of-two micro-batch <= `largest` for which fits(n) is True (halving from the top).

    fits(n) runs a real forward + backward of n sequences and returns False on out-of-memory.
    """
    n = 1
    while n * 2 <= largest:
        n *= 2
    while n >= 1:
        if fits(n):
            return n
        n //= 2
    raise UserError("even one sequence per micro-batch runs out of memory: lower block_size or use a smaller model")
