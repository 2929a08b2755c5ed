"""`homegpt sweep`: a tiny real IsoFLOP sweep, resumed, and its results read back."""

from __future__ import annotations

import csv
import json

import pytest

from homegpt.cli import main
from homegpt.errors import UserError
from homegpt.model.gpt import GPT, count_params
from homegpt.plan.budget import Arch, deepseek_lr, recipe
from homegpt.plan.scaling import LAWS
from homegpt.plan.sweep import RESULT_FIELDS, parse_budgets, read_results_rows, run_config, run_sweep, sweep_shapes
from homegpt.train import config
from homegpt.train.config import DEFAULT_ARCH

BUDGET = 4e9  # two runs of ~14k and ~41k parameters on 16-46k tokens: seconds on a CPU


def quiet(_msg: str) -> None:
    pass


def test_sweep_runs_appends_rows_and_resumes(tmp_path, data_dir, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--data", str(data_dir), "--budgets", f"{BUDGET:g}", "--sizes-per-budget", "2",
            "--spread", "2", "--block-size", "32", "--out", str(out), "--device", "cpu", "--no-progress", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ran"] == 2 and result["skipped"] == 0 and result["threads"] == 1
    rows = read_results_rows(out / "results.csv")
    assert len(rows) == 2 and list(rows[0]) == RESULT_FIELDS
    assert all(r["arch"] == DEFAULT_ARCH and float(r["lr"]) == config.MUON_LR for r in rows)  # the default recipe
    params = [int(r["params"]) for r in rows]
    assert params[0] < params[1]
    for r in rows:
        tokens, flops = int(r["tokens"]), float(r["flops"])
        assert tokens >= BUDGET / (6 * int(r["params"]))  # the schedule covers the planned tokens
        assert flops == pytest.approx(BUDGET, rel=0.1) and float(r["budget"]) == BUDGET
        assert 0 < float(r["loss"]) < 10
        assert (tmp_path / "sweep" / "runs").is_dir()

    # finished runs are skipped
    again = run_sweep(str(data_dir), [BUDGET], 2, out, block_size=32, spread=2, device="cpu", progress=False,
                      log=quiet)
    assert again["ran"] == 0 and again["skipped"] == 2

    # a run whose row was never written (killed after training) resumes from its checkpoint, not from scratch
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, RESULT_FIELDS)
        writer.writeheader()
        writer.writerow(rows[0])
    resumed = run_sweep(str(data_dir), [BUDGET], 2, out, block_size=32, spread=2, device="cpu", progress=False,
                        log=quiet)
    with pytest.raises(UserError, match="holds a sweep of arch modern, not gpt2"):  # one recipe per folder
        run_sweep(str(data_dir), [BUDGET], 2, out, block_size=32, spread=2, device="cpu", progress=False,
                  log=quiet, arch="gpt2")
    assert resumed["ran"] == 1
    last = read_results_rows(out / "results.csv")[-1]
    assert last["run_dir"] == rows[1]["run_dir"] and float(last["loss"]) == pytest.approx(float(rows[1]["loss"]))
    assert float(last["seconds"]) < float(rows[1]["seconds"])


def test_sweep_from_a_source_prepares_once(tmp_path, source):
    out = tmp_path / "s"
    r = run_sweep(source, [2e9], 1, out, vocab_size=300, block_size=16, device="cpu", progress=False, log=quiet)
    assert r["ran"] == 1 and (out / "data" / "manifest.json").is_file()
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    with pytest.raises(UserError, match="holds a sweep over"):
        run_sweep("builtin", [2e9], 1, out, block_size=16, device="cpu", progress=False, log=quiet)


def test_sweep_shapes_are_distinct_and_centred():
    law = LAWS["epoch"]
    shapes = sweep_shapes(law, 1e18, 5, 4.0, 50304, 1024)
    counts = [count_params(s)["total"] for s in shapes]
    assert len(shapes) == 5 and counts == sorted(counts)
    n_opt = law.optimum(1e18)[0]
    assert counts[0] < n_opt < counts[-1]
    assert 3 < counts[-1] / counts[0] < 5.5
    assert all(s.n_embd // s.n_head == 64 for s in shapes)  # real scale: 64-wide heads


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_sweep_runs_use_the_recipe_of_their_arch(arch, tmp_path):
    shapes = sweep_shapes(LAWS["epoch"], BUDGET, 3, 2.0, 512, 32, Arch(arch))
    assert all(s.arch == arch and GPT(s).num_params()["total"] == count_params(s)["total"] for s in shapes)
    cfg = run_config(shapes[0], 10_000, 1024, 8, recipe(Arch(arch), BUDGET), tmp_path, "cpu").resolved()
    assert cfg.model_config(512).to_dict() == shapes[0].to_dict()
    if arch == "gpt2":
        assert (cfg.optimizer, cfg.schedule, cfg.lr) == ("adamw", "cosine", deepseek_lr(BUDGET))
    else:
        assert (cfg.optimizer, cfg.schedule) == ("muon", "wsd")
        assert (cfg.lr, cfg.embedding_lr, cfg.scalar_lr) == (config.MUON_LR, config.MUON_EMBEDDING_LR,
                                                             config.MUON_SCALAR_LR)
    given = run_config(shapes[0], 10_000, 1024, 8, recipe(Arch(arch), BUDGET, lr=0.005), tmp_path, "cpu")
    assert given.lr == 0.005  # --lr replaces the matrices' rate only


def test_results_from_before_the_arch_column_are_read_and_upgraded(tmp_path):
    from homegpt.plan.sweep import append_row

    old_fields = [f for f in RESULT_FIELDS if f != "arch"]
    results = tmp_path / "results.csv"
    old = dict(zip(old_fields, ["1e9", "1000", "2000", "1.2e10", "5.5", "2", "1", "16", "32", "512", "1024",
                                "0.003", "1.0", str(tmp_path / "gone")], strict=True))
    with open(results, "w", newline="") as f:
        writer = csv.DictWriter(f, old_fields)
        writer.writeheader()
        writer.writerow(old)
    assert read_results_rows(results)[0]["arch"] == "gpt2"  # no run.json left to ask: GPT-2, the only one then
    append_row(results, {**old, "arch": "modern", "run_dir": str(tmp_path / "new")})
    rows = read_results_rows(results)
    assert list(rows[0]) == RESULT_FIELDS and [r["arch"] for r in rows] == ["gpt2", "modern"]
    assert rows[0]["loss"] == "5.5" and rows[1]["run_dir"].endswith("new")


@pytest.mark.parametrize("text", ["", "abc", "1e12,-3", "0"])
def test_bad_budgets(text):
    with pytest.raises(UserError, match="--budgets"):
        parse_budgets(text)


def test_bad_sweep_settings(tmp_path, data_dir):
    with pytest.raises(UserError, match="--sizes-per-budget"):
        run_sweep(str(data_dir), [1e9], 0, tmp_path, progress=False, log=quiet)
    with pytest.raises(UserError, match="--spread"):
        run_sweep(str(data_dir), [1e9], 3, tmp_path, spread=0.5, progress=False, log=quiet)
