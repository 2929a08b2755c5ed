"""The live meter: tokens/s, model FLOPs utilisation, elapsed, ETA and dollars, while a run trains.

MFU = achieved model FLOP/s / the device's peak. Model FLOPs per token = 6N + 12 * n_layer * n_embd * T
(PaLM, appendix B), counted on the model's matmuls whether or not the hardware wastes work. The peak is the
GPU table's dense bf16/fp16 number for a known CUDA GPU, or, on a CPU, a measured fp32 matmul rate (CPUs
have no agreed "peak": this makes CPU MFU a fraction of what this machine's BLAS really reaches).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


def measure_matmul_flops(device: torch.device, n: int = 1024, repeats: int = 6) -> float:
    """FLOP/s of a large fp32 matmul on this device: the best of a few timed runs."""
    # Its own generator: drawing from the global RNG would shift the training run's random stream.
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen)
    b = torch.randn(n, n, device=device, generator=gen)
    best = float("inf")
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call warms up
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_flops(device: torch.device, override_tflops: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s, where the number comes from) for the meter's MFU."""
    if override_tflops:
        return override_tflops * 1e12, "given"
    if device.type == "cuda":
        from homegpt.hardware import detect_gpu

        name = torch.cuda.get_device_name(device)
        gpu = detect_gpu(name)
        if gpu is not None:
            bf16 = torch.cuda.is_bf16_supported()
            return (gpu.peak_flops if bf16 or not gpu.bf16 else gpu.fp32_tflops * 1e12), f"table: {gpu.name}"
        return measure_matmul_flops(device, 4096), f"measured fp32 matmul on {name}"
    return measure_matmul_flops(device), f"measured fp32 matmul on {device.type}"


@dataclass
class Meter:
    flops_per_token: float
    peak: float
    total_steps: int
    price_per_hour: float = 0.0  # USD per device-hour, all devices together
    elapsed: float = 0.0  # training seconds so far (carried over a resume)
    _recent: list = field(default_factory=list)  # (tokens, seconds) of the last steps

    def step(self, tokens: int, seconds: float) -> None:
        self.elapsed += seconds
        self._recent.append((tokens, seconds))
        del self._recent[:-20]  # a moving window: the rate now, not since the start

    @property
    def tokens_per_s(self) -> float:
        tokens = sum(t for t, _ in self._recent)
        seconds = sum(s for _, s in self._recent)
        return tokens / seconds if seconds > 0 else 0.0

    @property
    def mfu(self) -> float:
        return self.tokens_per_s * self.flops_per_token / self.peak if self.peak > 0 else 0.0

    def eta(self, step: int) -> float:
        per_step = sum(s for _, s in self._recent) / max(1, len(self._recent))
        return per_step * (self.total_steps - step)

    def cost(self, step: int) -> tuple[float, float]:
        """(USD spent so far, USD projected for the whole run) at price_per_hour."""
        spent = self.elapsed / 3600 * self.price_per_hour
        return spent, spent + self.eta(step) / 3600 * self.price_per_hour


def process_tree_memory_mb(pid: int) -> float:
    """PSS (RSS where PSS is unknown) of a process and all its children, in MiB (needs psutil).

    PSS splits shared pages between the processes that map them, so workers sharing a memory-mapped shard
    are not counted once each.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for p in procs:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.Error:
            pass
    return total / 2**20
