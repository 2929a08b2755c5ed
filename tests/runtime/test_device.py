"""Precision and micro-batch choices (the GPU paths' logic, exercised on the CPU)."""

import json
import os

import pytest
import torch
from conftest import tiny_config

from homegpt.errors import UserError
from homegpt.rundir.checkpoint import checkpoint_dirs
from homegpt.runtime.device import autocast_for, find_micro_batch, make_scaler, resolve_dtype
from homegpt.train.loop import train

QUIET = dict(progress=False, log=lambda m: None)


def test_find_micro_batch_halves_until_it_fits():
    tried = []

    def fits(n):
        tried.append(n)
        return n <= 12

    assert find_micro_batch(fits, 64) == 8 and tried == [64, 32, 16, 8]
    assert find_micro_batch(lambda n: True, 5) == 4
    with pytest.raises(UserError, match="out of memory"):
        find_micro_batch(lambda n: False, 8)


def test_dtype_resolution_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_dtype(cpu, "auto") == "fp32" and make_scaler(cpu, "auto") is None
    assert make_scaler(cpu, "fp16") is not None and make_scaler(cpu, "bf16") is None
    with pytest.raises(UserError, match="dtype"):
        resolve_dtype(cpu, "fp8")
    with autocast_for(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_automatic_micro_batch_on_cpu(data_dir, tmp_path):
    messages = []
    result = train(tiny_config(data_dir, micro_batch=0, batch_tokens=1024, max_steps=2, sample_tokens=0),
                   tmp_path / "r", progress=False, log=messages.append)
    assert any("micro_batch = 16" in m for m in messages)  # 1024 tokens / 64 per window = 16 sequences
    assert result["tokens_trained"] == 2 * 1024


def test_fp16_with_loss_scaling_trains_and_resumes(data_dir, tmp_path):
    cfg = tiny_config(data_dir, dtype="fp16", max_steps=4, eval_interval=2, sample_tokens=0)
    part = train(cfg, tmp_path / "r", stop_after=2, **QUIET)
    state = json.loads((checkpoint_dirs(tmp_path / "r")[-1] / "state.json").read_text())
    assert part["step"] == 2 and state["grad_scaler"]["scale"] > 0
    result = train(cfg, tmp_path / "r", resume=True, **QUIET)
    assert result["finished"] and result["val_loss"] < 7


def test_cpu_allocator_tuning_applies_on_linux_and_can_be_turned_off():
    """Run in fresh interpreters: the setting is process-wide."""
    import subprocess
    import sys

    code = "from homegpt.runtime.device import tune_cpu_allocator as t; print(t(), t())"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HOMEGPT_TUNE_MALLOC": "0"}).stdout.split()
    assert off == ["False", "False"]
    assert on == (["True", "True"] if sys.platform.startswith("linux") else ["False", "False"])
