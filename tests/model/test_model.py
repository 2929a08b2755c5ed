import math

import pytest
import torch

from homegpt.errors import UserError
from homegpt.model.gpt import GPT, PRESETS, GPTConfig, count_params, preset


def small(**kw) -> GPTConfig:
    base = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=128)
    base.update(kw)
    return GPTConfig(**base)


def test_loss_at_init_is_about_ln_vocab():
    torch.manual_seed(0)
    cfg = small(vocab_size=512)
    model = GPT(cfg)
    x, y = torch.randint(0, 512, (2, 4, 32))
    _, loss = model(x, y)
    assert abs(loss.item() - math.log(512)) < 0.1


def test_tiny_batch_can_be_overfitted():
    torch.manual_seed(0)
    model = GPT(small())
    x = torch.randint(0, 128, (2, 17))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize("bias", [True, False])
def test_param_count_formula_matches_real_tensors(bias):
    for name in ("cpu-tiny", "cpu-small"):
        cfg = GPTConfig(**{**PRESETS[name], "bias": bias})
        assert count_params(cfg) == GPT(cfg).num_params()


def test_seed_51m_preset_is_the_recipe_shape():
    cfg = preset("seed-51m")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size) == (8, 8, 512, 50304)
    # V d (tied, once) + T d + L (12 d^2 + 13 d) + 2 d
    d = 512
    assert count_params(cfg)["total"] == 50304 * d + 1024 * d + 8 * (12 * d * d + 13 * d) + 2 * d


def test_kv_cache_greedy_equals_no_cache_greedy():
    torch.manual_seed(1)
    model = GPT(small()).eval()
    prompt = torch.randint(0, 128, (3, 5))
    with_cache = torch.cat(list(model.generate(prompt, 20, temperature=0, use_cache=True)), dim=1)
    no_cache = torch.cat(list(model.generate(prompt, 20, temperature=0, use_cache=False)), dim=1)
    assert torch.equal(with_cache, no_cache)


def test_cached_logits_match_full_forward():
    torch.manual_seed(2)
    model = GPT(small()).eval()
    from homegpt.model.gpt import KVCache

    x = torch.randint(0, 128, (2, 12))
    full, _ = model(x)
    cache = KVCache(model.config, 2, 12, "cpu")
    first, _ = model(x[:, :7], cache=cache)
    rest = [model(x[:, i : i + 1], cache=cache)[0] for i in range(7, 12)]
    stepped = torch.cat([first] + rest, dim=1)
    assert torch.allclose(full, stepped, atol=1e-5)


def test_generation_is_seeded():
    model = GPT(small()).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    a = torch.cat(list(model.generate(prompt, 10, 1.0, 20, 0.9, torch.Generator().manual_seed(3))), 1)
    b = torch.cat(list(model.generate(prompt, 10, 1.0, 20, 0.9, torch.Generator().manual_seed(3))), 1)
    assert torch.equal(a, b)


def test_bad_shapes_are_user_errors():
    with pytest.raises(UserError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(UserError, match="did you mean 'cpu-tiny'"):
        preset("cpu-tinny")
    with pytest.raises(UserError, match="positive"):
        GPTConfig(n_layer=0)


def test_too_long_sequence_is_refused():
    model = GPT(small(block_size=8)).eval()
    with pytest.raises(UserError, match="context"):
        list(model.generate(torch.zeros(1, 6, dtype=torch.long), 5))


def test_cpu_cross_entropy_equals_pytorch_in_value_and_gradient():
    """The training loss on CPU goes through model.CrossEntropy; it must be F.cross_entropy exactly."""
    torch.manual_seed(0)
    cfg = small(vocab_size=300)
    a, b = GPT(cfg), GPT(cfg)
    b.load_state_dict(a.state_dict())
    x, y = torch.randint(0, 300, (2, 3, 32))
    _, loss_a = a(x, y)  # grad enabled, CPU, mean: the custom path
    logits = b(x)[0]
    loss_b = torch.nn.functional.cross_entropy(logits.view(-1, 300), y.reshape(-1))
    (2.5 * loss_a).backward()  # a non-unit upstream gradient must scale through
    (2.5 * loss_b).backward()
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-7, rtol=1e-5), name


def test_per_token_losses_and_no_grad_use_pytorch_cross_entropy():
    torch.manual_seed(0)
    model = GPT(small())
    x, y = torch.randint(0, 128, (2, 2, 32))
    with torch.no_grad():
        _, mean = model(x, y)
        _, per_token = model(x, y, reduction="none")
    assert per_token.shape == (64,) and per_token.mean().item() == pytest.approx(mean.item(), abs=1e-6)


VARIANTS = {
    "gpt2": dict(arch="gpt2"),
    "modern-relu2": dict(arch="modern", mlp="relu2"),
    "modern-swiglu": dict(arch="modern", mlp="swiglu"),
    "modern-relu2-untied": dict(arch="modern", mlp="relu2", tie_embeddings=False),
    "modern-swiglu-untied": dict(arch="modern", mlp="swiglu", tie_embeddings=False),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_starts_at_ln_vocab_counts_exactly_and_overfits(variant):
    torch.manual_seed(0)
    cfg = small(vocab_size=512, **VARIANTS[variant])
    model = GPT(cfg)
    assert count_params(cfg) == model.num_params()
    x, y = torch.randint(0, 512, (2, 4, 32))
    _, loss = model(x, y)
    assert abs(loss.item() - math.log(512)) < 0.1
    batch = torch.randint(0, 512, (2, 17))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_decoding_equals_uncached_for_every_variant(variant):
    torch.manual_seed(1)
    model = GPT(small(**VARIANTS[variant]))
    for p in model.parameters():  # zero-initialised projections would make every position look alike
        torch.nn.init.normal_(p, std=0.3)
    model.eval()
    prompt = torch.randint(0, 128, (3, 5))
    with_cache = torch.cat(list(model.generate(prompt, 20, temperature=0, use_cache=True)), dim=1)
    no_cache = torch.cat(list(model.generate(prompt, 20, temperature=0, use_cache=False)), dim=1)
    assert torch.equal(with_cache, no_cache)
    full, _ = model(prompt)
    from homegpt.model.gpt import KVCache

    cache = KVCache(model.config, 3, 5, "cpu")
    stepped = torch.cat([model(prompt[:, :2], cache=cache)[0]] + [model(prompt[:, i:i + 1], cache=cache)[0]
                                                                  for i in range(2, 5)], dim=1)
    assert torch.allclose(full, stepped, atol=1e-5)


def test_modern_model_has_no_biases_no_position_embedding_and_zero_output_projections():
    model = GPT(small(arch="modern"))
    names = dict(model.named_parameters())
    assert not any(n.endswith(".bias") for n in names) and "transformer.wpe.weight" not in names
    assert all(float(p.detach().abs().max()) == 0 for n, p in names.items() if n.endswith("c_proj.weight"))
    assert small(arch="modern", mlp="swiglu", n_embd=512, n_head=8).mlp_hidden == 1344  # 8/3 * 512, multiple of 64
    assert small(arch="modern").mlp == "swiglu" and small(arch="modern", mlp="relu2").mlp_hidden == 4 * 32
    assert "transformer.h.0.mlp.c_gate.weight" in names  # the default MLP is SwiGLU: it has a gate


def test_rotary_positions_make_attention_relative():
    """Shifting a whole sequence's positions changes nothing that attention sees (q·k depends on the offset)."""
    from homegpt.model.gpt import apply_rotary

    cfg = small(arch="modern")
    rot = GPT(cfg).rotary
    q, k = torch.randn(2, 1, 1, 16), torch.randn(2, 1, 1, 16)
    def score(i, j):
        cos_i, sin_i = rot(torch.tensor([[i]]), 1)
        cos_j, sin_j = rot(torch.tensor([[j]]), 1)
        # a float: pytest.approx walks a tensor as a sequence
        return (apply_rotary(q, cos_i, sin_i) * apply_rotary(k, cos_j, sin_j)).sum().item()
    assert score(7, 3) == pytest.approx(score(14, 10), abs=1e-5)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)


@pytest.mark.parametrize("bad, message", [
    (dict(arch="llama"), "unknown arch 'llama'"),
    (dict(arch="gpt2", mlp="swiglu"), "mlp = 'swiglu' is not available with arch = 'gpt2'"),
    (dict(arch="modern", mlp="gelu"), "mlp = 'gelu' is not available"),
    (dict(arch="modern", bias=True), "has no biases"),
    (dict(arch="gpt2", tie_embeddings=False), "tie_embeddings = false needs arch"),
    (dict(arch="modern", rope_theta=0.0), "rope_theta must be positive"),
])
def test_impossible_model_settings_are_user_errors(bad, message):
    with pytest.raises(UserError, match=message):
        small(**bad)
