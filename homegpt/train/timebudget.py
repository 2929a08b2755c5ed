"""A training run's length by the clock (`max_seconds`): re-planned from the measured speed while the
schedule allows it (docs/training.md, "Training to a time budget")."""

from __future__ import annotations

import time

import torch

from homegpt.runtime.distributed import min_int
from homegpt.train.config import TrainConfig
from homegpt.train.optim import decay_start


class TimeBudget:
    """max_seconds: the run's length re-planned from the measured speed while the schedule still allows it.

    Remaining steps = time left / (the mean training time per step over the later half of this invocation's
    steps + the measured cost of an evaluation and checkpoint spread over eval_interval steps). A window of
    many steps, not the meter's instantaneous speed: one slow moment read at the last re-plan would fix a
    too-short run (measured: a demo that ended 13 s early). The final evaluation scores the whole held-out
    split, `final_evals` times a periodic one (its tokens over eval_tokens): that time is kept aside too
    (unreserved, it made a demo on a 10 MB file end 7% late). Re-planning stops where the rate starts to
    depend on the length (optim.decay_start), so the decay is always whole. Every rank takes the smallest
    estimate.
    """

    MIN_WINDOW = 8  # steps; before that, the meter's speed

    def __init__(self, cfg: TrainConfig, wall_before: float, final_evals: float = 0.0) -> None:
        self.cfg, self.before, self.start = cfg, wall_before, time.perf_counter()
        self.final_evals = final_evals
        self.eval_costs: list[float] = []
        self.eval_total = 0.0
        self.marks: list[tuple[int, float, float]] = []  # (step, wall, evaluation seconds so far) per re-plan

    def wall(self) -> float:
        """Wall-clock seconds of training so far (evaluations included), over all calls of a resumed run."""
        return self.before + time.perf_counter() - self.start

    def bookkeeping(self, seconds: float, evaluated: bool) -> None:
        if evaluated:  # other steps' bookkeeping (logging, a checkpoint) stays in the steps' own time
            self.eval_total += seconds
            self.eval_costs.append(seconds)

    def step_seconds(self, step: int, tokens_per_s: float, batch_tokens: int) -> float:
        """Training seconds per step (evaluations excluded) over the later half of the steps seen so far."""
        now = self.wall()
        self.marks.append((step, now, self.eval_total))
        first, last = self.marks[len(self.marks) // 2], self.marks[-1]
        if last[0] - first[0] < self.MIN_WINDOW:
            return batch_tokens / tokens_per_s
        return max(1e-9, (last[1] - first[1]) - (last[2] - first[2])) / (last[0] - first[0])

    def replan(self, step: int, total: int, tokens_per_s: float, batch_tokens: int, world: int,
               device: torch.device) -> int:
        if step < 3 or tokens_per_s <= 0 or step >= decay_start(self.cfg, total):
            return total
        recent = self.eval_costs[-3:]
        evaluation = sum(recent) / len(recent) if recent else 0.0
        per_step = self.step_seconds(step, tokens_per_s, batch_tokens) + evaluation / self.cfg.eval_interval
        left = max(0.0, self.cfg.max_seconds - self.wall() - self.final_evals * evaluation)
        return min_int(max(step + 1, step + int(left / per_step)), world, device)
