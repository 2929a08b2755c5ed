"""The GPT: GPT-2's architecture in plain PyTorch, read top to bottom.

Learned absolute positions, pre-LayerNorm blocks, a GELU MLP of width 4d, the output head tied to the
token embedding, attention through `scaled_dot_product_attention` (flash / memory-efficient kernels where
the device has them), and GPT-2's initialisation with residual projections scaled by 1/sqrt(2 * n_layer).

Generation uses a preallocated key/value cache: the prompt runs once, then each new token costs one
position of attention instead of re-running the whole sequence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from homegpt.errors import UserError, closest


@dataclass
class GPTConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 256
    vocab_size: int = 4096
    dropout: float = 0.0
    bias: bool = True

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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise UserError(f"unknown model setting {key!r}{closest(key, known)}")
        return cls(**d)


# Named shapes. vocab_size here is a default: a run takes its vocabulary size from its tokenizer.
PRESETS: dict[str, dict] = {
    # The $50 recipe's model: 8 layers, 8 heads, 512 wide, GPT-2's 50,304-token vocabulary.
    "seed-51m": dict(n_layer=8, n_head=8, n_embd=512, block_size=1024, vocab_size=50304),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304),
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

    total counts the tied embedding once; non_embedding leaves out token and position embeddings
    (Kaplan et al.'s convention). Per layer: 2 LayerNorms, qkv, attention proj, MLP up and down.
    """
    d, b = cfg.n_embd, int(cfg.bias)
    layer_norms = 2 * (d + b * d)
    attention = (3 * d * d + b * 3 * d) + (d * d + b * d)
    mlp = (4 * d * d + b * 4 * d) + (4 * d * d + b * d)
    per_layer = layer_norms + attention + mlp
    embedding = cfg.vocab_size * d + cfg.block_size * d
    non_embedding = cfg.n_layer * per_layer + (d + b * d)  # + final LayerNorm
    return {"total": embedding + non_embedding, "non_embedding": non_embedding, "embedding": embedding}


def flops_per_token(cfg: GPTConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6N (forward + backward matmuls) + attention 12 * L * d * T (PaLM, App. B).

    N here is the non-embedding count plus the output head (the position lookup costs no matmul).
    """
    t = seq_len or cfg.block_size
    n = count_params(cfg)["non_embedding"] + cfg.vocab_size * cfg.n_embd
    return 6.0 * n + 12.0 * cfg.n_layer * cfg.n_embd * t


class KVCache:
    """Preallocated keys and values for every layer: (n_layer, batch, n_head, max_len, head_dim)."""

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, device, dtype) -> None:
        shape = (cfg.n_layer, batch, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # how many positions are filled

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.size(2)
        self.k[layer, :, :, self.pos : self.pos + t] = k
        self.v[layer, :, :, self.pos : self.pos + t] = v
        end = self.pos + t
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (N, V) logits, the same value as F.cross_entropy, with a cheaper backward on CPU.

    Why: on a CPU the loss over a large vocabulary costs as much as a transformer layer. The gradient is
    softmax(logits) - onehot(target), and softmax = exp(log_softmax), which the forward pass already
    computed: the backward turns that saved tensor into the gradient in place (one exp pass), where
    autograd's generic path fills a zero tensor, scatters into it and runs a separate log-softmax backward.
    Measured on a 2-core CPU: 37 ms instead of 67-75 ms for 4,096 x 2,048 logits. The saved tensor is
    consumed, so this graph can't be backpropagated twice (training never does).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=-1)
        ctx.save_for_backward(logp, targets)
        return -logp.gather(1, targets[:, None]).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logp, targets = ctx.saved_tensors
        g = logp.exp_()  # softmax probabilities, written over the saved log-probabilities
        g.scatter_add_(1, targets[:, None], torch.full((targets.numel(), 1), -1.0, dtype=g.dtype))
        return g.mul_(grad / targets.numel()), None


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is None:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            start = cache.pos
            k, v = cache.append(layer, k, v)
            if T == 1:  # one new token attends to everything before it: no mask needed
                y = F.scaled_dot_product_attention(q, k, v)
            else:  # a chunk of new tokens after `start` cached ones: causal within the chunk
                mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # tanh-approximated GELU, as GPT-2 (and transformers' "gelu_new") uses.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): one matrix both reads and writes tokens.
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled so the residual stream's variance doesn't grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> dict[str, int]:
        """Summed over the real tensors; parameters() yields the tied matrix once."""
        total = sum(p.numel() for p in self.parameters())
        embedding = self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return {"total": total, "non_embedding": total - embedding, "embedding": embedding}

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        reduction: str = "mean",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and, with targets, the cross-entropy (mean nats/token, or per token)."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise UserError(
                f"sequence of {start + T} tokens is longer than the model's context of "
                f"{self.config.block_size}: shorten the prompt or lower --max-new-tokens"
            )
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i)
        if cache is not None:
            cache.pos += T
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x), None
        logits = self.lm_head(x)
        flat_logits, flat_targets = logits.float().view(-1, logits.size(-1)), targets.reshape(-1)
        if reduction == "mean" and logits.device.type == "cpu" and torch.is_grad_enabled():
            return logits, CrossEntropy.apply(flat_logits, flat_targets)
        return logits, F.cross_entropy(flat_logits, flat_targets, reduction=reduction)

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
        """Yield one (B, 1) tensor of new tokens at a time; temperature 0 means greedy decoding."""
        total = idx.size(1) + max_new_tokens
        if total > self.config.block_size:
            raise UserError(
                f"prompt ({idx.size(1)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                f"model's context of {self.config.block_size} tokens: shorten one of them"
            )
        cache = None
        if use_cache:
            p = next(self.parameters())
            cache = KVCache(self.config, idx.size(0), total, p.device, p.dtype)
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
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)
