"""How each homegpt architecture maps onto a Hugging Face `transformers` class: one pair of functions each.

    arch = "gpt2"    <->  GPT2LMHeadModel   (model_type gpt2)
    arch = "modern"  <->  Qwen3ForCausalLM  (model_type qwen3)

`to_hf(cfg, state, eot_id)` gives (config.json, weights under transformers' names) for a homegpt model;
`from_hf(config, read_weights, where)` gives (GPTConfig, homegpt state) for a transformers folder, refusing,
before any weight is read, every setting homegpt's model would compute differently. A state is what
checkpoint.model_state holds: every weight, a tied head left out.

GPT-2. homegpt keeps GPT-2's parameter names. transformers' GPT-2 stores its four projection matrices as
`Conv1D` weights of shape (in, out), homegpt as `nn.Linear` weights of shape (out, in): those four are
transposed, everything else is copied. The head is tied to the token embedding in both and stored once.

Qwen3. The modern architecture is Qwen3's decoder with every query head its own key/value head: RMSNorm
(eps 1e-6) before attention and MLP, RMSNorm on each head's queries and keys before the rotation, rotary
embeddings in the rotate-half layout (so no permutation of q/k rows), no biases, a tied or untied head.

    homegpt                          Qwen3ForCausalLM
    transformer.wte                  model.embed_tokens
    transformer.h.i.ln_1             model.layers.i.input_layernorm
    transformer.h.i.attn.c_q/k/v     model.layers.i.self_attn.q_proj / k_proj / v_proj
    transformer.h.i.attn.q/k_norm    model.layers.i.self_attn.q_norm / k_norm
    transformer.h.i.attn.c_proj      model.layers.i.self_attn.o_proj
    transformer.h.i.ln_2             model.layers.i.post_attention_layernorm
    transformer.h.i.mlp.c_gate       model.layers.i.mlp.gate_proj          (SwiGLU)
    transformer.h.i.mlp.c_fc         model.layers.i.mlp.up_proj            (and gate_proj, for ReLU²)
    transformer.h.i.mlp.c_proj       model.layers.i.mlp.down_proj
    transformer.ln_f                 model.norm
    lm_head                          lm_head                               (untied only)

Qwen3's MLP computes down(act(gate(x)) * up(x)). SwiGLU is that with act = silu. ReLU² is exactly that with
act = relu and gate = up = c_fc, since relu(a) * a = relu(a)² for every a (both are a*a or zero): the
export stores c_fc twice and does its matmul twice, and computes the same numbers. Only transformers runs
that variant correctly: vLLM's Qwen3 refuses any activation but silu, llama.cpp's assumes SiLU and would
silently compute something else (see card.runtimes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from homegpt.errors import UserError
from homegpt.model.gpt import GPT, LAYER_NORM_EPS, RMS_NORM_EPS, GPTConfig

HF_CLASS = {"gpt2": "GPT2LMHeadModel", "modern": "Qwen3ForCausalLM"}
HEAD = "lm_head.weight"


def to_hf(cfg: GPTConfig, state: dict[str, torch.Tensor], eot_id: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, weights) of the transformers model that computes what this homegpt model computes."""
    return _EXPORTERS[cfg.arch](cfg, state, eot_id)


def from_hf(config: dict, read_weights: Callable[[], dict[str, torch.Tensor]],
            where: Path) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """(GPTConfig, homegpt state) from a transformers config.json and its weights (read only once the config
    is known to be something homegpt can compute exactly)."""
    kind = config.get("model_type")
    if kind not in _IMPORTERS:
        raise UserError(f"{where} holds a {kind!r} model: homegpt imports GPT-2 (model_type gpt2) and Qwen3 "
                        f"(model_type qwen3) models")
    try:
        return _IMPORTERS[kind](config, read_weights, where)
    except KeyError as e:
        raise UserError(f"{where}/config.json has no {e.args[0]}") from None
    except (TypeError, ValueError, ZeroDivisionError) as e:  # a field of the wrong type, e.g. a string for a size
        raise UserError(f"{where}/config.json is not a valid {kind} config ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None


# --------------------------------------------------------------------------------------------- shared


def _special_ids(eot_id: int) -> dict:
    return {"bos_token_id": eot_id, "eos_token_id": eot_id}


def _refuse_unless(checks: list[tuple[bool, str]], where: Path) -> None:
    for ok, what in checks:
        if not ok:
            raise UserError(f"{where}: {what} is not something homegpt's model can compute")


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float().contiguous()


def _check_names(state: dict[str, torch.Tensor], cfg: GPTConfig, where: Path, what: str) -> dict[str, torch.Tensor]:
    """state, if it has exactly the weights of cfg's model (a tied head left out)."""
    with torch.device("meta"):  # names only: no memory, no initialisation
        names = set(GPT(cfg).state_dict())
    expected = names - {HEAD} if cfg.tie_embeddings else names
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise UserError(f"{where}: the weights do not match config.json's {what} ({detail})")
    return state


def _tied_head(state: dict[str, torch.Tensor], embedding: str, where: Path) -> None:
    """Drop a stored copy of a tied head (some savers write one), refusing one that is not the embedding."""
    head = state.pop(HEAD, None)
    if head is not None and embedding in state and not torch.equal(head, state[embedding]):
        raise UserError(f"{where}: lm_head.weight differs from the token embedding, but config.json ties the two")


# --------------------------------------------------------------------------------------------- GPT-2

GPT2_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # both are GELU with the tanh approximation
GPT2_IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers some transformers versions save


def gpt2_to_hf(cfg: GPTConfig, state: dict[str, torch.Tensor], eot_id: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """GPT2Config (every field that changes the computation explicit) and GPT2LMHeadModel's weights."""
    if not cfg.bias:
        raise UserError("this run's model has no biases (bias = false): transformers' GPT-2 always has them, "
                        "so it cannot be exported as GPT2LMHeadModel")
    config = {
        "architectures": [HF_CLASS["gpt2"]],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,  # 4 * n_embd, as homegpt's MLP
        "activation_function": "gelu_new",
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        **_special_ids(eot_id),
        "pad_token_id": eot_id,
        "use_cache": True,
        "dtype": "float32",
    }
    weights = {name: _fp32(t.t() if name.endswith(GPT2_TRANSPOSED) else t)
               for name, t in state.items() if name != HEAD}  # tied: transformers re-ties it on load
    return config, weights


def gpt2_from_hf(config: dict, read_weights, where: Path) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """GPT2LMHeadModel (or bare GPT2Model names) -> homegpt, refusing variants homegpt cannot compute."""
    act = config.get("activation_function", "gelu_new")
    _refuse_unless([
        (act in TANH_GELUS, f"activation_function {act!r} (homegpt uses the tanh GELU, gelu_new)"),
        (abs(float(config.get("layer_norm_epsilon", LAYER_NORM_EPS)) - LAYER_NORM_EPS) < 1e-12,
         f"layer_norm_epsilon {config.get('layer_norm_epsilon')} (homegpt uses {LAYER_NORM_EPS})"),
        (config.get("n_inner") in (None, 4 * config.get("n_embd", 0)), f"n_inner {config.get('n_inner')}"),
        (config.get("scale_attn_weights", True), "scale_attn_weights false"),
        (not config.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx"),
        (not config.get("add_cross_attention", False), "cross-attention"),
        (config.get("tie_word_embeddings", True), "an output head not tied to the embedding"),
    ], where)
    cfg = GPTConfig(n_layer=config["n_layer"], n_head=config["n_head"], n_embd=config["n_embd"],
                    block_size=config["n_positions"], vocab_size=config["vocab_size"],
                    dropout=float(config.get("resid_pdrop", 0.0)), bias=True, arch="gpt2")
    state = {}
    for name, t in read_weights().items():
        if name.endswith(GPT2_IGNORED):
            continue
        key = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
        state[key] = _fp32(t.t() if key.endswith(GPT2_TRANSPOSED) else t)
    _tied_head(state, "transformer.wte.weight", where)
    return cfg, _check_names(state, cfg, where, "GPT-2")


# --------------------------------------------------------------------------------------------- Qwen3

# homegpt name -> Qwen3 name, for the weights outside the blocks and (after "transformer.h.i.") inside them
QWEN3_OUTER = {"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight",
               HEAD: HEAD}
QWEN3_BLOCK = {
    "ln_1.weight": "input_layernorm.weight",
    "attn.c_q.weight": "self_attn.q_proj.weight",
    "attn.c_k.weight": "self_attn.k_proj.weight",
    "attn.c_v.weight": "self_attn.v_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "mlp.c_gate.weight": "mlp.gate_proj.weight",
    "mlp.c_fc.weight": "mlp.up_proj.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}
QWEN3_ACT = {"swiglu": "silu", "relu2": "relu"}
# Qwen3Config's defaults (transformers 5), for fields a config.json may leave out
QWEN3_DEFAULTS = {"head_dim": 128, "hidden_act": "silu", "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                  "num_key_value_heads": 32, "attention_bias": False, "use_sliding_window": False}
DEFAULT_ROPE_THETA = 10000.0  # transformers' RotaryEmbeddingConfigMixin.default_theta
QWEN3_IGNORED = (".rotary_emb.inv_freq",)  # a buffer older savers wrote


def _qwen3_name(name: str) -> str:
    """A homegpt modern weight's name in Qwen3ForCausalLM."""
    if name in QWEN3_OUTER:
        return QWEN3_OUTER[name]
    _, _, layer, rest = name.split(".", 3)  # transformer.h.{i}.{rest}
    return f"model.layers.{layer}.{QWEN3_BLOCK[rest]}"


_FROM_QWEN3_OUTER = {v: k for k, v in QWEN3_OUTER.items()}
_FROM_QWEN3_BLOCK = {v: k for k, v in QWEN3_BLOCK.items()}


def _homegpt_name(name: str) -> str | None:
    """A Qwen3 weight's homegpt name (None for a name homegpt's model has no weight for)."""
    if name in _FROM_QWEN3_OUTER:
        return _FROM_QWEN3_OUTER[name]
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _FROM_QWEN3_BLOCK:
        return f"transformer.h.{parts[2]}.{_FROM_QWEN3_BLOCK[parts[3]]}"
    return None


def qwen3_to_hf(cfg: GPTConfig, state: dict[str, torch.Tensor], eot_id: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """Qwen3Config and Qwen3ForCausalLM's weights for a modern homegpt model (either MLP, either head)."""
    config = {
        "architectures": [HF_CLASS["modern"]],
        "model_type": "qwen3",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,  # one key/value head per query head: no grouped-query attention
        "head_dim": cfg.head_dim,
        "hidden_act": QWEN3_ACT[cfg.mlp],
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": RMS_NORM_EPS,
        # transformers 5 reads rope_parameters; older transformers, vLLM and llama.cpp's converter rope_theta
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,
        "attention_bias": False,
        "attention_dropout": 0.0,  # homegpt's dropout is a training setting (homegpt.json's train_config)
        "use_sliding_window": False,
        "sliding_window": None,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": 0.02,
        **_special_ids(eot_id),
        # No pad_token_id: Qwen3's embedding would take it as padding_idx, whose row then gets no gradient
        # when the model is fine-tuned in transformers; the tokenizer and generation_config name the pad token.
        "use_cache": True,
        "dtype": "float32",
    }
    weights = {_qwen3_name(name): _fp32(t) for name, t in state.items()
               if not (name == HEAD and cfg.tie_embeddings)}
    if cfg.mlp == "relu2":  # relu(gate x) * (up x) with gate = up = c_fc is relu(c_fc x)²
        for i in range(cfg.n_layer):
            weights[f"model.layers.{i}.mlp.gate_proj.weight"] = weights[f"model.layers.{i}.mlp.up_proj.weight"].clone()
    return config, weights


def _rope(config: dict) -> tuple[float, str]:
    """(theta, rope_type) however the config spells them (rope_parameters, rope_scaling or rope_theta)."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        return DEFAULT_ROPE_THETA, "per-layer"
    theta = params.get("rope_theta", config.get("rope_theta", DEFAULT_ROPE_THETA))
    return float(theta), str(params.get("rope_type", params.get("type", "default")))


def qwen3_from_hf(config: dict, read_weights, where: Path) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """Qwen3ForCausalLM (or bare Qwen3Model names) -> homegpt's modern model, refusing what it can't compute."""
    get = lambda key: config.get(key, QWEN3_DEFAULTS[key])  # noqa: E731
    heads = config["num_attention_heads"]
    kv_heads = get("num_key_value_heads") or heads
    act, eps = get("hidden_act"), float(get("rms_norm_eps"))
    theta, rope_type = _rope(config)
    mlp = {"silu": "swiglu", "relu": "relu2"}.get(act)
    _refuse_unless([
        (kv_heads == heads, f"grouped-query attention (num_key_value_heads {kv_heads}, num_attention_heads {heads})"),
        (not get("attention_bias"), "attention bias (attention_bias true)"),
        (not get("use_sliding_window") and all(t == "full_attention" for t in config.get("layer_types") or []),
         "sliding-window attention"),
        (rope_type == "default", f"rope scaling of type {rope_type!r} (homegpt's rotary embeddings are the default "
                                 f"kind)"),
        (abs(eps - RMS_NORM_EPS) < 1e-12, f"rms_norm_eps {eps:g} (homegpt uses {RMS_NORM_EPS:g})"),
        (mlp is not None, f"hidden_act {act!r} (homegpt's MLPs are silu-gated, SwiGLU, or relu with gate_proj = "
                          f"up_proj, ReLU²)"),
    ], where)
    cfg = GPTConfig(n_layer=config["num_hidden_layers"], n_head=heads, n_embd=config["hidden_size"],
                    block_size=config["max_position_embeddings"], vocab_size=config["vocab_size"], arch="modern",
                    mlp=mlp, rope_theta=theta, tie_embeddings=bool(get("tie_word_embeddings")))
    head_dim = get("head_dim") or cfg.head_dim  # None means hidden_size / heads to transformers' rotary code
    _refuse_unless([
        (head_dim == cfg.head_dim, f"head_dim {head_dim} (homegpt's heads are hidden_size / num_attention_heads = "
                                   f"{cfg.head_dim} wide)"),
        (config.get("intermediate_size") == cfg.mlp_hidden,
         f"intermediate_size {config.get('intermediate_size')} (homegpt's {mlp} MLP at hidden_size {cfg.n_embd} is "
         f"{cfg.mlp_hidden} wide)"),
    ], where)
    state, unknown = {}, []
    for name, t in read_weights().items():
        if name.endswith(QWEN3_IGNORED):
            continue
        key = _homegpt_name(name if name.startswith(("model.", HEAD)) else f"model.{name}")
        if key is None:
            unknown.append(name)
        else:
            state[key] = _fp32(t)
    if unknown:
        raise UserError(f"{where}: the weights do not match config.json's Qwen3 (unexpected {sorted(unknown)[:3]})")
    if cfg.mlp == "relu2":  # relu(gate x) * (up x) is relu(c_fc x)² only with gate_proj = up_proj = c_fc
        for i in range(cfg.n_layer):
            gate = state.pop(f"transformer.h.{i}.mlp.c_gate.weight", None)
            up = state.get(f"transformer.h.{i}.mlp.c_fc.weight")
            if up is not None and (gate is None or not torch.equal(gate, up)):
                raise UserError(f"{where}: hidden_act 'relu' with gate_proj != up_proj (layer {i}) is not something "
                                f"homegpt's model can compute: its ReLU² MLP is relu with gate_proj = up_proj")
    if cfg.tie_embeddings:
        _tied_head(state, "transformer.wte.weight", where)
    return cfg, _check_names(state, cfg, where, "Qwen3")


_EXPORTERS = {"gpt2": gpt2_to_hf, "modern": qwen3_to_hf}
_IMPORTERS = {"gpt2": gpt2_from_hf, "qwen3": qwen3_from_hf}
