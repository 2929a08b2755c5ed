"""The live meter's CPU peak and MFU, and a time-budgeted run (max_seconds)."""

import json

import pytest
import torch
from conftest import tiny_config

from homegpt.train.meter import Meter, cpu_peak, cpu_peak_cache, measure_matmul_flops


def test_mfu_never_exceeds_one_and_a_low_peak_is_raised():
    meter = Meter(flops_per_token=1e6, peak=1e9, total_steps=10)
    meter.step(tokens=4000, seconds=1.0)  # 4e9 FLOP/s achieved against a 1e9 "peak"
    assert meter.mfu == pytest.approx(1.0) and meter.peak == pytest.approx(4e9)
    meter.step(tokens=1000, seconds=1.0)
    assert 0 < meter.mfu < 1


def test_cpu_peak_keeps_the_best_rate_measured_on_this_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMEGPT_CACHE", str(tmp_path))
    first = cpu_peak(torch.device("cpu"))
    stored = json.loads(cpu_peak_cache().read_text())
    assert list(stored.values()) == [first]
    key = next(iter(stored))
    cpu_peak_cache().write_text(json.dumps({key: first * 100}))  # an earlier, quieter reading
    assert cpu_peak(torch.device("cpu")) == first * 100
    cpu_peak_cache().write_text("not json")  # a damaged cache is measured over, not fatal
    assert cpu_peak(torch.device("cpu")) > 0


def test_matmul_rate_is_the_best_of_repeats_over_a_minimum_time():
    assert measure_matmul_flops(torch.device("cpu"), n=128, min_seconds=0.05) > 0


def test_a_time_budgeted_run_replans_its_length_and_keeps_a_whole_decay(data_dir, tmp_path):
    """max_seconds: the step count is re-planned from the measured speed during the flat part of WSD; the
    schedule still ends with its decay to the floor at the last step. The clock is real, so the length is
    checked loosely (a loaded machine takes fewer steps) and the schedule exactly."""
    import csv

    from homegpt.train.loop import train

    cfg = tiny_config(data_dir, max_steps=100000, max_seconds=4.0, eval_interval=25, sample_tokens=0,
                      warmup_steps=2, decay_fraction=0.5)
    result = train(cfg, tmp_path / "r", progress=False, log=lambda m: None)
    rows = list(csv.DictReader(open(tmp_path / "r" / "metrics.csv")))
    assert result["finished"] and 4 <= len(rows) < 100000
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[-1] == pytest.approx(0.0)  # WSD decays to min_lr_ratio = 0 at the last step
    peak = max(lrs)
    flat = [i for i, lr in enumerate(lrs) if lr == pytest.approx(peak)]
    assert flat and all(a >= b for a, b in zip(lrs[flat[-1]:], lrs[flat[-1] + 1:], strict=False))
    state = json.loads((sorted((tmp_path / "r" / "checkpoints").iterdir())[-1] / "state.json").read_text())
    assert state["total_steps"] == len(rows) and state["wall_s"] > 0


def test_the_time_budget_plans_from_the_later_half_of_the_steps_not_one_reading():
    """Steps took 1 s, then 2 s: the plan uses the later half's 2 s per step, whatever the meter's
    instantaneous speed says, and evaluation time is spread over eval_interval rather than counted as steps."""
    from homegpt.train.timebudget import TimeBudget

    cfg = tiny_config("unused", max_seconds=200.0, eval_interval=10, decay_fraction=0.2)
    budget = TimeBudget(cfg, 0.0)
    now = {"t": 0.0}
    budget.wall = lambda: now["t"]
    total = 1000
    for step in range(41):
        now["t"] = float(step) if step <= 20 else 20.0 + 2 * (step - 20)
        if step == 30:
            budget.bookkeeping(0.0, evaluated=True)  # a free evaluation: nothing to spread
        total = budget.replan(step, total, tokens_per_s=1e9, batch_tokens=512, world=1, device=torch.device("cpu"))
    # at step 40, wall 60 s: 140 s left at 2 s per step (steps 20..40) = 70 more steps
    assert total == 40 + 70
