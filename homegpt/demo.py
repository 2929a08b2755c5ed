"""`homegpt demo`: the whole pipeline in a few minutes on a laptop CPU.

tokenizer -> shards -> a GPT sized for the time budget and the data -> held-out metrics -> samples.

Sizing: each shape on a small ladder is timed for a real training step on this machine, which gives the
tokens it could train on in the budget. The demo takes the largest shape that still sees at least
MIN_TOKENS_PER_PARAM tokens per parameter in the budget and has no more parameters than the corpus has
unique training tokens (beyond that a model memorises rather than generalises). On 2 CPU cores and the
4 MB built-in corpus, a 1.1M-parameter model on 2.1M tokens reached 1.74 bits/byte where a 2.2M model on
1.05M tokens (same FLOPs) reached 1.92 (BENCHMARKS.md): at this scale, tokens beat parameters. A faster
machine or a bigger corpus picks a bigger model. Epochs are capped at MAX_EPOCHS.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from homegpt.data.prepare import prepare
from homegpt.data.shards import read_manifest
from homegpt.data.tokenizer import train_tokenizer
from homegpt.errors import UserError, plural
from homegpt.model.gpt import count_params
from homegpt.train.config import TrainConfig

DEMO_PROMPTS = ("In the beginning", "The king said", "Love is")
DEMO_VOCAB = 2048
OVERHEAD_S = 10.0  # samples and the plot, after training (measured: ~3 s quiet; the final evaluation is budgeted
# by the trainer)
# Beyond what 2 cores can train on in the budget (~25,000 tokens/s x 280 s = 7M tokens), more text only costs
# time: the tokenizer learns from at most TOKENIZER_BYTES of it, the shards hold at most MAX_TOKENS.
TOKENIZER_BYTES = 16 << 20
MAX_TOKENS = 16_000_000
EVAL_SHARE = 0.08  # periodic evaluations take about this share of the training time
MIN_TOKENS_PER_PARAM = 2.0
MAX_EPOCHS = 10.0
# (n_layer, n_embd) candidates, smallest first; heads of 32 dimensions suit these widths on a CPU.
LADDER = ((2, 64), (3, 96), (4, 128), (4, 160), (4, 192), (6, 192), (6, 256), (8, 256), (8, 384))


def demo_config(data_dir: Path, seed: int = 1337) -> TrainConfig:
    """The demo's optimiser and the middle of its shape ladder (choose_shape sets the real shape)."""
    return TrainConfig(
        data_dir=str(data_dir),
        preset="",
        n_layer=4,
        n_head=4,
        n_embd=128,
        block_size=128,
        dropout=0.0,
        batch_tokens=2048,  # small batches, many steps: better than 4096 at equal tokens (BENCHMARKS.md)
        micro_batch=16,
        warmup_steps=30,  # the modern recipe (arch, Muon + AdamW, WSD) at its tuned rates: train/config.py
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
    started: float | None = None,
) -> dict:
    """Run the pipeline into out_dir (tokenizer/, data/, run/) within about `seconds` of wall time, counted from
    `started` (a time.perf_counter() reading: the command's start, so loading torch counts too)."""
    from homegpt.generate.sample import sample_run
    from homegpt.train.loop import train

    log = log or (lambda m: print(m, file=sys.stderr))
    t0 = time.perf_counter() if started is None else started
    phases = {"startup": time.perf_counter() - t0}
    mark = [time.perf_counter()]

    def phase(name: str) -> None:  # the seconds since the last phase, under `name`
        now = time.perf_counter()
        phases[name], mark[0] = round(phases.get(name, 0.0) + now - mark[0], 2), now

    out = Path(out_dir)
    if (out / "run" / "run.json").exists() and not force:
        raise UserError(f"{out} already holds a demo run: choose another --out or pass --force")
    tok_info, manifest = demo_data(source, out, seconds, log, phase)
    train_tokens = manifest["splits"]["train"]["tokens"]

    cfg = demo_config(out / "data")
    cfg.device = device
    vocab = manifest["model_vocab_size"]
    log("[3/5] sizing: timing a training step of each candidate shape")
    budget_s = lambda: max(10.0, seconds - (time.perf_counter() - t0) - OVERHEAD_S)  # noqa: E731
    cfg, choice = choose_shape(cfg, vocab, train_tokens, budget_s)
    tokens = min(choice["tokens_per_s"] * budget_s() * (1 - EVAL_SHARE), MAX_EPOCHS * train_tokens)
    steps = max(cfg.warmup_steps + 10, int(tokens) // cfg.batch_tokens)
    cfg.max_steps, cfg.eval_interval = steps, max(10, steps // 6)
    capped = tokens >= MAX_EPOCHS * train_tokens
    if not capped:  # by the clock: the trainer re-plans the steps from its real speed (the sizing step is noisy)
        cfg.max_seconds = budget_s()
    log(f"      chose {plural(cfg.n_layer, 'layer')} x {cfg.n_embd} wide ({choice['params']:,} parameters): "
        f"~{steps} steps x "
        f"{cfg.batch_tokens} tokens = {steps * cfg.batch_tokens / train_tokens:.1f} epochs at "
        f"~{choice['tokens_per_s']:,.0f} tok/s on {choice['device']}"
        + ("" if capped else f"; the step count follows the clock ({cfg.max_seconds:.0f} s of training)"))
    phase("sizing")
    result = train(cfg, out / "run", force=True, progress=progress, log=log)
    phase("train")
    log(f"[4/5] held-out: loss {result['val_loss']:.4f} nats/token, perplexity {result['val_perplexity']:.2f}, "
        f"{result['val_bpb']:.3f} bits/byte")
    log("[5/5] samples:")
    samples = {}
    prompts = DEMO_PROMPTS if source == "builtin" else ("",)
    for i, prompt in enumerate(prompts):
        text = sample_run(out / "run", prompt, max_new_tokens=60, temperature=0.8, top_k=40, seed=i, device=device)[0]
        samples[prompt] = text
        log(f"  > {prompt}{text}")
    phase("samples")
    result.update(
        phases=phases,
        seconds=round(time.perf_counter() - t0, 1),
        tokenizer_bytes_per_token=round(tok_info["bytes_per_token"], 4),
        samples=samples,
        source=source,
    )
    return result


def demo_data(source: str, out: Path, seconds: float, log, phase: Callable[[str], None]) -> tuple[dict, dict]:
    """Steps 1 and 2: the tokenizer and the shards (bounded: more text than the budget can train on only costs
    time); (the tokenizer's report, the manifest)."""
    log(f"[1/5] tokenizer: byte-level BPE, {DEMO_VOCAB} tokens, trained on {source}")
    tok_info = train_tokenizer(source, DEMO_VOCAB, out / "tokenizer", force=True, sample_bytes=TOKENIZER_BYTES)
    log(f"      {tok_info['bytes_per_token']:.2f} bytes/token on held-out text")
    phase("tokenizer")
    log("[2/5] prepare: encoding documents into token shards")
    prepare(source, out / "tokenizer", out / "data", force=True, max_tokens=MAX_TOKENS)
    manifest = read_manifest(out / "data")
    splits = manifest["splits"]
    log(f"      {splits['train']['tokens']:,} training tokens, {splits['val']['tokens']:,} held-out")
    if manifest.get("stopped_at_max_tokens"):
        log(f"      (the text holds more than the demo can train on in {seconds:.0f} s: the shards end with the "
            f"document that passes {MAX_TOKENS:,} training tokens; homegpt prepare and train use all of it)")
    phase("prepare")
    return tok_info, manifest


def choose_shape(base: TrainConfig, vocab: int, unique_tokens: int, budget_s: Callable[[], float],
                 speed: Callable[[TrainConfig], dict] | None = None) -> tuple[TrainConfig, dict]:
    """The largest ladder shape with >= MIN_TOKENS_PER_PARAM tokens per parameter and <= unique_tokens
    parameters; the smallest shape when none qualifies.

    speed(cfg) times the shape (default: a real training step on this machine, homegpt.train.loop's
    measure_throughput) and returns at least {"tokens_per_s": ...}. Climbing stops at the first shape that
    fails: larger shapes are slower and bigger, so they would fail too.
    """
    from homegpt.train.loop import measure_throughput

    speed = speed or (lambda cfg: measure_throughput(cfg, vocab, steps=2))
    chosen: tuple[TrainConfig, dict] | None = None
    for n_layer, n_embd in LADDER:
        cfg = replace(base, n_layer=n_layer, n_embd=n_embd, n_head=max(1, n_embd // 32))
        params = count_params(cfg.model_config(vocab))["total"]
        if chosen is not None and params > unique_tokens:
            break
        measured = speed(cfg)
        tokens = measured["tokens_per_s"] * budget_s() * (1 - EVAL_SHARE)
        if chosen is not None and tokens < MIN_TOKENS_PER_PARAM * params:
            break
        chosen = (cfg, dict(measured, params=params, tokens=tokens))
    assert chosen is not None  # the first candidate is always taken
    return chosen
