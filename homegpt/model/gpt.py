"""The GPT, in plain PyTorch, read top to bottom: two architectures sharing one skeleton.

    arch = "gpt2"    GPT-2 (2019): learned absolute positions, pre-LayerNorm blocks with biases, a tanh-GELU
                     MLP of width 4d, the output head tied to the token embedding, GPT-2's initialisation
                     with residual projections scaled by 1/sqrt(2 * n_layer).
    arch = "modern"  what modded-nanogpt, nanochat, Llama and Qwen3 converged on: rotary position embeddings,
                     pre-norm RMSNorm, RMSNorm on each head's queries and keys (QK-norm, before the rotation,
                     as Qwen3 does it), no biases, a SwiGLU MLP of width ~8/3 d (mlp = "swiglu", the default)
                     or a ReLU² MLP of width 4d (mlp = "relu2"), a tied or untied head, and zero-initialised
                     output projections so that every block starts as the identity.

Both share the block structure x + attn(norm(x)), x + mlp(norm(x)); where they differ, the difference is
in one place (the norm factory, CausalSelfAttention.qkv, MLP.forward, GPT._init_weights). Attention runs
through `scaled_dot_product_attention` (flash / memory-efficient kernels where the device has them).

Generation uses a preallocated key/value cache (kvcache.KVCache): the prompt runs once, then each new token
costs one position of attention. Every row of the cache has its own length and positions, so rows of
different lengths share one batch, rows join and leave a running batch (engine.py), and each row computes
what it would alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from homegpt.choices import ARCHS, MLPS, TIE_EMBEDDINGS
from homegpt.errors import UserError, closest
from homegpt.model.kvcache import KVCache

IGNORE_INDEX = -100  # a target that carries no loss (F.cross_entropy's ignore_index): chat fine-tuning's mask
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default (GPT-2's)
RMS_NORM_EPS = 1e-6  # Qwen3's rms_norm_eps, so the export computes the same thing


@dataclass
class GPTConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 256
    vocab_size: int = 4096
    dropout: float = 0.0
    bias: bool | None = None  # None = the architecture's: biases in gpt2, none in modern
    arch: str = "gpt2"
    mlp: str = ""  # "" = the architecture's: gelu (gpt2), swiglu (modern); or relu2 (modern)
    rope_theta: float = 10000.0  # modern only
    tie_embeddings: bool | None = None  # the head reads the token embedding; None = the architecture's
    # default (choices.TIE_EMBEDDINGS: gpt2 always ties; modern unties by default)

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise UserError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                f"try n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.arch not in ARCHS:
            raise UserError(f"unknown arch {self.arch!r}{closest(self.arch, ARCHS)}: use gpt2 or modern")
        self.mlp = self.mlp or MLPS[self.arch][0]
        if self.mlp not in MLPS[self.arch]:
            raise UserError(f"mlp = {self.mlp!r} is not available with arch = {self.arch!r}: "
                            f"use {' or '.join(MLPS[self.arch])}")
        if self.bias is None:
            self.bias = self.arch == "gpt2"
        if self.tie_embeddings is None:
            self.tie_embeddings = TIE_EMBEDDINGS[self.arch]
        if self.arch == "modern":
            if self.bias:
                raise UserError('arch = "modern" has no biases: drop bias = true, or use arch = "gpt2"')
            if self.head_dim % 2:
                raise UserError(f"rotary embeddings need an even head size, got n_embd / n_head = {self.head_dim}")
            if not self.rope_theta > 0:
                raise UserError(f"rope_theta must be positive, got {self.rope_theta}")
        elif not self.tie_embeddings:
            raise UserError('GPT-2 ties its head to the token embedding: tie_embeddings = false needs arch = "modern"')

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        """4d for GELU and ReLU²; SwiGLU's three matrices get ~8/3 d (a multiple of 64) for the same count."""
        if self.mlp == "swiglu":
            return max(64, round(8 * self.n_embd / 3 / 64) * 64)
        return 4 * self.n_embd

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise UserError(f"unknown model setting {key!r}{closest(key, known)}")
        return cls(**d)


# Named shapes. vocab_size here is a default: a run takes its vocabulary size from its tokenizer. A preset
# may name an architecture; the others take the training config's (the modern recipe by default).
PRESETS: dict[str, dict] = {
    # The $50 recipe's model shape: 8 layers, 8 heads, 512 wide, GPT-2's 50,304-token vocabulary.
    "seed-51m": dict(n_layer=8, n_head=8, n_embd=512, block_size=1024, vocab_size=50304),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, arch="gpt2"),
    # Small shapes that train in minutes on a laptop CPU.
    "cpu-tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512),
    "cpu-small": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=2048),
    "cpu-medium": dict(n_layer=6, n_head=6, n_embd=192, block_size=256, vocab_size=4096),
}


def preset(name: str) -> GPTConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}{closest(name, PRESETS)}; known: {', '.join(PRESETS)}")
    return GPTConfig(**PRESETS[name])


def count_params(cfg: GPTConfig) -> dict[str, int]:
    """Exact parameter counts without building the model (equal to summing the real tensors).

    embedding: the token embedding, GPT-2's position embedding and an untied head (Kaplan et al.'s
    convention leaves them out of N); non_embedding: the blocks and the final norm; total counts a tied
    head once.
    """
    d, b, h = cfg.n_embd, int(cfg.bias), cfg.mlp_hidden
    norm = d + b * d  # a LayerNorm's gain and bias, or an RMSNorm's gain
    if cfg.arch == "gpt2":
        attention = (3 * d * d + b * 3 * d) + (d * d + b * d)
    else:
        attention = 4 * d * d + 2 * cfg.head_dim  # q, k, v, out; the q and k norms' gains
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * h + b * (h + d)
    per_layer = 2 * norm + attention + mlp
    embedding = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    if cfg.arch == "gpt2":
        embedding += cfg.block_size * d
    non_embedding = cfg.n_layer * per_layer + norm  # + the final norm
    return {"total": embedding + non_embedding, "non_embedding": non_embedding, "embedding": embedding}


def flops_per_token(cfg: GPTConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6N (forward + backward matmuls) + attention 12 * L * d * T (PaLM, App. B).

    N is the non-embedding count plus the output head (a tied or untied head is one V x d matmul; the
    embedding lookups cost no matmul). Norms, rotations and activations are not counted (PaLM's convention).
    """
    t = seq_len or cfg.block_size
    n = count_params(cfg)["non_embedding"] + cfg.vocab_size * cfg.n_embd
    return 6.0 * n + 12.0 * cfg.n_layer * cfg.n_embd * t


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + head_dim/2) of x by position-dependent angles (the "rotate half" layout that
    Llama and Qwen3 use in transformers, so exported weights need no permutation)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Rotary(nn.Module):
    """cos and sin tables for every position of the context (buffers, not weights: never saved)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        dim = cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        angles = torch.outer(torch.arange(cfg.block_size, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, positions: torch.Tensor | None, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) broadcastable to (B, n_head, T, head_dim): positions (B, T), or None for 0..t-1."""
        if positions is None:
            return self.cos[None, None, :t], self.sin[None, None, :t]
        return self.cos[positions][:, None], self.sin[positions][:, None]


def make_norm(cfg: GPTConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.n_embd
    if cfg.arch == "gpt2":
        return nn.LayerNorm(dim, eps=LAYER_NORM_EPS, bias=cfg.bias)
    return nn.RMSNorm(dim, eps=RMS_NORM_EPS)


class CrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (N, V) logits, the same value as F.cross_entropy, with a cheaper backward on CPU.

    Why: on a CPU the loss over a large vocabulary costs as much as a transformer layer. The gradient is
    softmax(logits) - onehot(target), and softmax = exp(log_softmax), which the forward pass already
    computed: the backward turns that saved tensor into the gradient in place (one exp pass), where
    autograd's generic path fills a zero tensor, scatters into it and runs a separate log-softmax backward.
    Measured on a 2-core CPU: 37 ms instead of 67-75 ms for 4,096 x 2,048 logits. The saved tensor is
    consumed, so this graph can't be backpropagated twice (training never does).

    Targets equal to IGNORE_INDEX carry no loss and no gradient, and the mean is over the others, as
    F.cross_entropy's ignore_index (chat fine-tuning masks everything but the assistant's tokens).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=-1)
        ignored = targets == IGNORE_INDEX
        if not bool(ignored.any()):
            ctx.save_for_backward(logp, targets, None)
            return -logp.gather(1, targets[:, None]).mean()
        keep = ~ignored
        targets = targets.masked_fill(ignored, 0)
        ctx.save_for_backward(logp, targets, keep)
        return -(logp.gather(1, targets[:, None])[:, 0] * keep).sum() / keep.sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logp, targets, keep = ctx.saved_tensors
        g = logp.exp_()  # softmax probabilities, written over the saved log-probabilities
        g.scatter_add_(1, targets[:, None], torch.full((targets.numel(), 1), -1.0, dtype=g.dtype))
        if keep is None:
            return g.mul_(grad / targets.numel()), None
        return g.mul_(keep[:, None]).mul_(grad / keep.sum()), None


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        d = cfg.n_embd
        self.modern = cfg.arch == "modern"
        if self.modern:  # separate matrices: Muon orthogonalises each, and they map onto q/k/v_proj
            self.c_q = nn.Linear(d, d, bias=False)
            self.c_k = nn.Linear(d, d, bias=False)
            self.c_v = nn.Linear(d, d, bias=False)
            self.q_norm = make_norm(cfg, cfg.head_dim)
            self.k_norm = make_norm(cfg, cfg.head_dim)
        else:
            self.c_attn = nn.Linear(d, 3 * d, bias=cfg.bias)
        self.c_proj = nn.Linear(d, d, bias=cfg.bias)
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values as (B, n_head, T, head_dim); modern: q and k RMS-normalised per head."""
        B, T, C = x.shape
        shape = (B, T, self.n_head, C // self.n_head)
        if self.modern:
            q = self.q_norm(self.c_q(x).view(shape))
            k = self.k_norm(self.c_k(x).view(shape))
            v = self.c_v(x).view(shape)
        else:
            q, k, v = (t.view(shape) for t in self.c_attn(x).split(C, dim=2))
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: torch.Tensor, rope: tuple | None = None, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            mask, causal = cache.mask  # set once per forward pass, by cache.begin in GPT.hidden
            k, v = cache.append(layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        hidden = cfg.mlp_hidden
        self.kind = cfg.mlp
        self.c_fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        if self.kind == "swiglu":
            self.c_gate = nn.Linear(cfg.n_embd, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gelu":  # tanh-approximated GELU, as GPT-2 (and transformers' "gelu_new") uses
            h = F.gelu(self.c_fc(x), approximate="tanh")
        elif self.kind == "relu2":  # ReLU squared (So et al. 2021, modded-nanogpt, nanochat)
            h = F.relu(self.c_fc(x)).square()
        else:  # SwiGLU (Shazeer 2020, Llama, Qwen): silu(gate) * up
            h = F.silu(self.c_gate(x)) * self.c_fc(x)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope: tuple | None = None, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        modules = dict(wte=nn.Embedding(cfg.vocab_size, cfg.n_embd))
        if cfg.arch == "gpt2":
            modules["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        modules.update(drop=nn.Dropout(cfg.dropout), h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                       ln_f=make_norm(cfg))
        self.transformer = nn.ModuleDict(modules)
        self.rotary = Rotary(cfg) if cfg.arch == "modern" else None
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:  # Press & Wolf 2017: one matrix both reads and writes tokens
            self.lm_head.weight = self.transformer.wte.weight
        self._init_weights()

    def _init_weights(self) -> None:
        cfg = self.config
        for name, p in self.named_parameters():
            if p.dim() < 2:  # norm gains start at 1 (their constructors did it), biases at 0
                if name.endswith(".bias"):
                    nn.init.zeros_(p)
            elif name.endswith("c_proj.weight"):
                if cfg.arch == "gpt2":  # GPT-2: the residual stream's variance doesn't grow with depth
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
                else:  # modern: every block starts as the identity (modded-nanogpt)
                    nn.init.zeros_(p)
            elif cfg.arch == "gpt2" or (name == "transformer.wte.weight" and cfg.tie_embeddings):
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif name == "transformer.wte.weight":  # untied (nanochat): unit-scale token vectors
                nn.init.normal_(p, mean=0.0, std=1.0)
            elif name == "lm_head.weight":  # untied: a near-zero head starts at a uniform prediction
                nn.init.normal_(p, mean=0.0, std=0.001)
            else:  # modern hidden matrices: unit-scale outputs for unit-scale (normalised) inputs
                nn.init.normal_(p, mean=0.0, std=p.size(1) ** -0.5)

    def num_params(self) -> dict[str, int]:
        """Summed over the real tensors; parameters() yields a tied matrix once."""
        total = sum(p.numel() for p in self.parameters())
        t = self.transformer
        embedding = t.wte.weight.numel() + (t.wpe.weight.numel() if "wpe" in t else 0)
        if not self.config.tie_embeddings:
            embedding += self.lm_head.weight.numel()
        return {"total": total, "non_embedding": total - embedding, "embedding": embedding}

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final normalised hidden states (B, T, n_embd); with a cache, after each row's filled slots."""
        B, T = idx.shape
        longest = cache.longest if cache is not None else 0
        if longest + T > self.config.block_size:
            raise UserError(
                f"sequence of {longest + T} tokens is longer than the model's context of "
                f"{self.config.block_size}: shorten the prompt or lower --max-new-tokens"
            )
        positions = cache.begin(T) if cache is not None else None  # per row; also sets the chunk's mask
        x = self.transformer.wte(idx)
        if self.rotary is None:
            x = x + self.transformer.wpe(positions if positions is not None else torch.arange(T, device=idx.device))
            rope = None
        else:
            rope = self.rotary(positions, T)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, rope, cache, i)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        reduction: str = "mean",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and, with targets, the cross-entropy (mean nats/token, or per token)."""
        logits = self.lm_head(self.hidden(idx, cache))
        if targets is None:
            return logits, None
        flat_logits, flat_targets = logits.float().view(-1, logits.size(-1)), targets.reshape(-1)
        if reduction == "mean" and logits.device.type == "cpu" and torch.is_grad_enabled():
            return logits, CrossEntropy.apply(flat_logits, flat_targets)
        return logits, F.cross_entropy(flat_logits, flat_targets, reduction=reduction)

    def decode(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run a chunk through the cache; the (B, vocab) logits of its last position only (what decoding needs)."""
        return self.lm_head(self.hidden(idx, cache)[:, -1])

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        stop_token: int | None = None,
    ):
        """Yield one (B, 1) tensor of new tokens at a time; temperature 0 means greedy decoding.

        The plain reference loop (engine.Engine is the batched engine everything else uses); with
        use_cache=False it re-runs the whole sequence every step, which is what the cache must reproduce.
        """
        total = idx.size(1) + max_new_tokens
        if total > self.config.block_size:
            raise UserError(
                f"prompt ({idx.size(1)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                f"model's context of {self.config.block_size} tokens: shorten one of them"
            )
        cache = KVCache(self.config, idx.size(0), total, idx.device) if use_cache else None
        seq, step_input = idx, idx
        for _ in range(max_new_tokens):
            logits, _ = self(step_input if use_cache else seq, cache=cache)
            next_tok = sample_next(logits[:, -1, :].float(), temperature, top_k, top_p, generator)
            seq = torch.cat([seq, next_tok], dim=1)
            step_input = next_tok
            yield next_tok
            if stop_token is not None and bool((next_tok == stop_token).all()):
                return


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Pick the next token from (B, vocab) logits: greedy, or sampled after top-k / nucleus filtering."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    b = logits.size(0)
    probs = sampling_probs(logits, [temperature] * b, [top_k or 0] * b, [top_p or 1.0] * b)
    return draw(probs, torch.rand(b, 1, generator=generator, device=logits.device))


def sampling_probs(logits: torch.Tensor, temperature: list[float], top_k: list[int],
                   top_p: list[float]) -> torch.Tensor:
    """Each row's sampling distribution (B, vocab): its logits / its temperature (> 0), its top_k likeliest
    tokens (0 = all), then the smallest set of those whose probability reaches its top_p (1 = all).

    Every operation works row by row, so a row's distribution is the same in any batch: rows with different
    settings are filtered together, in one pass (the engine samples all its rows at once this way)."""
    dev, vocab = logits.device, logits.size(-1)
    logits = logits / torch.tensor(temperature, dtype=logits.dtype, device=dev)[:, None]
    ks = [min(k, vocab) if k and k > 0 else vocab for k in top_k]
    if min(ks) < vocab:
        logits = logits.masked_fill(logits < kth_largest(logits, ks), float("-inf"))
    if any(0.0 < p < 1.0 for p in top_p):
        limit = torch.tensor([p if 0.0 < p < 1.0 else 2.0 for p in top_p], device=dev)[:, None]  # 2: keep all
        sorted_logits, order = sort_descending(logits)
        p = sorted_logits.softmax(-1)
        drop = p.cumsum(-1) - p > limit  # keep the smallest set whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits.softmax(-1)


# On a CPU, torch's topk and sort over a batch of rows cost ~30 and ~150 us a row of 2,048 (torch 2.13); numpy's
# partition and argsort do the same work 5-30x faster. The k-th largest value is exact either way; a sort may
# order equal logits differently, which changes nothing below (equal values, equal probabilities).


def kth_largest(x: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """(B, 1): row b's ks[b]-th largest value."""
    if x.device.type == "cpu":
        a, n = x.numpy(), x.size(-1)
        part = np.partition(a, sorted({n - k for k in ks}), axis=-1)
        return torch.from_numpy(part[np.arange(len(ks)), [n - k for k in ks]])[:, None]
    return torch.topk(x, max(ks)).values.gather(1, torch.tensor(ks, device=x.device)[:, None] - 1)


def sort_descending(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row sorted, largest first, and the order that sorts it."""
    if x.device.type == "cpu":
        order = torch.from_numpy(np.argsort(-x.numpy(), axis=-1))
        return x.gather(-1, order), order
    return torch.sort(x, descending=True)


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: row b takes the token where its cumulative probability passes u[b] (B, 1) in [0, 1).

    One uniform number per row, from the row's own generator, makes the draw independent of the batch; a token
    of probability zero is never taken (the cumulative sum does not rise there)."""
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=probs.size(-1) - 1)
