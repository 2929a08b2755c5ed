"""`homegpt plan`: from a budget to a model shape, a token count, a batch, a learning rate and a bill.

1. Budget -> compute. FLOPs are given (--flops, counted as the law counts them: C = 6 N D), or bought
   (--budget-usd / --gpu-hours) at peak x MFU per GPU. Bought FLOPs are hardware FLOPs (6N + attention
   per token, as the trainer's MFU meter counts them), so the plan is scaled until the chosen model's
   real per-token cost fits the budget.
2. Compute -> N_opt, D_opt from the law's closed form (or, with few unique tokens, Muennighoff's
   data-constrained loss minimised along 6ND = C).
3. N_opt -> a homegpt shape with head dim 64 and a sensible depth/width (see search_shape), its parameters
   counted exactly for the architecture it will train with (Arch), and the tokens that spend the same
   compute on it, D = C / 6N.
4. The recipe per architecture (recipe()): the batch from DeepSeek LLM's compute fit for both; gpt2 trains
   with AdamW + cosine at DeepSeek's peak lr rule, modern with Muon + AdamW + WSD at train/config.py's tuned
   learning rates. Hours and dollars from the throughput.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from homegpt.errors import UserError
from homegpt.model.gpt import GPTConfig, count_params, flops_per_token
from homegpt.plan.scaling import Law, constrained_loss, constrained_optimum, load_law, unique_params
from homegpt.runtime.hardware import lookup_gpu
from homegpt.train.config import DEFAULT_ARCH

DEFAULT_VOCAB = 50304  # GPT-2's 50,257 tokens rounded up to a multiple of 64, as homegpt's tokenizer does
DEFAULT_BLOCK = 1024
DEFAULT_BYTES_PER_TOKEN = 4.2  # GPT-2-like BPE on English web text
HEAD_DIM = 64
# d_model / n_layer: GPT-2 (33-64) and Pythia (43-128) all lie in here; 64 (GPT-2 small, the $50 recipe)
# is preferred by a small penalty per octave away from it, in units of |ln(params / N_opt)|.
ASPECT_RANGE = (32, 128)
ASPECT_PENALTY = 0.02
DEEPSEEK_FIT_RANGE = (1e17, 2e19)
MIN_STEPS = 200  # the batch rule is shrunk until a run has at least this many optimizer steps


@dataclass(frozen=True)
class Arch:
    """The architecture a shape is planned for: what, besides the shape, sets its parameter count
    (model/gpt.py: gpt2 has position embeddings and biases, modern has q/k-norm gains, SwiGLU's hidden size,
    an untied head adds V x d) and which recipe trains it. Checked, and mlp made concrete, on creation."""

    arch: str = DEFAULT_ARCH
    mlp: str = ""  # "" = the architecture's first (gelu, swiglu)
    tie_embeddings: bool | None = None  # None = the architecture's default (choices.TIE_EMBEDDINGS)

    def __post_init__(self) -> None:
        probe = GPTConfig(arch=self.arch, mlp=self.mlp, tie_embeddings=self.tie_embeddings)  # UserError if bad
        object.__setattr__(self, "mlp", probe.mlp)
        object.__setattr__(self, "tie_embeddings", probe.tie_embeddings)

    def shape(self, n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int) -> GPTConfig:
        return GPTConfig(n_layer, n_head, n_embd, block_size, vocab_size, arch=self.arch, mlp=self.mlp,
                         tie_embeddings=self.tie_embeddings)


def recipe(arch: Arch, flops: float, lr: float | None = None) -> dict:
    """How `arch` trains at compute `flops`: optimizer, schedule and peak learning rates, exactly as
    TrainConfig.resolved() fills them (so plan, sweep and train agree), with lr overriding the matrices' rate.

    gpt2: AdamW on every parameter at DeepSeek's compute rule, cosine decay. modern: Muon on the blocks'
    matrices and AdamW on the embedding, an untied head and the gains, at train/config.py's tuned constants (not
    scaled with compute: see docs/planning.md), WSD schedule.
    """
    from homegpt.train.config import TrainConfig

    rule = arch.arch == "gpt2"
    cfg = TrainConfig(preset="", arch=arch.arch, lr=lr or (deepseek_lr(flops) if rule else 0.0)).resolved()
    if lr:
        how = "given"
    elif cfg.optimizer == "adamw":
        how = "DeepSeek LLM's rule 0.3118 C^-0.125"
    else:
        how = "train/config.py's tuned Muon recipe (MUON_LR, MUON_EMBEDDING_LR, MUON_HEAD_LR, MUON_SCALAR_LR)"
    return {"arch": arch.arch, "mlp": arch.mlp, "tie_embeddings": arch.tie_embeddings,
            "optimizer": cfg.optimizer, "schedule": cfg.schedule, "lr": cfg.lr, "embedding_lr": cfg.embedding_lr,
            "head_lr": cfg.head_lr, "scalar_lr": cfg.scalar_lr, "min_lr_ratio": cfg.min_lr_ratio,
            "decay_fraction": cfg.decay_fraction if cfg.schedule == "wsd" else None, "lr_rule": how}


@dataclass
class Throughput:
    """Sustained training FLOP/s per device, how it was obtained, and what a device-hour costs."""

    flops_per_s: float
    num_gpus: int
    price_per_hour: float | None
    gpu: str | None
    peak_tflops: float | None
    mfu: float | None
    measured: bool = False

    @property
    def total_flops_per_s(self) -> float:
        return self.flops_per_s * self.num_gpus


def _positive(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UserError(f"{name} must be a positive number, got {value:g}")


def resolve_throughput(gpu: str | None, num_gpus: int = 1, mfu: float | None = None, price: float | None = None,
                       peak_tflops: float | None = None) -> Throughput | None:
    """Peak x MFU per device from the GPU table, with any of its numbers overridden; None without hardware."""
    if not isinstance(num_gpus, int) or num_gpus < 1:
        raise UserError(f"--num-gpus must be a whole number >= 1, got {num_gpus}")
    if mfu is not None and not (0 < mfu <= 1):
        raise UserError(f"--mfu must be in (0, 1] (a fraction of peak, e.g. 0.35), got {mfu:g}")
    _positive("--price", price)
    _positive("--peak-tflops", peak_tflops)
    card = lookup_gpu(gpu) if gpu else None
    peak = peak_tflops or (card.peak_tflops if card else None)
    if peak is None:
        return None
    use_mfu = mfu if mfu is not None else (card.default_mfu if card else None)
    if use_mfu is None:
        raise UserError("--peak-tflops without --gpu needs --mfu (the fraction of peak you expect, e.g. 0.35)")
    return Throughput(peak * 1e12 * use_mfu, num_gpus, price or (card.price_per_hour if card else None),
                      card.key if card else None, peak, use_mfu)


# Tried in order until one gets within RELAX_ABOVE of the target: small models with a big vocabulary
# have few 64-wide options (a 64-wide model has at most 2 layers at aspect 32), so the band widens first,
# then heads narrow to 32.
SHAPE_RULES = ((HEAD_DIM, ASPECT_RANGE), (HEAD_DIM, (8, 256)), (32, (8, 256)))
RELAX_ABOVE = 0.10


def search_shape(n_target: float, vocab_size: int, block_size: int, max_width: int = 16384,
                 rules: tuple = SHAPE_RULES, arch: Arch | None = None) -> GPTConfig:
    """The homegpt shape whose exact total parameter count, for `arch` (default: the default recipe's
    architecture), is closest to n_target.

    Width is a multiple of the head size (64) and depth keeps d_model / n_layer within the aspect band
    (32..128: Kaplan et al. found loss nearly flat across it; GPT-2 and Pythia models lie in it). Among
    near-equal counts the aspect ratio nearest 64 wins: score = |ln(P / N)| + 0.02 |log2(ratio / 64)|,
    i.e. 2% off in count per octave off in shape. See SHAPE_RULES for when the band is relaxed.
    """
    arch = arch or Arch()
    best = None
    for head_dim, aspect in rules:
        found = _best_shape(n_target, vocab_size, block_size, max_width, head_dim, aspect, arch)
        if found is not None and (best is None or found[1] < best[1]):
            best = found
        if best is not None and best[1] <= math.log(1 + RELAX_ABOVE):
            break
    if best is None:
        raise UserError(f"no model shape fits {n_target:,.0f} parameters: check the budget and vocabulary")
    return best[0]


def _best_shape(n_target: float, vocab: int, block: int, max_width: int, head_dim: int,
                aspect: tuple[int, int], arch: Arch) -> tuple[GPTConfig, float] | None:
    """(shape, |ln(count / target)|) with the best score under one rule, or None if the rule allows none."""
    best: tuple[float, int, int, float] | None = None
    for width in range(head_dim, max_width + 1, head_dim):
        depths = np.arange(max(2, math.ceil(width / aspect[1])), width // aspect[0] + 1)
        if depths.size == 0:
            continue
        # count_params is linear in depth: two exact counts give every depth's count.
        one, two = (count_params(arch.shape(d, width // head_dim, width, block, vocab))["total"] for d in (1, 2))
        counts = one + (depths - 1) * (two - one)
        error = np.abs(np.log(counts / n_target))
        score = error + ASPECT_PENALTY * np.abs(np.log2(width / depths / 64.0))
        i = int(np.argmin(score))
        if best is None or score[i] < best[0]:
            best = (float(score[i]), int(depths[i]), width, float(error[i]))
        if counts[0] > 4 * n_target:  # wider shapes only grow
            break
    if best is None:
        return None
    _, depth, width, error = best
    return arch.shape(depth, width // head_dim, width, block, vocab), error


def deepseek_lr(flops: float) -> float:
    """Peak lr = 0.3118 C^-0.125 (DeepSeek LLM 2024), with C held inside the fitted 1e17..2e19 range."""
    c = min(max(flops, DEEPSEEK_FIT_RANGE[0]), DEEPSEEK_FIT_RANGE[1])
    return 0.3118 * c**-0.125


def batch_plan(flops: float, block_size: int, tokens: float) -> tuple[int, int]:
    """(batch_tokens, micro_batch): DeepSeek's B = 0.2920 C^0.3271 tokens as a power-of-two number of
    sequences, shrunk until the run has MIN_STEPS optimizer steps (tiny budgets lie outside the fit)."""
    seqs = 2 ** max(0, round(math.log2(max(1.0, 0.2920 * flops**0.3271 / block_size))))
    while seqs > 1 and tokens / (seqs * block_size) < MIN_STEPS:
        seqs //= 2
    # ~16k tokens per forward/backward pass; the trainer accumulates micro-batches up to the batch.
    micro = min(seqs, 2 ** max(0, int(math.log2(max(1, 16384 // block_size)))))
    return seqs * block_size, micro


def plan(*, flops: float | None = None, budget_usd: float | None = None, gpu_hours: float | None = None,
         gpu: str | None = None, num_gpus: int = 1, mfu: float | None = None, price: float | None = None,
         peak_tflops: float | None = None, law: str | Law = "epoch", vocab_size: int = DEFAULT_VOCAB,
         block_size: int = DEFAULT_BLOCK, bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN,
         unique_tokens: float | None = None, throughput: Throughput | None = None, arch: str = DEFAULT_ARCH,
         mlp: str = "", tie_embeddings: bool | None = None) -> dict:
    """A complete plan as a JSON-ready dict (see docs/planning.md for every key), for the recipe of `arch`
    (gpt2 | modern; mlp and tie_embeddings as in model/gpt.py)."""
    given = [k for k, v in (("--flops", flops), ("--budget-usd", budget_usd), ("--gpu-hours", gpu_hours))
             if v is not None]
    if len(given) != 1:
        raise UserError("give exactly one budget: --flops C, --budget-usd X --gpu NAME, or --gpu-hours H --gpu NAME"
                        + (f" (got {', '.join(given)})" if given else ""))
    for name, value in (("--flops", flops), ("--budget-usd", budget_usd), ("--gpu-hours", gpu_hours),
                        ("--bytes-per-token", bytes_per_token), ("--unique-tokens", unique_tokens)):
        _positive(name, value)
    if block_size < 1 or vocab_size < 1:
        raise UserError("--block-size and --vocab-size must be positive")
    if arch == "gpt2" and tie_embeddings is False:
        raise UserError("GPT-2 ties its head to the token embedding: --untied needs --arch modern")
    model = Arch(arch, mlp, tie_embeddings)
    the_law = law if isinstance(law, Law) else load_law(law)
    hw = throughput or resolve_throughput(gpu, num_gpus, mfu, price, peak_tflops)
    wall_hours = None  # hours of the whole machine the budget buys
    if budget_usd is not None:
        if hw is None or hw.price_per_hour is None:
            raise UserError("--budget-usd needs --gpu NAME (or --price with --peak-tflops and --mfu)")
        wall_hours = budget_usd / (hw.price_per_hour * hw.num_gpus)
    elif gpu_hours is not None:
        if hw is None:
            raise UserError("--gpu-hours needs --gpu NAME (or --peak-tflops with --mfu)")
        wall_hours = gpu_hours / hw.num_gpus

    if wall_hours is None:
        law_flops = float(flops)
        shape, tokens, n_opt, d_opt = _allocate(the_law, law_flops, vocab_size, block_size, unique_tokens, model)
    else:
        # Hardware FLOPs include attention and the head; find the law compute C whose run costs exactly them.
        hw_flops = wall_hours * 3600 * hw.total_flops_per_s
        law_flops = hw_flops
        for _ in range(8):
            shape, tokens, n_opt, d_opt = _allocate(the_law, law_flops, vocab_size, block_size, unique_tokens, model)
            ratio = flops_per_token(shape) / (6 * count_params(shape)["total"])
            if abs(hw_flops / ratio - law_flops) <= 1e-9 * law_flops:
                break
            law_flops = hw_flops / ratio
        # Whatever shape the iteration settled on (it can alternate between two), spend exactly the budget.
        tokens = hw_flops / flops_per_token(shape)
        law_flops = 6 * count_params(shape)["total"] * tokens
    return _describe(the_law, law_flops, shape, tokens, n_opt, d_opt, hw, bytes_per_token, unique_tokens, model)


def _allocate(law: Law, flops: float, vocab: int, block: int, unique: float | None, arch: Arch):
    """(shape, training tokens for it, N_opt, D_opt) for a compute budget."""
    n_opt, d_opt = law.optimum(flops)
    if unique is not None and unique < d_opt:
        n_opt, d_opt = constrained_optimum(law, flops, unique)
    shape = search_shape(n_opt, vocab, block, arch=arch)
    return shape, flops / (6 * count_params(shape)["total"]), n_opt, d_opt


def _describe(law: Law, flops: float, shape: GPTConfig, tokens: float, n_opt: float, d_opt: float,
              hw: Throughput | None, bytes_per_token: float, unique: float | None, arch: Arch) -> dict:
    params = count_params(shape)["total"]
    how = recipe(arch, flops)
    batch_tokens, micro = batch_plan(flops, shape.block_size, tokens)
    steps = max(1, math.ceil(tokens / batch_tokens))
    constrained = unique is not None and unique < tokens
    loss = constrained_loss(law, params, tokens, unique) if constrained else float(law.loss(params, tokens))
    hw_flops = tokens * flops_per_token(shape)
    hours = hw_flops / hw.total_flops_per_s / 3600 if hw else None
    cost = hours * hw.num_gpus * hw.price_per_hour if hw and hw.price_per_hour is not None else None
    warnings = []
    if abs(math.log(params / n_opt)) > math.log(1.25):
        warnings.append(f"no homegpt shape within 25% of N_opt = {n_opt:,.0f} with a {shape.vocab_size:,}-token "
                        f"vocabulary (the embedding alone is {shape.vocab_size * shape.n_embd:,}): "
                        f"use a smaller vocabulary or a bigger budget")
    if not DEEPSEEK_FIT_RANGE[0] <= flops <= DEEPSEEK_FIT_RANGE[1]:
        rules = "batch and lr rules were" if how["optimizer"] == "adamw" else "batch rule was"
        warnings.append(f"the {rules} fitted at 1e17-2e19 FLOPs: outside, treat them as a start")
    epochs = tokens / unique if unique else None
    if epochs is not None and epochs > 4:
        # The budget at which 4 epochs of the data is the compute-optimal token count: beyond it, more compute
        # buys little. N there is the parameter count whose optimal data is 4U.
        c4 = 6 * 4 * unique * unique_params(law, 4 * unique)
        warnings.append(f"{epochs:.1f} epochs over your data: beyond ~4 repeats each one is worth much less "
                        f"than fresh text (Muennighoff et al. 2023); about {c4:.2g} FLOPs is where more "
                        f"compute stops paying, or find more text")
    return {
        "flops": flops,
        "hardware_flops": hw_flops,
        "law": {"name": law.name, "E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta,
                "source": law.source},
        "n_opt": n_opt,
        "d_opt": d_opt,
        "tokens_per_param": d_opt / n_opt,
        "predicted_loss": loss,
        "predicted_loss_note": f"nats/token on {law.reference or 'the data the law was fitted on'}: "
                               f"a reference point, not a promise for your data or tokenizer",
        "model": {"n_layer": shape.n_layer, "n_head": shape.n_head, "n_embd": shape.n_embd,
                  "block_size": shape.block_size, "vocab_size": shape.vocab_size, "params": params,
                  "arch": shape.arch, "mlp": shape.mlp, "tie_embeddings": shape.tie_embeddings},
        "train_tokens": int(math.ceil(tokens)),
        "batch_tokens": batch_tokens,
        "micro_batch": micro,
        "steps": steps,
        "lr": how["lr"],
        "recipe": how,
        "warmup_steps": int(min(max(1, round(0.02 * steps)), 2000, max(1, steps // 2))),
        "hours": hours,
        "cost_usd": cost,
        "hardware": None if hw is None else {
            "gpu": hw.gpu, "num_gpus": hw.num_gpus, "peak_tflops": hw.peak_tflops, "mfu": hw.mfu,
            "price_per_gpu_hour": hw.price_per_hour, "flops_per_s_per_gpu": hw.flops_per_s, "measured": hw.measured},
        "data": {"unique_tokens": unique, "epochs": epochs, "constrained": constrained,
                 "text_tokens": int(math.ceil(tokens if unique is None else min(tokens, unique))),
                 "bytes_per_token": bytes_per_token,
                 "text_gb": (tokens if unique is None else min(tokens, unique)) * bytes_per_token / 1e9},
        "warnings": warnings,
    }


# ---- measured throughput, the user's data, the training config ------------------------------------------


def measure_plan(*, steps: int = 3, device: str | None = None, gpu: str | None = None, num_gpus: int = 1,
                 mfu: float | None = None, price: float | None = None, peak_tflops: float | None = None,
                 **kwargs) -> dict:
    """plan(), with the throughput timed on this machine: real training steps (forward, backward and the
    recipe's optimizer) of the planned architecture and shape.

    The shape depends on the budget and the budget on the throughput, so this re-plans with the measured
    FLOP/s and measures again until the shape stops changing (rarely more than two rounds). --gpu still
    supplies the price and the peak used to report MFU; the measured device is the one planned for.
    """
    from homegpt.train.config import TrainConfig
    from homegpt.train.loop import measure_throughput

    base = resolve_throughput(gpu, num_gpus, mfu, price, peak_tflops)
    # Before any timing: the table's throughput, or an arbitrary 1 TFLOP/s just to size a first candidate.
    result = plan(throughput=base or Throughput(1e12, num_gpus, price, None, None, None), **kwargs)
    measured_for, timing = None, {}
    for _ in range(3):
        m = result["model"]
        if (m["n_layer"], m["n_embd"]) == measured_for:
            break
        measured_for = (m["n_layer"], m["n_embd"])
        cfg = TrainConfig(preset="", n_layer=m["n_layer"], n_head=m["n_head"], n_embd=m["n_embd"],
                          block_size=m["block_size"], arch=m["arch"], mlp=m["mlp"],
                          tie_embeddings=m["tie_embeddings"], optimizer=result["recipe"]["optimizer"],
                          micro_batch=result["micro_batch"], device=device or "auto")
        timing = measure_throughput(cfg, m["vocab_size"], steps=steps)
        peak = base.peak_tflops if base else None
        thr = Throughput(timing["flops_per_s"], num_gpus, base.price_per_hour if base else price,
                         base.gpu if base else None, peak, timing["flops_per_s"] / (peak * 1e12) if peak else None,
                         measured=True)
        result = plan(throughput=thr, **kwargs)
    result["hardware"]["device"] = timing.get("device")
    return result


def count_data(spec: str, tokenizer: str | None = None, bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN) -> dict:
    """Unique training tokens in a prepared directory (exact), or a source (exact with a tokenizer, else
    estimated from its bytes at bytes_per_token). Also the vocabulary size when it is known."""
    path = Path(spec)
    if (path / "manifest.json").is_file():
        from homegpt.data.shards import read_manifest

        m = read_manifest(path)
        train = m["splits"]["train"]
        return {"tokens": train["tokens"], "bytes": train.get("bytes"), "vocab_size": m["model_vocab_size"],
                "bytes_per_token": train["bytes"] / train["tokens"] if train.get("bytes") else None,
                "how": f"counted in {path}/manifest.json"}
    from homegpt.data.sources import count_text

    if tokenizer is None:  # streamed: a big source is never held whole
        nbytes = _training_bytes(spec, count_text(spec)["train_bytes"])
        return {"tokens": int(nbytes / bytes_per_token), "bytes": nbytes, "vocab_size": None,
                "bytes_per_token": None, "how": f"estimated from {nbytes:,} bytes at {bytes_per_token} bytes/token"}
    from homegpt.data.tokenizer import load_tokenizer, round_vocab
    from homegpt.eval.textscore import count_tokens

    tok = load_tokenizer(tokenizer)
    counts = count_tokens(spec, tok, split="train")  # + <|endoftext|> per document, as prepare packs them
    nbytes, tokens = _training_bytes(spec, counts["bytes"]), counts["tokens"]
    return {"tokens": tokens, "bytes": nbytes, "vocab_size": round_vocab(tok.get_vocab_size()),
            "bytes_per_token": nbytes / tokens, "how": f"counted with {tokenizer}"}


def _training_bytes(spec: str, nbytes: int) -> int:
    if nbytes == 0:
        raise UserError(f"source {spec!r} holds no training text: the corpus is empty")
    return nbytes


def write_config(result: dict, path: str | Path, data_dir: str | None = None) -> Path:
    """A flat TOML that `homegpt train` accepts unchanged, its schedule spanning the planned tokens."""
    from homegpt.train.config import TrainConfig, dump_toml

    m, r = result["model"], result["recipe"]
    values = {
        "data_dir": data_dir or "data",
        "preset": "",
        "n_layer": m["n_layer"], "n_head": m["n_head"], "n_embd": m["n_embd"], "block_size": m["block_size"],
        "arch": m["arch"], "mlp": m["mlp"], "tie_embeddings": m["tie_embeddings"],
        "optimizer": r["optimizer"], "schedule": r["schedule"],
        "batch_tokens": result["batch_tokens"],
        "micro_batch": result["micro_batch"],
        "max_tokens": result["train_tokens"],
        "lr": _lr(r["lr"]),
    }
    if r["optimizer"] == "muon":  # AdamW trains every parameter at lr: the other rates are Muon's recipe only
        values.update(embedding_lr=_lr(r["embedding_lr"]), scalar_lr=_lr(r["scalar_lr"]))
        if not m["tie_embeddings"]:
            values["head_lr"] = _lr(r["head_lr"])
    values.update(warmup_steps=result["warmup_steps"], eval_interval=max(1, min(1000, result["steps"] // 20)))
    TrainConfig.from_dict(values)  # the same check `homegpt train` makes, before anything is written
    other = "modern" if m["arch"] == "gpt2" else "gpt2"
    head = [
        "# written by `homegpt plan`: a compute-optimal run under the law "
        f"{result['law']['name']!r} for C = {result['flops']:.3g} FLOPs",
        f"# {m['params']:,} parameters (vocabulary {m['vocab_size']:,}) trained on {result['train_tokens']:,} tokens",
        f"# the parameter count assumes a {m['vocab_size']:,}-token model vocabulary: "
        "with another tokenizer, plan again with --data-dir",
        *textwrap.wrap(f"recipe: {recipe_text(result)}", 110, initial_indent="# ", subsequent_indent="#   "),
        f"# for the {other} recipe, plan again with --arch {other} (its parameter count and learning rates differ)",
    ]
    if not data_dir:
        head.append('# data_dir: point it at the output of `homegpt prepare` (e.g. data_dir = "data/mytext")')
    out = Path(path)
    if out.parent and not out.parent.exists():
        raise UserError(f"folder {out.parent} does not exist: create it or write the config elsewhere")
    out.write_text("\n".join(head) + "\n" + dump_toml(values), encoding="utf-8")
    return out


def _lr(value: float) -> float:
    return float(f"{value:.3g}")


def recipe_text(result: dict) -> str:
    """The plan's recipe in one line, e.g. for the table and the written config's comment."""
    m, r = result["model"], result["recipe"]
    model = f"{r['arch']} ({r['mlp']}, {'tied' if r['tie_embeddings'] else 'untied'} head)"
    if r["optimizer"] == "adamw":
        rates = f"AdamW at peak lr {r['lr']:.3g} ({r['lr_rule']})"
    else:
        head = "" if m["tie_embeddings"] else f", head {r['head_lr']:.3g}"
        rates = (f"Muon at lr {r['lr']:.3g} on the blocks' matrices, AdamW at {r['embedding_lr']:.3g} on the "
                 f"embedding{head}, {r['scalar_lr']:.3g} on the gains")
    schedule = ("cosine" if r["schedule"] == "cosine" else f"WSD (decay over the last {r['decay_fraction']:.0%})")
    floor = f"{r['min_lr_ratio']:g} x the peak" if r["min_lr_ratio"] else "0"
    return f"{model}: {rates}; warmup {result['warmup_steps']} steps, {schedule} down to {floor}"
