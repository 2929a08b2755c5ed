"""The live meter: tokens/s, model FLOPs utilisation, elapsed, ETA and dollars, while a run trains.

MFU = achieved model FLOP/s / the device's peak. Model FLOPs per token = 6N + 12 * n_layer * n_embd * T
(PaLM, appendix B), counted on the model's matmuls whether or not the hardware wastes work. The peak is the
GPU table's dense bf16/fp16 number for a known CUDA GPU, or, on a CPU, a measured fp32 matmul rate (CPUs
have no agreed "peak": this makes CPU MFU a fraction of what this machine's BLAS really reaches). The CPU
number is the best measured on this machine so far (kept in ~/.cache/homegpt/cpu_peak.json), and MFU never
shows more than 100%: a peak below what training achieves is raised to it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


def measure_matmul_flops(device: torch.device, n: int = 1024, min_seconds: float = 0.3, min_repeats: int = 6) -> float:
    """FLOP/s of a large fp32 matmul on this device: the best of repeated timed runs over at least min_seconds.

    The best of many, not of a few: on a shared machine one short measurement can read half the real rate
    (seen: 0.06 and 0.14 TFLOP/s minutes apart on one VM), and a low peak shows MFU above 100%.
    """
    # Its own generator: drawing from the global RNG would shift the training run's random stream.
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen)
    b = torch.randn(n, n, device=device, generator=gen)
    best, start, i = float("inf"), time.perf_counter(), 0
    while i <= min_repeats or time.perf_counter() - start < min_seconds:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call warms up
            best = min(best, time.perf_counter() - t)
        i += 1
    return 2 * n**3 / best


def cpu_peak_cache() -> Path:
    """Where the best CPU matmul rate measured on this machine is kept (HOMEGPT_CACHE or ~/.cache/homegpt)."""
    root = os.environ.get("HOMEGPT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                           os.path.expanduser("~/.cache"), "homegpt")
    return Path(root) / "cpu_peak.json"


def cpu_peak(device: torch.device) -> float:
    """The best fp32 matmul rate ever measured here for this CPU, thread count and torch: measured now, and
    kept, so one slow reading on a busy machine does not set the peak (a cache that can't be written is
    only skipped)."""
    key = f"{platform.processor() or platform.machine()}|{os.cpu_count()}|{torch.get_num_threads()}|{torch.__version__}"
    path = cpu_peak_cache()
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    cached = known.get(key)
    peak = max(measure_matmul_flops(device), float(cached) if isinstance(cached, (int, float)) else 0.0)
    if peak != cached:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(dict(known, **{key: peak}), indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            pass
    return peak


def peak_flops(device: torch.device, override_tflops: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s, where the number comes from) for the meter's MFU."""
    if override_tflops:
        return override_tflops * 1e12, "given"
    if device.type == "cuda":
        from homegpt.runtime.hardware import detect_gpu

        name = torch.cuda.get_device_name(device)
        gpu = detect_gpu(name)
        if gpu is not None:
            bf16 = torch.cuda.is_bf16_supported()
            return (gpu.peak_flops if bf16 or not gpu.bf16 else gpu.fp32_tflops * 1e12), f"table: {gpu.name}"
        return measure_matmul_flops(device, 4096), f"measured fp32 matmul on {name}"
    if device.type == "cpu":
        return cpu_peak(device), "best fp32 matmul measured on this CPU"
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
        """Achieved / peak, never above 1: a measured peak below what training reaches was a low reading, so
        the peak rises to the achieved rate (GPU tables and given peaks are not measurements: never above 1)."""
        achieved = self.tokens_per_s * self.flops_per_token
        if self.peak <= 0:
            return 0.0
        self.peak = max(self.peak, achieved)
        return achieved / self.peak

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
