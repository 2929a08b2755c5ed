"""Optimizers and schedules: AdamW, or Muon on the blocks' matrices with AdamW on the rest; cosine or WSD.

    optimizer = "adamw"  AdamW on everything, weight decay on matrices only (decaying gains and biases only
                         hurts). The GPT-2 / nanoGPT recipe.
    optimizer = "muon"   torch.optim.Muon (PyTorch >= 2.9; the library's, not a copy) on the 2-D weight
                         matrices inside the blocks: each update is the momentum orthogonalised by a few
                         Newton-Schulz iterations, so every direction of a matrix moves at the same rate.
                         Muon is defined for hidden matrices only; the token embedding, an untied head and
                         the 1-D gains go to AdamW, each with its own learning rate (embedding_lr, head_lr,
                         scalar_lr). Muon's momentum warms up from muon_momentum_start (modded-nanogpt,
                         nanochat: a high momentum early on slows the first steps down).

    schedule = "cosine"  linear warmup, then cosine decay to min_lr_ratio x the peak at the last step.
    schedule = "wsd"     warmup-stable-decay (the "trapezoid" of modded-nanogpt and nanochat): linear warmup,
                         constant, then a linear decay over the last decay_fraction of the steps down to
                         min_lr_ratio x the peak. Because the rate is flat until the decay, the length of a
                         run can be decided late (loop.py re-plans a time-budgeted run while it is flat).

Every parameter group carries its peak rate as "peak_lr"; `apply_schedule` multiplies it by the schedule's
factor at each step, so all groups follow one shape.
"""

from __future__ import annotations

import math

import torch

from homegpt.errors import UserError
from homegpt.model.gpt import GPT
from homegpt.rundir.checkpoint import unwrap
from homegpt.runtime.distributed import full_tensor, shard_like
from homegpt.train.config import TrainConfig

NS_STEPS = 5  # torch.optim.Muon's default number of Newton-Schulz iterations


class OptimizerSet:
    """Several optimizers stepped as one (Muon + AdamW): the parts torch's own code (GradScaler, checkpoints)
    handles one by one, and the param_groups every schedule sets."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)


def parts(optimizer) -> list[torch.optim.Optimizer]:
    """The torch optimizers behind an optimizer or an OptimizerSet."""
    return list(getattr(optimizer, "optimizers", [optimizer]))


def muon_matrices(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters Muon trains: 2-D weight matrices inside the transformer blocks."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dim() == 2 and ".h." in f".{n}"]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """The run's optimizer for cfg.optimizer (after cfg.resolved(): no "auto" left)."""
    fused = device.type == "cuda"
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        groups = [
            _group([p for _, p in named if p.dim() >= 2], cfg.lr, cfg.weight_decay),
            _group([p for _, p in named if p.dim() < 2], cfg.lr, 0.0),
        ]
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)
    if cfg.optimizer != "muon":
        raise UserError(f"unknown optimizer {cfg.optimizer!r}: use adamw or muon")
    if not hasattr(torch.optim, "Muon"):
        raise UserError(f'optimizer = "muon" needs PyTorch 2.9 or newer (this is {torch.__version__}): '
                        f'upgrade torch or set optimizer = "adamw"')
    matrices = {id(p) for _, p in muon_matrices(model)}
    head = model.lm_head.weight if not model.config.tie_embeddings else None
    embeddings = [p for n, p in named if p.dim() == 2 and id(p) not in matrices and p is not head]
    groups = [
        _group(embeddings, cfg.embedding_lr, 0.0),
        _group([p for _, p in named if p.dim() < 2], cfg.scalar_lr, 0.0),
    ]
    if head is not None:
        groups.append(_group([head], cfg.head_lr, 0.0))
    adamw = torch.optim.AdamW([g for g in groups if g["params"]], betas=(cfg.beta1, cfg.beta2), fused=fused)
    muon = torch.optim.Muon([_group([p for _, p in muon_matrices(model)], cfg.lr, cfg.muon_weight_decay)],
                            lr=cfg.lr, momentum=cfg.muon_momentum, nesterov=True, ns_steps=NS_STEPS)
    return OptimizerSet([muon, adamw])


def _group(params: list, lr: float, weight_decay: float) -> dict:
    return {"params": params, "lr": lr, "peak_lr": lr, "weight_decay": weight_decay}


def lr_factor(step: int, cfg: TrainConfig, total: int) -> float:
    """The schedule's multiplier of every group's peak rate at optimizer step `step` (0-based) of `total`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * total))
        decay_start = max(cfg.warmup_steps, total - decay_steps)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step + 1 - decay_start) / max(1, total - decay_start))
        return 1.0 - (1.0 - floor) * progress
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return floor + 0.5 * (1.0 - floor) * (1 + math.cos(math.pi * progress))


def decay_start(cfg: TrainConfig, total: int) -> int:
    """The step from which a run's length must stay fixed. WSD: where the decay starts (before it, the rate
    does not depend on the length at all). Cosine: half way, a compromise: the rate depends on the length
    from the end of warmup, but a change early on bends the curve only slightly."""
    if cfg.schedule == "wsd":
        return max(cfg.warmup_steps, total - max(1, round(cfg.decay_fraction * total)))
    return max(cfg.warmup_steps, total // 2)


def muon_momentum_at(step: int, cfg: TrainConfig) -> float:
    """Muon's momentum, warmed up linearly from muon_momentum_start over muon_momentum_warmup steps."""
    if cfg.muon_momentum_warmup <= 0 or step >= cfg.muon_momentum_warmup:
        return cfg.muon_momentum
    frac = step / cfg.muon_momentum_warmup
    return cfg.muon_momentum_start + frac * (cfg.muon_momentum - cfg.muon_momentum_start)


def apply_schedule(optimizer, step: int, cfg: TrainConfig, total: int) -> float:
    """Set every group's lr (and Muon's momentum) for this step; returns the schedule's factor x cfg.lr."""
    factor = lr_factor(step, cfg, total)
    for opt in parts(optimizer):
        is_muon = type(opt).__name__ == "Muon"
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * factor
            if is_muon:
                group["momentum"] = muon_momentum_at(step, cfg)
    return cfg.lr * factor


def muon_flops_per_step(model: torch.nn.Module) -> float:
    """FLOPs of Muon's Newton-Schulz iterations in one optimizer step (0 for AdamW runs' accounting).

    Per iteration on an m x n matrix (m <= n, torch transposes tall ones): the Gram matrix X X^T (2 m^2 n),
    the polynomial b A + c A A (2 m^3) and its product with X (2 m^2 n).
    """
    total = 0.0
    for _, p in muon_matrices(model):
        m, n = sorted(p.shape)
        total += NS_STEPS * (4.0 * m * m * n + 2.0 * m**3)
    return total


def optimizer_tensors(model: GPT, optimizer) -> dict[str, torch.Tensor]:
    """The optimizer state (AdamW's moments and step counts, Muon's momentum) as flat tensors keyed
    'param name::field', whole even when sharded (FSDP: a collective), so a checkpoint loads the same way
    whatever the number of ranks or the parallelism that wrote it. `optimizer` may be an OptimizerSet."""
    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    out = {}
    for opt in parts(optimizer):
        for group in opt.param_groups:
            for p in group["params"]:
                for key, value in opt.state.get(p, {}).items():
                    value = full_tensor(value)
                    out[f"{names[id(p)]}::{key}"] = value.detach().reshape(value.shape).contiguous()
    return out


def load_optimizer_tensors(model: GPT, optimizer, tensors: dict[str, torch.Tensor]) -> None:
    named = dict(unwrap(model).named_parameters())
    owner = {id(p): (opt, bool(g.get("fused") or g.get("capturable")))
             for opt in parts(optimizer) for g in opt.param_groups for p in g["params"]}
    for key, value in tensors.items():
        name, field = key.split("::")
        p = named.get(name)
        if p is None or id(p) not in owner:
            raise UserError(f"the checkpoint's optimizer state names {name!r}, which this run's optimizer does "
                            f"not train: resume with the optimizer the run was trained with")
        opt, hosted = owner[id(p)]
        # torch keeps AdamW's step count on the CPU, except fused and capturable AdamW (the CUDA default here),
        # whose kernels read it as a float32 tensor beside the parameter (torch's own load_state_dict rule).
        if field != "step":
            value = shard_like(value, p)  # this rank's shard under FSDP
        elif hosted:
            value = value.to(device=p.device, dtype=torch.float32)
        opt.state[p][field] = value
