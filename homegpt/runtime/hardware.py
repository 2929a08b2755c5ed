"""GPUs the planner knows: dense bf16/fp16 tensor peak, a typical rental price, a default MFU.

Peaks are the vendors' dense (not 2:4-sparse) tensor-core numbers for bf16 or, where a card has no bf16,
fp16; prices are typical on-demand USD per GPU-hour in 2024-25 and move all the time, so every number
here can be overridden (--price, --peak-tflops, --mfu). Sources: ../shared/reference/scaling.md.

Default MFU (model FLOPs utilisation = achieved FLOP/s / peak, FLOPs counted as 6N + attention per token):
- datacenter (A100, H100, H200): 0.35. Small models reach 30-40% (nanoGPT: 37% for 124M on an A100);
  only large, well-tuned runs reach 50-56%.
- workstation (L4, A10/A10G, RTX 3090/4090): 0.30. Same kernels, but less memory bandwidth per FLOP.
- fp16-only (V100, T4): 0.20, an assumption: homegpt trains there with fp16 autocast and loss scaling,
  and these cards get no flash-attention kernels. A published 51M-parameter run on one V100 (another
  trainer) sustained only 4.7 TFLOP/s, ~4% of peak: on such cards, prefer `homegpt plan --measure`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from homegpt.errors import UserError, closest

CLASS_MFU = {"datacenter": 0.35, "workstation": 0.30, "fp16-only": 0.20}


@dataclass(frozen=True)
class GPU:
    key: str
    name: str
    peak_tflops: float  # dense bf16 (fp16 where no bf16) tensor-core peak, TFLOP/s
    fp32_tflops: float  # plain (non-tensor-core) fp32 peak, TFLOP/s: the bound when training in fp32
    price_per_hour: float  # typical USD per GPU-hour
    bf16: bool
    gpu_class: str  # datacenter | workstation | fp16-only

    @property
    def peak_flops(self) -> float:
        return self.peak_tflops * 1e12

    @property
    def default_mfu(self) -> float:
        return CLASS_MFU[self.gpu_class]


GPUS: dict[str, GPU] = {
    g.key: g
    for g in (
        GPU("h100", "NVIDIA H100 SXM", 989.0, 67.0, 2.50, True, "datacenter"),
        GPU("h100-pcie", "NVIDIA H100 PCIe", 756.0, 51.0, 2.00, True, "datacenter"),
        GPU("h200", "NVIDIA H200", 989.0, 67.0, 4.00, True, "datacenter"),
        GPU("a100", "NVIDIA A100 (40/80 GB)", 312.0, 19.5, 1.50, True, "datacenter"),
        GPU("l4", "NVIDIA L4", 121.0, 30.3, 0.60, True, "workstation"),
        GPU("a10g", "NVIDIA A10G (AWS)", 70.0, 31.2, 1.00, True, "workstation"),
        GPU("a10", "NVIDIA A10", 125.0, 31.2, 0.80, True, "workstation"),
        GPU("rtx4090", "NVIDIA GeForce RTX 4090", 165.0, 82.6, 0.45, True, "workstation"),
        GPU("rtx3090", "NVIDIA GeForce RTX 3090", 71.0, 35.6, 0.30, True, "workstation"),
        GPU("v100", "NVIDIA V100", 125.0, 15.7, 2.50, False, "fp16-only"),
        GPU("t4", "NVIDIA T4", 65.0, 8.1, 0.50, False, "fp16-only"),
    )
}

ALIASES = {
    "h100-sxm": "h100", "h100-80gb": "h100", "a100-40gb": "a100", "a100-80gb": "a100", "a100-sxm": "a100",
    "a100-pcie": "a100", "rtx-4090": "rtx4090", "4090": "rtx4090", "rtx-3090": "rtx3090", "3090": "rtx3090",
    "tesla-v100": "v100", "tesla-t4": "t4",
}

# Substrings of torch.cuda.get_device_name(), checked in order (more specific names first).
_DEVICE_PATTERNS = (
    ("h100 pcie", "h100-pcie"), ("h100", "h100"), ("h200", "h200"), ("a100", "a100"), ("a10g", "a10g"),
    ("a10", "a10"), ("l4", "l4"), ("4090", "rtx4090"), ("3090", "rtx3090"), ("v100", "v100"), ("t4", "t4"),
)


def _normalise(name: str) -> str:
    key = "-".join(name.strip().lower().replace("_", " ").split())
    return key.removeprefix("nvidia-")


def lookup_gpu(name: str) -> GPU:
    """A GPU by table key or alias (case and spacing ignored); unknown names list the known ones."""
    key = _normalise(name)
    key = ALIASES.get(key, key)
    if key in GPUS:
        return GPUS[key]
    raise UserError(f"unknown GPU {name!r}{closest(key, list(GPUS) + list(ALIASES))}; known: {', '.join(GPUS)} "
                    f"(or give --peak-tflops and --price)")


def detect_gpu(device_name: str) -> GPU | None:
    """The table entry for a CUDA device name such as 'NVIDIA H100 80GB HBM3', or None if not in the table."""
    words = set(re.split(r"[\s\-_/]+", device_name.lower()))
    for pattern, key in _DEVICE_PATTERNS:
        if all(part in words for part in pattern.split()):
            return GPUS[key]
    return None
