"""GPU training benchmark and CUDA smoke checks, in one short script for a session that has a GPU.

The benchmark: the `seed-51m` preset (8 layers, 8 heads, 512 wide, 50,304-token vocabulary) at context 1024
through the real trainer (`homegpt.train.loop.train`: bf16 autocast, torch.compile, fused AdamW, automatic
micro-batch, the real loader) on data made by the real pipeline. It reports the steady tokens/s and MFU
from the run's own metrics.csv (the live meter; evaluation and checkpoint time excluded), and the time and
cost to train 1.1B tokens at that rate (the $50 recipe's token count; price: the GPU table's, or --price).
Issue 6's target on an H100: MFU >= 45%, 1.1B tokens in <= 15 minutes.

The peer: Hugging Face transformers' GPT2LMHeadModel (Qwen3ForCausalLM for --arch modern with a SwiGLU MLP)
at the same shape, batch, bf16 autocast, SDPA, torch.compile and fused AdamW, timed in a plain loop in the
same run (skipped if transformers is missing, and for modern ReLU², which transformers has no model of).

The checks (--checks): the CUDA code paths the CPU test suite cannot reach, each a tiny real run: fp16 with
a gradient scaler, a stop + resume, sampling with the KV cache and evaluation on the GPU.

The data is synthetic text (seeded random words with Zipf frequencies, so the 50,257-token tokenizer fills
up) pushed through `homegpt tokenizer` + `homegpt prepare`: speed does not depend on what the text says.

    python benchmarks/gpu_train.py [--json] [--steps 40] [--batch-tokens 524288] [--checks] [--no-peer]
    python benchmarks/gpu_train.py --device cpu --preset cpu-tiny --block-size 64 --vocab-size 512 \\
        --batch-tokens 2048 --steps 6 --checks      # the same code paths, in seconds, on a CPU

With --json the last line is one JSON object (device, tokens_per_s, mfu, projected_minutes_1_1b_tokens,
projected_cost_usd_1_1b_tokens, peer_tokens_per_s, ratio, checks, ...).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from homegpt.data.prepare import prepare
from homegpt.data.tokenizer import train_tokenizer
from homegpt.model.gpt import flops_per_token
from homegpt.rundir.checkpoint import checkpoint_dirs
from homegpt.runtime.device import autocast_for, pick_device
from homegpt.share.hf_arch import HF_CLASS
from homegpt.train.config import TrainConfig
from homegpt.train.loop import train

TOKENS_1_1B = 1.1e9


def synthetic_corpus(folder: Path, megabytes: float, words: int = 80_000, seed: int = 0) -> None:
    """Documents of random lowercase words with Zipf-distributed frequencies, one .txt file per document."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lexicon = ["".join(rng.choice(letters, size=int(n))) for n in rng.integers(2, 10, size=words)]
    p = 1.0 / np.arange(1, words + 1)
    p /= p.sum()
    folder.mkdir(parents=True, exist_ok=True)
    written, doc = 0, 0
    while written < megabytes * 1e6:
        ids = rng.choice(words, size=2000, p=p)
        text = " ".join(lexicon[i] for i in ids) + "\n"
        (folder / f"doc{doc:05d}.txt").write_text(text, encoding="utf-8")
        written += len(text)
        doc += 1


def make_data(root: Path, vocab_size: int, megabytes: float) -> Path:
    data = root / f"data-v{vocab_size}-{megabytes:g}mb"
    if (data / "manifest.json").is_file():
        return data
    synthetic_corpus(root / "corpus", megabytes)
    train_tokenizer(f"file:{root / 'corpus'}", vocab_size, root / "tok", force=True)
    prepare(f"file:{root / 'corpus'}", root / "tok", data, force=True, progress=False)
    return data


def steady_rate(run: Path, skip: int) -> tuple[float, float]:
    """Median tokens/s and MFU over the metrics rows after the first `skip` steps (compile, autotuning)."""
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    rows = rows[skip:] or rows[-1:]
    return (statistics.median(float(r["tokens_per_s"]) for r in rows),
            statistics.median(float(r["mfu"]) for r in rows))


def peer_rate(cfg: TrainConfig, vocab: int, micro: int, device: torch.device, steps: int) -> float | None:
    """transformers' counterpart (GPT2LMHeadModel; Qwen3ForCausalLM for modern SwiGLU), same shape and batch,
    bf16 autocast, SDPA, compile, fused AdamW. None when transformers is missing or has no model of the same
    cost (modern ReLU²)."""
    from train_throughput import has_peer, make_transformers  # the CPU benchmark's peer, same configuration

    m = cfg.model_config(vocab)
    if not has_peer(m):
        return None
    try:
        model = make_transformers(m)[0].to(device)
    except ImportError:
        return None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device.type == "cuda")
    run = torch.compile(model) if cfg.compile_enabled(device) else model
    autocast = autocast_for(device, cfg.dtype)
    accum = max(1, cfg.batch_tokens // (micro * m.block_size))
    x = torch.randint(0, m.vocab_size, (micro, m.block_size + 1), device=device)

    def step() -> None:
        for _ in range(accum):
            with autocast:
                logits = run(input_ids=x[:, :-1]).logits
                loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)),
                                                         x[:, 1:].reshape(-1))
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # compile and warm-up
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * accum * micro * m.block_size / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_checks(data: Path, base: dict, work: Path) -> dict:
    """Tiny real runs over the GPU-only code paths; each entry 'ok' or the error it raised."""
    from homegpt.eval.evaluate import evaluate_run
    from homegpt.generate.sample import sample_run

    results: dict[str, str] = {}
    small = dict(base, max_steps=6, eval_interval=3, eval_tokens=4096, batch_tokens=base["block_size"] * 8,
                 micro_batch=4, sample_tokens=8)

    def check(name, fn) -> None:
        try:
            fn()
            results[name] = "ok"
        except Exception as e:  # a benchmark reports failures; it does not stop at the first
            results[name] = f"FAILED: {type(e).__name__}: {e}"

    def fp16():
        r = train(TrainConfig(**dict(small, dtype="fp16")), work / "fp16", force=True, progress=False)
        assert r["finished"] and np.isfinite(r["val_loss"]), r

    def resume():
        cfg = TrainConfig(**small)
        part = train(cfg, work / "resume", force=True, progress=False, stop_after=2)
        assert part["finished"] is False, part
        whole = train(cfg, work / "resume", resume=True, progress=False)
        assert whole["finished"] and whole["step"] == 6, whole

    def sample_and_eval():
        texts = sample_run(work / "resume", "the", max_new_tokens=16, num_samples=2, device=base["device"])
        assert len(texts) == 2
        ev = evaluate_run(work / "resume", device=base["device"], step="best")
        assert np.isfinite(ev["loss"]), ev

    check("fp16_grad_scaler", fp16)
    check("stop_and_resume", resume)
    check("sample_and_eval_best", sample_and_eval)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="seed-51m")
    ap.add_argument("--arch", default="gpt2", choices=("gpt2", "modern"),
                    help="gpt2: AdamW at lr 6e-4 (peer GPT2LMHeadModel); modern: the modern recipe's defaults")
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--vocab-size", type=int, default=50257, help="tokenizer size (the model pads to 64)")
    ap.add_argument("--batch-tokens", type=int, default=524288)
    ap.add_argument("--micro-batch", type=int, default=0, help="0 = automatic (the default)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=10, help="steps left out of the rate (compile, warm-up)")
    ap.add_argument("--corpus-mb", type=float, default=24.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", default="auto")
    ap.add_argument("--price", type=float, default=0.0, help="USD per GPU-hour (default: the GPU table's)")
    ap.add_argument("--work", default=None, help="folder for data and runs (default: a temporary one)")
    ap.add_argument("--checks", action="store_true", help="also run the GPU smoke checks")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    device = pick_device(args.device)
    work = Path(args.work or tempfile.mkdtemp(prefix="homegpt-gpu-bench-"))
    t0 = time.perf_counter()
    data = make_data(work, args.vocab_size, args.corpus_mb)
    data_seconds = time.perf_counter() - t0
    base = dict(data_dir=str(data), preset=args.preset, block_size=args.block_size, batch_tokens=args.batch_tokens,
                micro_batch=args.micro_batch, max_steps=args.steps, warmup_steps=10, arch=args.arch,
                lr=6e-4 if args.arch == "gpt2" else 0.0,
                eval_interval=10 * args.steps, eval_tokens=65536, sample_tokens=0, device=str(device),
                compile=args.compile, price=args.price)
    cfg = TrainConfig(**base)
    cfg.validate()
    run = work / "bench"
    result = train(cfg, run, force=True, progress=not args.json)
    state = json.loads((checkpoint_dirs(run)[-1] / "state.json").read_text())
    micro = int(state["micro_batch"])
    tps, mfu = steady_rate(run, args.skip)
    vocab = json.loads((data / "manifest.json").read_text())["model_vocab_size"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    price = args.price
    if not price and device.type == "cuda":
        from homegpt.runtime.hardware import detect_gpu

        gpu = detect_gpu(name)
        price = gpu.price_per_hour if gpu else 0.0
    out = {
        "device": name,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "preset": args.preset,
        "arch": args.arch,
        "block_size": args.block_size,
        "model_vocab_size": vocab,
        "params": result["params"],
        "flops_per_token": flops_per_token(cfg.model_config(vocab)),
        "batch_tokens": args.batch_tokens,
        "micro_batch": micro,
        "dtype": cfg.dtype,
        "compile": cfg.compile_enabled(device),
        "steps": args.steps,
        "tokens_per_s": round(tps, 1),
        "mfu": round(mfu, 4),
        "projected_minutes_1_1b_tokens": round(TOKENS_1_1B / tps / 60, 2),
        "price_per_hour": price,
        "projected_cost_usd_1_1b_tokens": round(TOKENS_1_1B / tps / 3600 * price, 3) if price else None,
        "val_loss_after_steps": round(result["val_loss"], 4),
        "data_seconds": round(data_seconds, 1),
    }
    if not args.no_peer:
        peer = peer_rate(cfg, vocab, micro, device, max(3, args.steps // 4))
        if peer:
            out.update(peer=f"transformers {HF_CLASS[cfg.model_config(vocab).arch]}", peer_tokens_per_s=round(peer, 1),
                       ratio=round(tps / peer, 3))
    if args.checks:
        out["checks"] = run_checks(data, base, work)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:34s} {value}")
    if any(str(v).startswith("FAILED") for v in out.get("checks", {}).values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
