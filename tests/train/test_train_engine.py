"""The training engine's robustness: multi-process DDP, preemption, kill -9, numerics guard, the meter."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from homegpt.rundir.checkpoint import checkpoint_dirs
from homegpt.train.config import dump_toml
from homegpt.train.loop import EXIT_PREEMPTED, train

QUIET = dict(progress=False, log=lambda m: None)


def write_config(path, data_dir, **overrides):
    cfg = tiny_config(data_dir, sample_tokens=0, **overrides)
    path.write_text(dump_toml(cfg.to_dict()))
    return path


def losses(run):
    with open(run / "metrics.csv", newline="") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f)]


def final_weights(run):
    return load_file(str(checkpoint_dirs(run)[-1] / "model.safetensors"))


def cli(*args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "homegpt", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for(predicate, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_two_process_ddp_matches_one_process(data_dir, tmp_path):
    """With the default recipe: Muon (and AdamW) on every rank over the all-reduced gradients."""
    config = write_config(tmp_path / "c.toml", data_dir, max_steps=6, eval_interval=6, batch_tokens=512,
                          micro_batch=4)
    single = train(tiny_config(data_dir, sample_tokens=0, max_steps=6, eval_interval=6, batch_tokens=512,
                               micro_batch=4), tmp_path / "one", **QUIET)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "homegpt",
         "train", str(config), "--out", str(tmp_path / "two"), "--no-progress", "--json"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Same windows per step, gradients averaged over ranks: equal up to float summation order.
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=2e-4)
    assert single["tokens_trained"] == 6 * 512
    assert json.loads((tmp_path / "two" / "run.json").read_text())["optimizer"] == "muon"
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def torchrun(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "homegpt", "train", *map(str, args), "--no-progress"],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def keep_first_checkpoints(src, dst, n):
    """A copy of run src as if it had been killed after its n-th checkpoint."""
    shutil.copytree(src, dst)
    for ckpt in checkpoint_dirs(dst)[n:]:
        shutil.rmtree(ckpt)


def test_fsdp_matches_one_process_and_checkpoints_move_between_them(data_dir, tmp_path):
    """FSDP2 on 2 gloo processes: the same trajectory as 1 process; its checkpoints hold whole tensors, so a
    sharded run resumes in one process and a one-process run resumes sharded, continuing the same run."""
    kw = dict(max_steps=6, eval_interval=3, checkpoint_interval=1, keep_checkpoints=10, batch_tokens=512,
              micro_batch=4, optimizer="adamw")
    config = write_config(tmp_path / "c.toml", data_dir, **kw)
    single = train(tiny_config(data_dir, sample_tokens=0, **kw), tmp_path / "one", **QUIET)
    proc = torchrun(config, "--out", tmp_path / "two", "--parallel", "fsdp")
    assert "(FSDP)" in proc.stderr
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=2e-4)
    reference = final_weights(tmp_path / "one")

    def close_to_reference(run):
        weights = final_weights(run)
        return all(torch.allclose(reference[k], weights[k], atol=1e-4) for k in reference)

    assert close_to_reference(tmp_path / "two")
    keep_first_checkpoints(tmp_path / "two", tmp_path / "two_then_one", 3)
    resumed = train(tiny_config(data_dir, sample_tokens=0, **kw), tmp_path / "two_then_one", resume=True, **QUIET)
    assert resumed["val_loss"] == pytest.approx(single["val_loss"], abs=1e-4)
    assert close_to_reference(tmp_path / "two_then_one")
    keep_first_checkpoints(tmp_path / "one", tmp_path / "one_then_two", 3)
    torchrun(tmp_path / "one_then_two", "--resume", "--parallel", "fsdp")
    assert close_to_reference(tmp_path / "one_then_two")
    assert losses(tmp_path / "one_then_two") == pytest.approx(losses(tmp_path / "one"), abs=2e-4)


def test_fsdp_refuses_fp16_and_muon():
    from homegpt.errors import UserError
    from homegpt.train.config import TrainConfig
    from homegpt.train.session import check_fsdp

    check_fsdp(TrainConfig(parallel="fsdp", dtype="bf16", optimizer="adamw").resolved(), torch.device("cpu"))
    with pytest.raises(UserError, match='set dtype = "bf16" or "fp32"'):
        check_fsdp(TrainConfig(parallel="fsdp", dtype="fp16").resolved(), torch.device("cpu"))
    with pytest.raises(UserError, match='optimizer = "muon" needs whole matrices'):
        check_fsdp(TrainConfig(parallel="fsdp").resolved(), torch.device("cpu"))


def test_sigterm_writes_a_checkpoint_and_exits_75(data_dir, tmp_path):
    config = write_config(tmp_path / "c.toml", data_dir, max_steps=100000, eval_interval=100000)
    run = tmp_path / "run"
    proc = cli("train", config, "--out", run, "--no-progress")
    wait_for(lambda: (run / "metrics.csv").exists() and len(losses(run)) >= 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err
    stopped_at = int(checkpoint_dirs(run)[-1].name.split("-")[1])
    assert stopped_at == len(losses(run)) >= 2
    resumed = cli("train", run, "--resume", "--max-steps", stopped_at + 2, "--no-progress")
    resumed.communicate(timeout=120)
    assert resumed.returncode == 0
    assert checkpoint_dirs(run)[-1].name == f"step-{stopped_at + 2:06d}"


def test_kill_9_then_resume_reaches_the_uninterrupted_result(data_dir, tmp_path):
    steps = 40
    config = write_config(tmp_path / "c.toml", data_dir, max_steps=steps, eval_interval=steps,
                          checkpoint_interval=3, dropout=0.1)
    straight = cli("train", config, "--out", tmp_path / "straight", "--no-progress")
    straight.communicate(timeout=300)
    run = tmp_path / "killed"
    proc = cli("train", config, "--out", run, "--no-progress")
    wait_for(lambda: len(checkpoint_dirs(run)) >= 2)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.communicate()
    assert checkpoint_dirs(run), "a complete checkpoint survives"
    resumed = cli("train", run, "--resume", "--no-progress")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    a, b = final_weights(tmp_path / "straight"), final_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(run) == losses(tmp_path / "straight")  # rows past the checkpoint were redone, not doubled


def test_one_non_finite_step_is_skipped(data_dir, tmp_path, monkeypatch):
    from homegpt.model import gpt as model_mod

    real_forward = model_mod.GPT.forward
    calls = {"n": 0}

    def flaky_forward(self, idx, targets=None, cache=None, reduction="mean"):
        logits, loss = real_forward(self, idx, targets, cache, reduction)
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] == 3:  # the second micro-batch of step 2
                loss = loss * float("inf")
        return logits, loss

    monkeypatch.setattr(model_mod.GPT, "forward", flaky_forward)
    messages = []
    result = train(tiny_config(data_dir, max_steps=4, sample_tokens=0), tmp_path / "r", progress=False,
                   log=messages.append)
    assert result["finished"] and result["step"] == 4
    assert any("update skipped" in m for m in messages)
    assert all(torch.isfinite(v).all() for v in final_weights(tmp_path / "r").values())


def test_meter_and_tensorboard(data_dir, tmp_path):
    pytest.importorskip("tensorboard")
    train(tiny_config(data_dir, max_steps=3, sample_tokens=0, price=3600.0, tensorboard=True), tmp_path / "r", **QUIET)
    with open(tmp_path / "r" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(0 < float(r["mfu"]) < 1.5 and float(r["tokens_per_s"]) > 0 for r in rows)
    assert 0 < float(rows[-1]["cost_usd"]) and float(rows[0]["cost_usd"]) <= float(rows[-1]["cost_usd"])
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "r" / "tensorboard").iterdir())
