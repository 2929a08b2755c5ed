"""The live meter's CPU peak and MFU, and a time-budgeted run (max_seconds)."""

import json

import pytest
import torch
from conftest import tiny_config

from homegpt.meter import Meter, cpu_peak, cpu_peak_cache, measure_matmul_flops


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

    from homegpt.train import train

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
