"""optim.py: which parameters each optimizer trains, the schedules, Muon's momentum warmup and its FLOPs."""

import pytest
import torch

from homegpt.model.gpt import GPT, GPTConfig
from homegpt.train.config import TrainConfig
from homegpt.train.optim import (
    OptimizerSet,
    apply_schedule,
    decay_start,
    lr_factor,
    make_optimizer,
    muon_flops_per_step,
    muon_momentum_at,
)


def model(**kw):
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64, arch="modern", **kw))


def test_muon_trains_the_blocks_matrices_and_adamw_the_rest_at_their_own_rates():
    m = model(tie_embeddings=False)
    cfg = TrainConfig(arch="modern", embedding_lr=0.1, head_lr=0.2, scalar_lr=0.3, lr=0.05).resolved()
    opt = make_optimizer(m, cfg, torch.device("cpu"))
    assert isinstance(opt, OptimizerSet)
    muon, adamw = opt.optimizers
    assert type(muon).__name__ == "Muon" and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in m.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert in_muon == {n for n, p in m.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
    rates = {names[id(p)]: g["lr"] for g in adamw.param_groups for p in g["params"]}
    assert rates["transformer.wte.weight"] == 0.1 and rates["lm_head.weight"] == 0.2
    assert rates["transformer.h.0.ln_1.weight"] == 0.3 and rates["transformer.h.1.attn.q_norm.weight"] == 0.3
    assert len(in_muon) + len(rates) == len(list(m.parameters()))
    assert muon.param_groups[0]["lr"] == 0.05


def test_adamw_decays_matrices_only():
    m = model()
    opt = make_optimizer(m, TrainConfig(arch="modern", optimizer="adamw").resolved(), torch.device("cpu"))
    decayed = [g for g in opt.param_groups if g["weight_decay"] > 0]
    assert all(p.dim() == 2 for g in decayed for p in g["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in m.parameters())


def test_recipe_defaults_follow_the_architecture():
    modern, gpt2 = TrainConfig().resolved(), TrainConfig(arch="gpt2").resolved()
    assert (modern.arch, modern.optimizer, modern.schedule, modern.min_lr_ratio) == ("modern", "muon", "wsd", 0.0)
    assert (gpt2.optimizer, gpt2.schedule, gpt2.min_lr_ratio, gpt2.lr) == ("adamw", "cosine", 0.1, 1e-3)
    assert gpt2.embedding_lr == gpt2.head_lr == gpt2.scalar_lr == gpt2.lr
    assert TrainConfig(preset="gpt2-124m").resolved().arch == "gpt2"  # a preset may name its architecture
    assert TrainConfig(preset="gpt2-124m", arch="modern").resolved().arch == "modern"


def test_wsd_warms_up_holds_then_decays_linearly_to_the_floor():
    cfg = TrainConfig(schedule="wsd", warmup_steps=10, decay_fraction=0.4, min_lr_ratio=0.0).resolved()
    f = [lr_factor(s, cfg, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(x == 1.0 for x in f[10:60]) and decay_start(cfg, 100) == 60
    assert f[60] == pytest.approx(1 - 1 / 40) and f[79] == pytest.approx(0.5) and f[99] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(f[60:], f[61:], strict=False))


def test_muon_momentum_warms_up_and_apply_schedule_sets_every_group():
    cfg = TrainConfig(muon_momentum_start=0.85, muon_momentum=0.95, muon_momentum_warmup=100, warmup_steps=0,
                      lr=0.02).resolved()
    assert muon_momentum_at(0, cfg) == pytest.approx(0.85) and muon_momentum_at(50, cfg) == pytest.approx(0.90)
    assert muon_momentum_at(100, cfg) == muon_momentum_at(10**6, cfg) == pytest.approx(0.95)
    m = model()
    opt = make_optimizer(m, cfg, torch.device("cpu"))
    lr = apply_schedule(opt, 50, cfg, 100)
    assert lr == pytest.approx(0.02)
    muon, adamw = opt.optimizers
    assert muon.param_groups[0]["momentum"] == pytest.approx(0.90)
    assert all(g["lr"] == pytest.approx(g["peak_lr"]) for g in opt.param_groups)
    apply_schedule(opt, 99, cfg, 100)  # the last step of a WSD run decays to min_lr_ratio = 0
    assert all(g["lr"] == pytest.approx(0.0) for g in opt.param_groups)


@pytest.mark.parametrize("mlp, h, mlp_matrices", [("relu2", 128, 2), ("swiglu", 64, 3)])  # fc, proj (+ gate)
def test_muon_flops_count_newton_schulz_on_every_block_matrix(mlp, h, mlp_matrices):
    m = model(mlp=mlp)
    d = 32
    per_iter = 4 * (4.0 * d * d * d + 2.0 * d**3) + mlp_matrices * (4.0 * d * d * h + 2.0 * d**3)  # q, k, v, o; MLP
    assert m.config.mlp_hidden == h and muon_flops_per_step(m) == pytest.approx(2 * 5 * per_iter)
