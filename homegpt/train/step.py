"""One optimisation step, and what keeps a step from failing: a micro-batch that fits, skipped bad updates.

The loop (loop.py) calls train_step once per step: it accumulates this rank's micro-batches into one token
batch (DDP all-reduces gradients on the last micro-batch only, FSDP reduce-scatters each), clips the gradient
norm and updates the weights, unless the loss or the gradients are not finite: then the update is skipped
(BadSteps stops the run after MAX_BAD_STEPS of those in a row). auto_micro_batch picks the micro-batch at
setup (session.py), with real forward/backward passes on a GPU.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.distributed as dist

from homegpt.data.loader import TokenLoader
from homegpt.errors import UserError
from homegpt.model.gpt import GPT, GPTConfig
from homegpt.runtime.device import find_micro_batch, is_out_of_memory
from homegpt.runtime.distributed import full_tensor, min_int
from homegpt.train.config import TrainConfig
from homegpt.train.optim import parts

MAX_BAD_STEPS = 5


def train_step(run_model, model, optimizer, scaler, loader: TokenLoader, autocast, grad_clip: float, world: int,
               fsdp: bool = False):
    """One optimizer step over this rank's micro-batches; returns (mean loss over all ranks, finite?)."""
    batches = loader.next_step()
    loss_sum = torch.zeros((), device=next(model.parameters()).device)
    for i, (x, y) in enumerate(batches):
        # DDP: all-reduce gradients only on the last micro-batch of the step. FSDP reduce-scatters every
        # micro-batch's gradients, so that no rank ever holds a whole unsharded gradient.
        sync = world == 1 or fsdp or i == len(batches) - 1
        with (nullcontext() if sync else run_model.no_sync()), autocast:
            _, loss = run_model(x, y)
        scaled = loss / len(batches)
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += loss.detach()
    if world > 1:
        dist.all_reduce(loss_sum)
    train_loss = float(loss_sum) / (len(batches) * world)
    if scaler is not None:
        for opt in parts(optimizer):
            scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    norm = full_tensor(norm)  # FSDP: a DTensor holding the global norm
    if scaler is not None:
        # fp16: the scaler skips steps with inf/nan gradients itself and lowers the scale, which is routine
        # while it calibrates; only a non-finite loss counts as a bad step.
        for opt in parts(optimizer):
            scaler.step(opt)
        scaler.update()
        finite = math.isfinite(train_loss)
    else:
        finite = math.isfinite(train_loss) and math.isfinite(float(norm))
        if finite:  # a non-finite loss or gradient would poison the weights: skip the update
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return train_loss, finite


class BadSteps:
    """Steps whose update was skipped (non-finite loss or gradients): each is logged, MAX_BAD_STEPS in a row
    end the run with a UserError, a good step starts the count again."""

    def __init__(self, lr: float, log, main_rank: bool) -> None:
        self.lr, self.log, self.main_rank, self.in_a_row = lr, log, main_rank, 0

    def count(self, finite: bool, step: int) -> None:
        """After the step numbered `step` (counted from 0) was taken, finite or not."""
        if finite:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        if self.in_a_row >= MAX_BAD_STEPS:
            raise UserError(f"loss or gradients were not finite for {self.in_a_row} steps in a row at step "
                            f"{step}: lower lr (now {self.lr}) or use dtype = \"fp32\"")
        if self.main_rank:
            self.log(f"step {step}: non-finite loss or gradient, update skipped")


def auto_micro_batch(model: GPT, cfg: TrainConfig, mcfg: GPTConfig, device: torch.device, autocast,
                     world: int) -> int:
    """The largest micro-batch that fits: probed with real forward/backward passes on a GPU.

    Never more than one step's worth of sequences per rank; on CPU and MPS (no out-of-memory signal worth
    probing: they swap) at most 16. Probing runs in eval mode on a private generator, so it draws nothing
    from the RNGs the run depends on. All ranks take the smallest choice.
    """
    largest = max(1, cfg.batch_tokens // (mcfg.block_size * world))
    if device.type != "cuda":
        chosen = find_micro_batch(lambda n: True, min(16, largest))
    else:
        gen = torch.Generator(device=device).manual_seed(0)

        n_params = sum(p.numel() for p in model.parameters())

        def fits(n: int) -> bool:
            x = torch.randint(0, mcfg.vocab_size, (n, mcfg.block_size), device=device, generator=gen)
            model.eval()
            try:
                # AdamW's two moments don't exist until the first step: hold their memory during the probe.
                moments = torch.empty(2 * n_params, device=device)  # noqa: F841
                with autocast:
                    _, loss = model(x, x)
                loss.backward()
                return True
            except RuntimeError as e:
                if not is_out_of_memory(e):
                    raise
                return False
            finally:
                model.zero_grad(set_to_none=True)
                model.train()
                torch.cuda.empty_cache()

        chosen = find_micro_batch(fits, largest)
    return min_int(chosen, world, device)
