"""Training throughput: homegpt vs Hugging Face transformers' GPT2LMHeadModel, side by side in one run.

Same shape (layers, heads, width, vocabulary, sequence length), same batch, fp32, SDPA attention, the same
AdamW settings, random tokens. The two are timed in alternating rounds (ABAB...) so that machine noise hits
both alike; each round is several optimizer steps after a warm-up; the median round counts.

    python benchmarks/train_throughput.py [--json] [--n-layer 4 --n-head 4 --n-embd 192 --block-size 128
                                           --vocab-size 2048 --batch 32 --rounds 5 --steps 4]

Also prints achieved GFLOP/s (6N + 12 * n_layer * n_embd * block_size FLOPs per token, the PaLM formula).
With --json the last line is one JSON object with homegpt_tokens_per_s, transformers_tokens_per_s, ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from homegpt.model import GPT, GPTConfig, flops_per_token


def make_homegpt(cfg: GPTConfig):
    model = GPT(cfg)

    def step(x, y):
        _, loss = model(x, y)
        return loss

    return model, step


def make_transformers(cfg: GPTConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel._from_config(hf_cfg, attn_implementation="sdpa")

    def step(x, y):
        logits = model(input_ids=x).logits  # the same next-token loss on the same targets as homegpt
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))

    return model, step


def time_round(model, step, x, y, opt, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        loss = step(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * x.numel() / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=192)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size,
                    vocab_size=args.vocab_size)
    data = torch.randint(0, cfg.vocab_size, (args.batch, cfg.block_size + 1))
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    contenders = {"homegpt": make_homegpt(cfg)}
    try:
        contenders["transformers"] = make_transformers(cfg)
    except ImportError:
        print("transformers is not installed: measuring homegpt alone (pip install transformers)")
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
            for name, (m, _) in contenders.items()}
    for name, (m, step) in contenders.items():  # warm-up: allocator, kernels
        time_round(m, step, x, y, opts[name], 1)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, (m, step) in contenders.items():
            rates[name].append(time_round(m, step, x, y, opts[name], args.steps))
    fpt = flops_per_token(cfg)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "shape": {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "block_size": cfg.block_size,
                  "vocab_size": cfg.vocab_size, "batch": args.batch},
        "params": sum(p.numel() for p in contenders["homegpt"][0].parameters()),
        "homegpt_tokens_per_s": statistics.median(rates["homegpt"]),
    }
    result["homegpt_gflops"] = result["homegpt_tokens_per_s"] * fpt / 1e9
    if "transformers" in rates:
        result["transformers_tokens_per_s"] = statistics.median(rates["transformers"])
        result["ratio"] = result["homegpt_tokens_per_s"] / result["transformers_tokens_per_s"]
    for key, value in result.items():
        if not args.json:
            print(f"{key:28s} {value:,.1f}" if isinstance(value, float) else f"{key:28s} {value}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
