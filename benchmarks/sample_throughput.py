"""Batch-1 greedy decoding speed on CPU: homegpt's decoder vs transformers' `generate`, same weights.

    python benchmarks/sample_throughput.py [--json] [--threads N] [--new-tokens 256] [--repeats 5]

The model is made here, not downloaded: a randomly initialised homegpt GPT of the demo's width and depth
(4 layers, 4 heads, 192 wide, vocabulary 2048) with a 512-token context and a byte-level BPE tokenizer
trained on seeded pseudo-words, saved as a homegpt run, exported with `homegpt export`, and loaded back
by both libraries, so both decode the exact same fp32 weights.
Speed does not depend on what the weights learned; the two outputs are checked to be the same tokens.

Both sides decode token ids (no text decoding), with the same prompt, thread count and 256 new tokens
(end-of-text is disabled in transformers so both always produce all of them); each is warmed up once,
then timed `--repeats` times, alternating, and the median is reported. With --json the last stdout line
is one JSON object holding homegpt_tokens_per_s, transformers_tokens_per_s and ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "In the beginning God created the heavens and the earth. The earth was formless and empty."
SHAPE = dict(n_layer=4, n_head=4, n_embd=192, block_size=512, vocab_size=2048)


def pseudo_text(n_lines: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["the ", "and ", ", ", ". "]
    return [" ".join("".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(12))
            for _ in range(n_lines)]


def build_export(work: Path) -> tuple[Path, Path]:
    """A homegpt run holding a random GPT of SHAPE, and its transformers export."""
    from homegpt.data.sources import Corpus
    from homegpt.data.tokenizer import train_tokenizer_on
    from homegpt.model.gpt import GPT, GPTConfig
    from homegpt.share.export import export_run, write_run

    # A tokenizer is part of a run. Decoding speed does not depend on what it learned, so it is trained on
    # seeded pseudo-words: offline, about a second, and the same tokenizer on every machine.
    tok = train_tokenizer_on(Corpus("pseudo-words", pseudo_text(), []), SHAPE["vocab_size"])
    run = work / "run"
    run.mkdir()
    tok.save(str(run / "tokenizer.json"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE))
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    write_run(run, model.config, weights)
    hf = work / "hf"
    export_run(run, hf, samples=[])
    return run, hf


def time_it(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both (default 1: batch-1 decoding of a small model does not gain "
                         "from more, and timings on a shared machine are steadier)")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from homegpt.data.tokenizer import EOT
    from homegpt.generate.sample import generate_ids
    from homegpt.rundir.checkpoint import load_run

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, hf_dir = build_export(Path(tmp))
        run = load_run(run_dir, device="cpu")
        hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = [run.tokenizer.token_to_id(EOT)] + run.tokenizer.encode(PROMPT).ids
    n = args.new_tokens
    if len(ids) + n > SHAPE["block_size"]:
        ap.error(f"--new-tokens {n} does not fit a {SHAPE['block_size']}-token context after the prompt")
    prompt = torch.tensor([ids])
    mask = torch.ones_like(prompt)

    def homegpt_decode() -> list[int]:
        return [int(t) for t in generate_ids(run.model, [ids], n)]

    def transformers_decode() -> list[int]:
        with torch.inference_mode():
            out = hf.generate(prompt, attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=None,
                              pad_token_id=run.tokenizer.token_to_id(EOT))
        return out[0, len(ids):].tolist()

    ours, theirs = homegpt_decode(), transformers_decode()  # warm-up, and the same tokens?
    if len(theirs) != n:
        raise SystemExit(f"transformers produced {len(theirs)} tokens, not {n}")
    same = ours == theirs
    t_ours, t_theirs = [], []
    for _ in range(args.repeats):  # alternating, so load changes on the machine hit both alike
        t_ours += time_it(homegpt_decode, 1)
        t_theirs += time_it(transformers_decode, 1)
    ours_tps = n / statistics.median(t_ours)
    theirs_tps = n / statistics.median(t_theirs)
    import transformers

    result = {
        "homegpt_tokens_per_s": round(ours_tps, 1),
        "transformers_tokens_per_s": round(theirs_tps, 1),
        "ratio": round(ours_tps / theirs_tps, 3),
        "same_tokens": same,
        "new_tokens": n,
        "prompt_tokens": len(ids),
        "repeats": args.repeats,
        "threads": args.threads,
        "model": dict(SHAPE, params=run.info["params"]["total"], weights="random init (seed 0), fp32"),
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s))",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    log(f"model: random-init GPT-2 shape, {SHAPE['n_layer']} layers x {SHAPE['n_embd']} wide, {SHAPE['n_head']} "
        f"heads, vocab {SHAPE['vocab_size']}, context {SHAPE['block_size']} ({result['model']['params']:,} params), "
        f"fp32, CPU, {args.threads} thread(s)")
    log(f"batch-1 greedy, {len(ids)}-token prompt + {n} new tokens, median of {args.repeats}:")
    log(f"  homegpt       {ours_tps:8.1f} tokens/s")
    log(f"  transformers  {theirs_tps:8.1f} tokens/s  (generate, torch {torch.__version__}, "
        f"transformers {transformers.__version__})")
    log(f"  ratio         {ours_tps / theirs_tps:8.2f}x   same tokens: {same}")
    if args.json:
        print(json.dumps(result))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
