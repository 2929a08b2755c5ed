"""Training throughput: homegpt vs its Hugging Face transformers counterpart, side by side in one run.

GPT-2 (the default, --arch gpt2) against GPT2LMHeadModel; the modern architecture with SwiGLU (--arch modern
--mlp swiglu) against Qwen3ForCausalLM built from the very config `homegpt export` writes for it. Same shape
(layers, heads, width, vocabulary, sequence length), same batch, fp32, SDPA attention, the same AdamW
settings on every parameter (not the modern recipe's Muon: the point is the model code), random tokens.
Each library trains in its own worker process, set up the way a user of it would run it: the homegpt
worker does what `homegpt train` does on a CPU before training (it keeps freed memory for reuse:
`homegpt.runtime.device.tune_cpu_allocator`), the transformers worker is a plain PyTorch loop.
The workers take turns (ABAB...) so that machine noise hits both alike; each round is several optimizer
steps after a warm-up; the median round counts. --same-process times both models in this one process
instead, under the same allocator, which measures the model code alone.

    python benchmarks/train_throughput.py [--json] [--same-process] [--arch gpt2|modern --mlp swiglu|relu2]
        [--n-layer 4 --n-head 4 --n-embd 192 --block-size 128 --vocab-size 2048 --batch 32 --rounds 5 --steps 4]

Also prints achieved GFLOP/s (6N + 12 * n_layer * n_embd * block_size FLOPs per token, the PaLM formula).
With --json the last line is one JSON object with homegpt_tokens_per_s, transformers_tokens_per_s, ratio
(and arch, mlp, transformers_class). transformers has no ReLU² model of the same cost (the export computes
ReLU² as relu(gate) * up with gate = up, one more matmul), so --mlp relu2 measures homegpt alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch

from homegpt.model.gpt import GPT, GPTConfig, flops_per_token
from homegpt.runtime.device import tune_cpu_allocator
from homegpt.share.hf_arch import HF_CLASS

SIDES = ("homegpt", "transformers")


def make_homegpt(cfg: GPTConfig):
    model = GPT(cfg)

    def step(x, y):
        _, loss = model(x, y)
        return loss

    return model, step


def has_peer(cfg: GPTConfig) -> bool:
    """Whether transformers has a model that computes the same thing at the same cost."""
    return cfg.arch == "gpt2" or cfg.mlp == "swiglu"


def make_transformers(cfg: GPTConfig):
    model = (make_gpt2 if cfg.arch == "gpt2" else make_qwen3)(cfg)

    def step(x, y):
        logits = model(input_ids=x).logits  # the same next-token loss on the same targets as homegpt
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))

    return model, step


def make_qwen3(cfg: GPTConfig):
    """Qwen3ForCausalLM from the config `homegpt export` writes for this model (hf_arch.to_hf)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from homegpt.share.hf_arch import to_hf

    with torch.device("meta"):  # the config needs the names, not the weights
        state = GPT(cfg).state_dict()
    config, _ = to_hf(cfg, state, eot_id=0)
    return Qwen3ForCausalLM._from_config(Qwen3Config.from_dict(config), attn_implementation="sdpa")


def make_gpt2(cfg: GPTConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
    )
    return GPT2LMHeadModel._from_config(hf_cfg, attn_implementation="sdpa")


class Contender:
    """One library's model, optimizer and batch, ready to time rounds of training steps."""

    def __init__(self, side: str, cfg: GPTConfig, batch: int) -> None:
        torch.manual_seed(0)
        data = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size + 1))
        self.x, self.y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
        self.model, self.step = (make_homegpt if side == "homegpt" else make_transformers)(cfg)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.time_round(1)  # warm-up: allocator, kernels

    def time_round(self, steps: int) -> float:
        t = time.perf_counter()
        for _ in range(steps):
            loss = self.step(self.x, self.y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return steps * self.x.numel() / (time.perf_counter() - t)


def model_config(args) -> GPTConfig:
    return GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size,
                     vocab_size=args.vocab_size, arch=args.arch, mlp=args.mlp)


def worker(args) -> None:
    """Serve rounds on stdin/stdout: print the parameter count, then one tokens/s line per 'round' line."""
    if args.worker == "homegpt":
        tune_cpu_allocator()  # as `homegpt train` does on a CPU
    contender = Contender(args.worker, model_config(args), args.batch)
    print(contender.params, flush=True)
    for line in sys.stdin:
        if line.strip() != "round":
            break
        print(contender.time_round(args.steps), flush=True)


class Remote:
    """A worker process driven over pipes: one round at a time, while the other worker waits."""

    def __init__(self, side: str, argv: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", side, *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.params = int(self._read())

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"benchmark worker exited with code {self.proc.wait()}")
        return line

    def time_round(self, steps: int) -> float:
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        return float(self._read())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=192)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--arch", choices=("gpt2", "modern"), default="gpt2")
    ap.add_argument("--mlp", choices=("swiglu", "relu2"), default=None,
                    help="modern only (default swiglu, the MLP transformers' Qwen3 computes)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--same-process", action="store_true", help="time both models in this process")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mlp and args.arch != "modern":
        ap.error("--mlp needs --arch modern")
    args.mlp = args.mlp or ("swiglu" if args.arch == "modern" else "")
    if args.worker:
        return worker(args)

    cfg = model_config(args)
    sides = SIDES
    if not has_peer(cfg):
        print("transformers has no ReLU² model at the same cost: measuring homegpt alone (--mlp swiglu compares)")
        sides = SIDES[:1]
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("transformers is not installed: measuring homegpt alone (pip install transformers)")
        sides = SIDES[:1]
    if args.same_process:
        contenders = {side: Contender(side, cfg, args.batch) for side in sides}
    else:
        argv = [a for a in sys.argv[1:] if a not in ("--json", "--same-process")]
        contenders = {side: Remote(side, argv) for side in sides}
    rates: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side, c in contenders.items():
            rates[side].append(c.time_round(args.steps))
    if not args.same_process:
        for c in contenders.values():
            c.close()
    fpt = flops_per_token(cfg)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "mode": "same process" if args.same_process else "one process per library",
        "shape": {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "block_size": cfg.block_size,
                  "vocab_size": cfg.vocab_size, "batch": args.batch},
        "arch": cfg.arch,
        "mlp": cfg.mlp,
        "params": contenders["homegpt"].params,
        "homegpt_tokens_per_s": statistics.median(rates["homegpt"]),
        "homegpt_rounds": [round(r, 1) for r in rates["homegpt"]],
    }
    result["homegpt_gflops"] = result["homegpt_tokens_per_s"] * fpt / 1e9
    if "transformers" in rates:
        result["transformers_class"] = HF_CLASS[cfg.arch]
        result["transformers_tokens_per_s"] = statistics.median(rates["transformers"])
        result["transformers_rounds"] = [round(r, 1) for r in rates["transformers"]]
        result["ratio"] = result["homegpt_tokens_per_s"] / result["transformers_tokens_per_s"]
    for key, value in result.items():
        if not args.json:
            print(f"{key:28s} {value:,.1f}" if isinstance(value, float) else f"{key:28s} {value}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
