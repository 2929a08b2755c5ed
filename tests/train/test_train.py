import csv
import json
import math

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from homegpt.errors import UserError
from homegpt.rundir.checkpoint import checkpoint_dirs, load_run
from homegpt.train.config import TrainConfig, load_config
from homegpt.train.loop import train
from homegpt.train.optim import lr_factor

QUIET = dict(progress=False, log=lambda m: None)


def test_run_directory_is_complete(trained_run):
    run, result = trained_run
    for name in ("run.json", "config.toml", "tokenizer.json", "metrics.csv", "samples.txt", "loss.png", "eval.json"):
        assert (run / name).is_file(), name
    assert checkpoint_dirs(run)[-1].name == "step-000006"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 6 and rows[2]["val_loss"] and not rows[0]["val_loss"]
    assert result["val_perplexity"] == pytest.approx(math.exp(result["val_loss"]))
    assert result["params"] == json.loads((run / "run.json").read_text())["params"]["total"]


def test_resolved_config_reads_back_unchanged(trained_run, data_dir):
    run, _ = trained_run
    assert load_config(run / "config.toml") == tiny_config(data_dir).resolved()


def test_training_lowers_held_out_loss(data_dir, tmp_path):
    result = train(tiny_config(data_dir, max_steps=30, eval_interval=30, sample_tokens=0), tmp_path / "r", **QUIET)
    vocab = json.loads((data_dir / "manifest.json").read_text())["model_vocab_size"]
    assert result["val_loss"] < math.log(vocab) - 0.7


def test_schedule_warmup_then_cosine_to_ten_percent():
    cfg = TrainConfig(arch="gpt2", warmup_steps=10).resolved()
    assert cfg.schedule == "cosine" and cfg.min_lr_ratio == 0.1
    assert lr_factor(0, cfg, 100) == pytest.approx(0.1)
    assert lr_factor(9, cfg, 100) == pytest.approx(1.0)
    assert lr_factor(55, cfg, 100) == pytest.approx(0.55)
    assert lr_factor(100, cfg, 100) == pytest.approx(0.1)


@pytest.mark.parametrize("recipe", [{}, {"arch": "gpt2"}], ids=["modern-muon", "gpt2-adamw"])
def test_resume_continues_the_identical_run(data_dir, tmp_path, recipe):
    """Bitwise: weights, optimizer state (Muon's momentum, AdamW's moments), schedule, RNGs, data position."""
    cfg = tiny_config(data_dir, max_steps=8, eval_interval=4, dropout=0.1, **recipe)
    whole = train(cfg, tmp_path / "whole", **QUIET)
    part = train(cfg, tmp_path / "split", stop_after=3, **QUIET)
    assert part["finished"] is False and part["step"] == 3
    resumed = train(cfg, tmp_path / "split", resume=True, **QUIET)
    assert resumed["val_loss"] == whole["val_loss"]
    a = load_file(str(checkpoint_dirs(tmp_path / "whole")[-1] / "model.safetensors"))
    b = load_file(str(checkpoint_dirs(tmp_path / "split")[-1] / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda d: [r["train_loss"] for r in csv.DictReader(open(tmp_path / d / "metrics.csv"))]  # noqa: E731
    assert losses("whole") == losses("split")


def test_refuses_to_mix_runs(data_dir, trained_run, tmp_path):
    run, _ = trained_run
    with pytest.raises(UserError, match="already holds a run"):
        train(tiny_config(data_dir), run, **QUIET)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        train(tiny_config(data_dir), tmp_path / "other", **QUIET)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_resuming_past_max_steps_is_refused_and_a_finished_run_says_so(data_dir, trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(UserError, match=r"already at step 6, past the 4 steps asked for: give --max-steps"):
        train(tiny_config(data_dir, max_steps=4), run, resume=True, **QUIET)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing rewritten
    said = []
    train(tiny_config(data_dir), run, resume=True, progress=False, log=said.append)
    assert any("it is finished, nothing left to train" in m for m in said), said


def test_a_warmup_as_long_as_the_run_is_warned_about(data_dir, tmp_path):
    said = []
    train(tiny_config(data_dir, max_steps=3, warmup_steps=5, eval_interval=3), tmp_path / "run", progress=False,
          log=said.append)
    assert any(m.startswith("warning: warmup_steps = 5 is not shorter than the run's 3 steps") for m in said), said


def test_corrupted_checkpoint_is_a_user_error(data_dir, tmp_path):
    run = tmp_path / "r"
    train(tiny_config(data_dir, max_steps=3, sample_tokens=0), run, **QUIET)
    weights = checkpoint_dirs(run)[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="truncated or corrupted"):
        load_run(run, device="cpu")


def test_tokenizer_swapped_under_a_run_is_detected(trained_run, tmp_path, tokenizer_dir, source):
    import shutil

    from homegpt.data.tokenizer import train_tokenizer

    run, _ = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    train_tokenizer(source, 320, tmp_path / "tok2")
    shutil.copyfile(tmp_path / "tok2" / "tokenizer.json", copy / "tokenizer.json")
    with pytest.raises(UserError, match="not the tokenizer this run was trained with"):
        load_run(copy, device="cpu")


def test_non_finite_loss_skips_then_stops(data_dir, tmp_path, monkeypatch):
    from homegpt.model import gpt as model_mod

    real_forward = model_mod.GPT.forward

    def nan_forward(self, idx, targets=None, cache=None, reduction="mean"):
        logits, loss = real_forward(self, idx, targets, cache, reduction)
        return logits, (loss * float("nan") if (loss is not None and self.training) else loss)

    monkeypatch.setattr(model_mod.GPT, "forward", nan_forward)
    with pytest.raises(UserError, match="not finite"):
        train(tiny_config(data_dir, max_steps=10, sample_tokens=0), tmp_path / "nan", **QUIET)


def test_keeps_the_best_checkpoint_by_held_out_loss_and_commands_can_use_it(data_dir, tmp_path, capsys):
    """keep_checkpoints = 1 keeps the newest checkpoint and, besides it, the one with the lowest held-out loss;
    eval, sample and export take --step best (and export describes that checkpoint, not the last one)."""
    from homegpt.cli import main
    from homegpt.rundir.checkpoint import best_checkpoint, checkpoint_val_loss

    run = tmp_path / "r"
    # lr 0.1 overshoots: the held-out loss rises after step 2, so the best checkpoint is not the newest.
    train(tiny_config(data_dir, max_steps=4, eval_interval=2, keep_checkpoints=1, lr=0.1, sample_tokens=0,
                      arch="gpt2"), run, **QUIET)
    first, last = checkpoint_dirs(run)
    assert (first.name, last.name) == ("step-000002", "step-000004")
    assert checkpoint_val_loss(first) < checkpoint_val_loss(last)
    assert best_checkpoint(run) == first

    assert main(["eval", str(run), "--step", "best", "--json"]) == 0
    best_eval = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert best_eval["step"] == 2 and best_eval["loss"] < json.loads((run / "eval.json").read_text())["val_loss"]
    assert main(["sample", str(run), "--step", "best", "--max-new-tokens", "4", "--json"]) == 0
    assert main(["export", str(run), str(tmp_path / "hf"), "--step", "best", "--json"]) == 0
    meta = json.loads((tmp_path / "hf" / "homegpt.json").read_text())
    assert meta["step"] == 2 and meta["eval"]["tokens_trained"] == 2 * 512
    assert meta["eval"]["val_loss"] == pytest.approx(best_eval["loss"], rel=1e-6)
    capsys.readouterr()
    assert main(["eval", str(run), "--step", "3"]) == 2
    assert "no checkpoint at step 3" in capsys.readouterr().err


def test_a_run_without_evaluated_checkpoints_has_no_best(data_dir, tmp_path, capsys):
    from homegpt.cli import main

    run = tmp_path / "r"
    train(tiny_config(data_dir, max_steps=2, eval_interval=100, checkpoint_interval=1, sample_tokens=0), run,
          stop_after=1, **QUIET)
    assert main(["sample", str(run), "--step", "best"]) == 2
    assert "records a held-out loss" in capsys.readouterr().err


def test_fused_adamw_resumes_with_its_step_count_beside_the_parameters():
    """Fused AdamW (used on CUDA) reads `step` as a float32 tensor on the parameter's device; a resumed
    optimizer must continue exactly like the uninterrupted one (fused AdamW also runs on CPUs)."""
    from homegpt.model.gpt import GPT, GPTConfig
    from homegpt.train.optim import load_optimizer_tensors, optimizer_tensors

    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=64)
    x = torch.randint(0, 64, (2, 9))

    def step(model, opt):
        model(x[:, :-1], x[:, 1:])[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    a = GPT(cfg)
    b = GPT(cfg)
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2, fused=True)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, fused=True)
    step(a, opt_a)
    step(b, opt_b)
    saved = optimizer_tensors(b, opt_b)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, fused=True)
    load_optimizer_tensors(b, opt_b, saved)
    state = opt_b.state[b.lm_head.weight]
    assert state["step"].dtype == torch.float32 and state["step"].device == b.lm_head.weight.device
    step(a, opt_a)
    step(b, opt_b)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters(), strict=True))
