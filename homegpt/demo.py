"""`homegpt demo`: the whole pipeline in a few minutes on a laptop CPU.

tokenizer -> shards -> a GPT sized for the time budget and the data -> held-out metrics -> samples.
The model's shape is fixed small (it has to learn in minutes on two cores); the number of training tokens
is chosen by timing a few real steps on this machine, then capped so a small corpus is not repeated for
more epochs than helps (past a few epochs a small model starts to memorise rather than learn).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from homegpt.config import TrainConfig
from homegpt.errors import UserError
from homegpt.prepare import prepare, read_manifest
from homegpt.tokenizer import train_tokenizer

DEMO_PROMPTS = ("In the beginning", "The king said", "Love is")
DEMO_VOCAB = 2048
MAX_EPOCHS = 8.0
OVERHEAD_S = 25.0  # final evaluation, samples and the plot, after training


def demo_config(data_dir: Path, seed: int = 1337) -> TrainConfig:
    """The demo's model and optimiser: tuned on 2 CPU cores for ~4 minutes of training."""
    return TrainConfig(
        data_dir=str(data_dir),
        preset="",
        n_layer=4,
        n_head=4,
        n_embd=192,
        block_size=128,
        dropout=0.0,
        batch_tokens=4096,
        micro_batch=32,
        lr=3e-3,
        min_lr_ratio=0.1,
        warmup_steps=30,
        weight_decay=0.1,
        eval_interval=100,
        eval_tokens=16384,
        sample_tokens=48,
        seed=seed,
    )


def run_demo(
    source: str = "builtin",
    out_dir: str | Path = "runs/demo",
    seconds: float = 280.0,
    force: bool = False,
    device: str = "auto",
    log=None,
    progress: bool = True,
) -> dict:
    """Run the pipeline into out_dir (tokenizer/, data/, run/) within about `seconds` of wall time."""
    from homegpt.sample import sample_run
    from homegpt.train import measure_throughput, train

    log = log or (lambda m: print(m, file=sys.stderr))
    t0 = time.perf_counter()
    out = Path(out_dir)
    if (out / "run" / "run.json").exists() and not force:
        raise UserError(f"{out} already holds a demo run: choose another --out or pass --force")
    log(f"[1/5] tokenizer: byte-level BPE, {DEMO_VOCAB} tokens, trained on {source}")
    tok_info = train_tokenizer(source, DEMO_VOCAB, out / "tokenizer", force=True)
    log(f"      {tok_info['bytes_per_token']:.2f} bytes/token on held-out text")
    log("[2/5] prepare: encoding documents into token shards")
    prepare(source, out / "tokenizer", out / "data", force=True)
    manifest = read_manifest(out / "data")
    train_tokens = manifest["splits"]["train"]["tokens"]
    log(f"      {train_tokens:,} training tokens, {manifest['splits']['val']['tokens']:,} held-out")

    cfg = demo_config(out / "data")
    cfg.device = device
    vocab = manifest["model_vocab_size"]
    speed = measure_throughput(cfg, vocab, steps=2)
    budget_s = max(10.0, seconds - (time.perf_counter() - t0) - OVERHEAD_S)
    # Evaluations take ~8% of the time at this size; the rest is training steps.
    affordable = int(speed["tokens_per_s"] * budget_s * 0.92)
    max_tokens = min(affordable, int(MAX_EPOCHS * train_tokens))
    steps = max(cfg.warmup_steps + 10, max_tokens // cfg.batch_tokens)
    cfg.max_steps, cfg.eval_interval = steps, max(10, steps // 6)
    if max_tokens < affordable:
        log(f"      data-limited: capping at {MAX_EPOCHS:g} epochs of the training split")
    log(f"[3/5] train: {steps} steps x {cfg.batch_tokens} tokens at ~{speed['tokens_per_s']:,.0f} tok/s measured "
        f"(~{budget_s:.0f} s budget) on {speed['device']}")
    result = train(cfg, out / "run", force=True, progress=progress, log=log)
    log(f"[4/5] held-out: loss {result['val_loss']:.4f} nats/token, perplexity {result['val_perplexity']:.2f}, "
        f"{result['val_bpb']:.3f} bits/byte")
    log("[5/5] samples:")
    samples = {}
    prompts = DEMO_PROMPTS if source == "builtin" else ("",)
    for i, prompt in enumerate(prompts):
        text = sample_run(out / "run", prompt, max_new_tokens=60, temperature=0.8, top_k=40, seed=i, device=device)[0]
        samples[prompt] = text
        log(f"  > {prompt}{text}")
    result.update(
        seconds=round(time.perf_counter() - t0, 1),
        tokenizer_bytes_per_token=round(tok_info["bytes_per_token"], 4),
        samples=samples,
        source=source,
    )
    return result
