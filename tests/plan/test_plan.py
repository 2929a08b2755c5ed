"""`homegpt plan` and `homegpt fit` through the real CLI, the GPU table, shapes and the written config."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
import torch

from homegpt.cli import main
from homegpt.errors import UserError
from homegpt.model.gpt import GPT, GPTConfig, count_params
from homegpt.plan.budget import Arch, count_data, deepseek_lr, measure_plan, plan, search_shape, write_config
from homegpt.runtime.hardware import GPUS, detect_gpu, lookup_gpu
from homegpt.train import config
from homegpt.train.config import DEFAULT_ARCH, load_config

PLAN_KEYS = {"flops", "n_opt", "d_opt", "tokens_per_param", "predicted_loss", "model", "batch_tokens", "lr",
             "hours", "cost_usd", "recipe"}
RECIPE_KEYS = {"arch", "mlp", "tie_embeddings", "optimizer", "schedule", "lr", "embedding_lr", "head_lr", "scalar_lr",
               "min_lr_ratio", "decay_fraction", "lr_rule"}
COMPUTE_OPTIMAL = Path(__file__).parents[2] / "recipes" / "bookcorpus-compute-optimal.toml"


def model_of(m: dict) -> GPTConfig:
    """The GPTConfig a plan's "model" describes."""
    return GPTConfig(m["n_layer"], m["n_head"], m["n_embd"], m["block_size"], m["vocab_size"], arch=m["arch"],
                     mlp=m["mlp"], tie_embeddings=m["tie_embeddings"])


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def run_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_fifty_dollar_recipe_point(capsys):
    r = run_json(capsys, "plan", "--flops", "3.2e17", "--law", "hoffmann-rounded")
    assert PLAN_KEYS <= set(r)
    assert {"n_layer", "n_head", "n_embd", "block_size", "vocab_size", "params"} <= set(r["model"])
    assert r["n_opt"] == pytest.approx(48.2e6, rel=0.03)
    assert r["d_opt"] == pytest.approx(1.107e9, rel=0.03)
    m = r["model"]
    assert m["params"] == pytest.approx(r["n_opt"], rel=0.05)
    assert m["n_embd"] % 64 == 0 and m["n_head"] == m["n_embd"] // 64
    assert m["arch"] == DEFAULT_ARCH and RECIPE_KEYS <= set(r["recipe"]) and r["lr"] == r["recipe"]["lr"]
    assert GPT(model_of(m)).num_params()["total"] == m["params"]  # the reported count is the real model's
    assert r["train_tokens"] * 6 * m["params"] == pytest.approx(3.2e17, rel=1e-6)  # same compute on the real shape
    assert r["hours"] is None and r["cost_usd"] is None  # no hardware given: no time or price invented
    assert "not a promise" in r["predicted_loss_note"]


@pytest.mark.parametrize("arch", ["gpt2", "modern", "modern-untied"])
@pytest.mark.parametrize("target", [3e5, 2e6, 1.2e7, 8e7, 4e8, 3e9])
def test_shape_search_is_close_sensible_and_exact(target, arch):
    vocab, block = (50304, 1024) if target > 1e7 else (512, 256)
    untied = arch == "modern-untied"
    if untied and vocab * 64 * 2 > target / 2:  # the untied 50k-token head alone is most of the budget
        pytest.skip("no 64-wide shape: the embedding and head take the budget (covered by the count test)")
    cfg = search_shape(target, vocab, block, arch=Arch(arch.split("-")[0], tie_embeddings=not untied))
    total = count_params(cfg)["total"]
    assert cfg.arch == arch.split("-")[0]
    # within 12% (then the aspect ratio decides); small models have few shapes (fewer still when an untied
    # 50k-token head doubles the embedding, the bulk of a 12M model), larger ones plenty
    assert abs(math.log(total / target)) < math.log(1.12 if target < 5e7 else 1.03)
    assert cfg.n_embd % 64 == 0 and cfg.n_embd // cfg.n_head == 64 and cfg.n_layer >= 2
    if target >= 1e7:  # plenty of shapes: the preferred aspect band
        assert 32 <= cfg.n_embd / cfg.n_layer <= 128
    else:  # few 64-wide shapes this small: the relaxed band
        assert 8 <= cfg.n_embd / cfg.n_layer <= 256
    if total < 5e7:  # small enough to build here: the count is the instantiated model's
        assert GPT(cfg).num_params()["total"] == total


@pytest.mark.parametrize("mlp, tied", [("relu2", False), ("swiglu", False), ("relu2", True), ("swiglu", True)])
def test_modern_plan_counts_the_real_modern_model(capsys, mlp, tied):
    r = run_json(capsys, "plan", "--flops", "1e13", "--vocab-size", "512", "--block-size", "64", "--mlp", mlp,
                 *(["--tied"] if tied else []))
    m = r["model"]
    assert (m["arch"], m["mlp"], m["tie_embeddings"]) == ("modern", mlp, tied)  # modern unties by default
    model = GPT(model_of(m))
    assert model.num_params()["total"] == m["params"] == count_params(model_of(m))["total"]
    assert m["params"] != count_params(GPTConfig(m["n_layer"], m["n_head"], m["n_embd"], 64, 512))["total"]
    rec = r["recipe"]
    assert (rec["optimizer"], rec["schedule"], rec["min_lr_ratio"]) == ("muon", "wsd", 0.0)
    assert (rec["lr"], rec["embedding_lr"], rec["head_lr"], rec["scalar_lr"]) == (
        config.MUON_LR, config.MUON_EMBEDDING_LR, config.MUON_HEAD_LR, config.MUON_SCALAR_LR)
    assert r["lr"] == config.MUON_LR  # Muon's rate does not follow DeepSeek's compute rule


def test_arch_gpt2_plans_as_before(capsys):
    # the 51M run's budget: what the planner chose before the modern recipe existed
    r = run_json(capsys, "plan", "--flops", "3.4e17", "--vocab-size", "50304", "--block-size", "1024",
                 "--unique-tokens", "1.1e9", "--arch", "gpt2")
    m = r["model"]
    assert (m["arch"], m["n_layer"], m["n_embd"], m["n_head"], m["params"]) == ("gpt2", 6, 512, 8, 45_195_264)
    assert r["train_tokens"] == 1_253_818_690 and r["batch_tokens"] == 131072 and r["warmup_steps"] == 191
    assert r["lr"] == deepseek_lr(3.4e17) == r["recipe"]["lr"] == r["recipe"]["embedding_lr"]
    assert (r["recipe"]["optimizer"], r["recipe"]["schedule"], r["recipe"]["min_lr_ratio"]) == ("adamw", "cosine", 0.1)
    assert GPT(model_of(m)).num_params()["total"] == m["params"]
    assert "45,195,264 parameters on 1,253,818,690 tokens" in COMPUTE_OPTIMAL.read_text()  # its comment says so
    modern = plan(flops=3.4e17, vocab_size=50304, block_size=1024, unique_tokens=1.1e9)
    assert modern["model"]["params"] != m["params"] and modern["batch_tokens"] == r["batch_tokens"]


def test_compute_optimal_recipe_is_what_plan_writes(tmp_path):
    """recipes/bookcorpus-compute-optimal.toml is the command in its comment, run today (a change to the planner
    or to train/config.py's learning rates means: run that command again)."""
    written = tmp_path / "co.toml"
    write_config(plan(flops=3.4e17, vocab_size=50304, block_size=1024, unique_tokens=1.1e9), written)
    ours, recipe = (tomllib.loads(p.read_text()) for p in (written, COMPUTE_OPTIMAL))
    assert {k: v for k, v in recipe.items() if k not in ("data_dir", "eval_tokens")} == {
        k: v for k, v in ours.items() if k != "data_dir"}
    assert recipe["arch"] == DEFAULT_ARCH and recipe["lr"] == pytest.approx(config.MUON_LR, rel=5e-3)


def test_dollar_budget_spends_the_budget(capsys):
    r = run_json(capsys, "plan", "--budget-usd", "50", "--gpu", "v100", "--price", "2.5")
    assert r["cost_usd"] == pytest.approx(50, rel=1e-6) and r["hours"] == pytest.approx(20, rel=1e-6)
    # hardware FLOPs (with attention) are what the GPU delivers in those hours
    hw = r["hardware"]
    assert r["hardware_flops"] == pytest.approx(20 * 3600 * hw["flops_per_s_per_gpu"], rel=1e-6)
    assert hw["mfu"] == lookup_gpu("v100").default_mfu


def test_gpu_hours_across_gpus(capsys):
    r = run_json(capsys, "plan", "--gpu-hours", "64", "--gpu", "H100", "--num-gpus", "8", "--mfu", "0.4")
    assert r["hours"] == pytest.approx(8, rel=1e-6)
    assert r["cost_usd"] == pytest.approx(64 * GPUS["h100"].price_per_hour, rel=1e-6)
    assert r["hardware"]["flops_per_s_per_gpu"] == pytest.approx(0.4 * 989e12)


def test_data_constrained_plan_repeats_data(capsys):
    free = plan(flops=3.2e17)
    r = run_json(capsys, "plan", "--flops", "3.2e17", "--unique-tokens", "2e8")
    assert r["data"]["constrained"] and r["n_opt"] < free["n_opt"]
    assert r["data"]["epochs"] == pytest.approx(r["train_tokens"] / 2e8, rel=1e-6)
    assert r["data"]["text_tokens"] == 200_000_000
    assert plan(flops=3.2e17, unique_tokens=1e11)["n_opt"] == pytest.approx(free["n_opt"])


def test_written_config_is_accepted_and_trains(tmp_path, data_dir, capsys):
    path = tmp_path / "planned.toml"
    r = run_json(capsys, "plan", "--flops", "2e9", "--block-size", "32", "--data-dir", str(data_dir),
                 "--write-config", str(path), "--plot", str(tmp_path / "iso.png"))
    vocab = r["model"]["vocab_size"]
    assert vocab == count_data(str(data_dir))["vocab_size"]  # the tokenizer's vocabulary, not GPT-2's
    assert r["data"]["unique_tokens"] == count_data(str(data_dir))["tokens"]
    cfg = load_config(path)
    m = cfg.model_config(vocab)
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size) == tuple(r["model"][k] for k in
                                                                  ("n_layer", "n_head", "n_embd", "block_size"))
    assert cfg.max_tokens == r["train_tokens"] and cfg.total_steps() == r["steps"]
    assert (tmp_path / "iso.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 40k-parameter model: a second thread only adds synchronisation
    try:
        assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress", "--eval-tokens", "512",
                     "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["params"] == r["model"]["params"]
    assert result["tokens_trained"] >= r["train_tokens"]
    trained = load_config(tmp_path / "run" / "config.toml")  # the resolved config the run used
    rec = r["recipe"]
    assert (trained.arch, trained.optimizer, trained.schedule) == (DEFAULT_ARCH, rec["optimizer"], rec["schedule"])
    for key in ("lr", "embedding_lr", "head_lr", "scalar_lr", "min_lr_ratio"):
        assert getattr(trained, key) == pytest.approx(rec[key], rel=5e-3), key


def test_written_gpt2_config_spells_out_adamw(tmp_path, capsys):
    path = tmp_path / "gpt2.toml"
    r = run_json(capsys, "plan", "--flops", "2e9", "--block-size", "32", "--vocab-size", "512", "--arch", "gpt2",
                 "--write-config", str(path))
    cfg = load_config(path)
    assert (cfg.arch, cfg.optimizer, cfg.schedule) == ("gpt2", "adamw", "cosine")
    assert cfg.lr == pytest.approx(deepseek_lr(2e9), rel=5e-3) and "AdamW at peak lr" in path.read_text()
    assert count_params(cfg.model_config(512))["total"] == r["model"]["params"]


def test_config_without_data_dir_says_where_to_point_it(tmp_path, capsys):
    path = tmp_path / "c.toml"
    run_json(capsys, "plan", "--flops", "3.2e17", "--write-config", str(path))
    text = path.read_text()
    assert 'data_dir = "data"' in text and "homegpt prepare" in text
    assert load_config(path).preset == ""


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_measured_throughput_sets_the_hours(monkeypatch, arch):
    import homegpt.train.loop

    timed = []
    real = homegpt.train.loop.measure_throughput

    def measure(cfg, vocab_size, **kwargs):
        timed.append((cfg.resolved().optimizer, count_params(cfg.model_config(vocab_size))["total"]))
        return real(cfg, vocab_size, **kwargs)

    monkeypatch.setattr(homegpt.train.loop, "measure_throughput", measure)
    r = measure_plan(steps=1, device="cpu", flops=1e10, vocab_size=512, block_size=32, arch=arch)
    hw = r["hardware"]
    assert hw["measured"] and hw["device"] == "cpu" and hw["flops_per_s_per_gpu"] > 0
    assert r["hours"] == pytest.approx(r["hardware_flops"] / hw["flops_per_s_per_gpu"] / 3600)
    # what was timed is the planned architecture with its recipe's optimizer
    assert timed[-1] == (r["recipe"]["optimizer"], r["model"]["params"]) and r["model"]["arch"] == arch


@pytest.mark.parametrize("argv, message", [
    (["--budget-usd", "0", "--gpu", "h100"], "--budget-usd must be a positive number"),
    (["--budget-usd", "-5", "--gpu", "h100"], "--budget-usd must be a positive number"),
    (["--flops", "0"], "--flops must be a positive number"),
    (["--gpu-hours", "-1", "--gpu", "a100"], "--gpu-hours must be a positive number"),
    (["--budget-usd", "50", "--gpu", "h1000"], "unknown GPU 'h1000'.*known: h100, h100-pcie"),
    (["--budget-usd", "50", "--gpu", "h100", "--mfu", "0"], r"--mfu must be in \(0, 1\]"),
    (["--budget-usd", "50", "--gpu", "h100", "--mfu", "1.5"], r"--mfu must be in \(0, 1\]"),
    (["--flops", "1e18", "--unique-tokens", "0"], "--unique-tokens must be positive"),
    (["--flops", "1e18", "--unique-tokens", "-3"], "--unique-tokens must be positive"),
    (["--flops", "1e18", "--law", "nosuch"], "unknown law 'nosuch'"),
    (["--budget-usd", "50"], "--budget-usd needs --gpu"),
    ([], "give exactly one budget"),
    (["--flops", "1e18", "--budget-usd", "5", "--gpu", "t4"], "give exactly one budget"),
    (["--flops", "1e18", "--arch", "gpt2", "--untied"], "--untied needs --arch modern"),
    (["--flops", "1e18", "--arch", "gpt2", "--mlp", "swiglu"], "not available with arch = 'gpt2'"),
    (["--flops", "1e18", "--mlp", "gelu"], "not available with arch = 'modern'"),
])
def test_plan_bad_input_is_one_line_exit_2(capsys, argv, message):
    import re

    assert re.search(message, run_error(capsys, "plan", *argv))


def test_unknown_arch_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--flops", "1e18", "--arch", "gpt3"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "invalid choice: 'gpt3'" in err


def test_law_file_that_does_not_parse(tmp_path, capsys):
    bad = tmp_path / "law.json"
    bad.write_text("E = 1.8")
    assert "not valid JSON" in run_error(capsys, "plan", "--flops", "1e18", "--law", str(bad))


def test_fit_cli_writes_a_law_that_plan_uses(tmp_path, capsys):
    from test_scaling import TRUE, synthetic_runs

    n, d, c, loss = synthetic_runs(TRUE, noise=0.002)
    rows = "\n".join(f"{a},{b},{e}" for a, b, e in zip(n, d, loss, strict=True))
    results = tmp_path / "runs.csv"
    results.write_text("params,tokens,loss\n" + rows + "\n")
    law = tmp_path / "law.json"
    r = run_json(capsys, "fit", str(results), "--out", str(law), "--plot", str(tmp_path / "fit.png"),
                 "--bootstrap", "20")
    assert {"E", "A", "B", "alpha", "beta", "n_exponent", "tokens_per_param"} <= set(r)
    assert r["alpha"] == pytest.approx(TRUE.alpha, abs=0.03) and set(r["intervals"]) >= {"alpha", "beta"}
    assert r["approach2"]["a"] == pytest.approx(TRUE.n_exponent, abs=0.03)
    planned = run_json(capsys, "plan", "--flops", "1e18", "--law", str(law))
    assert planned["n_opt"] == pytest.approx(TRUE.optimum(1e18)[0], rel=0.25)
    assert (tmp_path / "fit.png").stat().st_size > 1000


def test_fit_cli_chinchilla_points(capsys):
    from test_scaling import CHINCHILLA

    r = run_json(capsys, "fit", str(CHINCHILLA), "--drop-highest", "5")
    assert r["runs"] == 240 and abs(r["alpha"] - 0.3478) < 0.015 and abs(r["E"] - 1.8172) < 0.026


def test_fit_bad_input(tmp_path, capsys):
    few = tmp_path / "few.csv"
    few.write_text("params,tokens,loss\n1e6,2e7,3\n2e6,4e7,2.9\n3e6,6e7,2.8\n")
    assert "3 usable runs" in run_error(capsys, "fit", str(few))
    assert "does not exist" in run_error(capsys, "fit", str(tmp_path / "missing.csv"))


def test_gpu_table():
    assert lookup_gpu(" NVIDIA H100 SXM ").key == "h100" and lookup_gpu("A100-80GB").key == "a100"
    for gpu in GPUS.values():
        assert 0 < gpu.default_mfu <= 1 and gpu.peak_tflops > gpu.fp32_tflops > 0 and gpu.price_per_hour > 0
    assert not GPUS["v100"].bf16 and GPUS["v100"].default_mfu < GPUS["a100"].default_mfu
    assert detect_gpu("NVIDIA H100 PCIe").key == "h100-pcie" and detect_gpu("NVIDIA A100-SXM4-80GB").key == "a100"
    assert detect_gpu("Tesla V100-SXM2-16GB").key == "v100" and detect_gpu("NVIDIA L40S") is None
    with pytest.raises(UserError, match="did you mean 'h100'"):
        lookup_gpu("h10")


def test_fit_without_an_optimum_says_so_and_writes_no_law(tmp_path, capsys):
    # At every budget the smallest model wins and bigger ones get worse: no interior optimum to find.
    rows = [f"{n},{c / (6 * n)},{3.0 + 0.15 * math.log(n / 1e4) - 0.1 * math.log(c / 1e11)}"
            for c in (1e11, 3e11, 1e12) for n in (1.6e4, 2.2e4, 4.4e4, 6.9e4)]
    results = tmp_path / "runs.csv"
    results.write_text("params,tokens,loss\n" + "\n".join(rows) + "\n")
    r = run_json(capsys, "fit", str(results), "--out", str(tmp_path / "law.json"))
    assert r["alpha"] <= 0 and r["n_exponent"] is None and r["tokens_per_param"] is None
    assert any("must be positive" in w for w in r["warnings"]) and not (tmp_path / "law.json").exists()


def test_the_parameter_counts_the_docs_state():
    """Every count the README and docs/planning.md give is what the model builds (and what plan picks)."""
    root = Path(__file__).parents[2]
    docs = " ".join(" ".join((root / f).read_text(encoding="utf-8") for f in ("README.md", "docs/planning.md")).split())

    def count(n_layer: int, n_embd: int, **arch) -> str:
        cfg = GPTConfig(n_layer=n_layer, n_head=n_embd // 64, n_embd=n_embd, vocab_size=50304, block_size=1024, **arch)
        return f"{count_params(cfg)['total']:,}"

    for shape, arch in [((8, 512), dict(arch="gpt2")), ((8, 512), {}), ((8, 512), dict(tie_embeddings=True)),
                        ((6, 512), dict(arch="gpt2")), ((6, 512), {}), ((6, 512), dict(tie_embeddings=True))]:
        assert count(*shape, **arch) in docs, (shape, arch, count(*shape, **arch))
    for arch, shape in [("modern", "5 layers × 384"), ("gpt2", "7 layers × 512")]:
        r = plan(flops=3.2e17, law="hoffmann-rounded", arch=arch)
        m = r["model"]
        assert f"{m['n_layer']} layers × {m['n_embd']}" == shape and f"{m['params']:,}" in docs, (arch, m)


def test_plan_says_when_its_data_dir_is_not_prepared_yet_and_counts_in_words(tmp_path, capsys):
    from homegpt.errors import plural

    assert main(["plan", "--flops", "1e18", "--data-dir", str(tmp_path / "later"), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["notes"]
    assert any(f"--data-dir {tmp_path / 'later'} does not exist yet: homegpt prepare" in n for n in notes), notes
    assert (plural(1, "head"), plural(2, "head"), plural(1234, "document")) == ("1 head", "2 heads", "1,234 documents")
