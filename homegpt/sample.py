"""Text generation from a trained model: batched prompts, stop strings, repetition penalty, streaming.

The prompt is preceded by <|endoftext|>, as every training document is, so the model starts as it would
at the beginning of a document. A row stops at <|endoftext|>, at a stop string, or after max_new_tokens.

Decoding (`Decoder`) runs the model's own modules over one preallocated key/value cache for the whole batch
(model.KVCache), whatever the architecture: the prompt runs once, then one position per step, under
`torch.inference_mode`. Prompts of different lengths share a batch by left-padding: each row's positions are
offset so its real tokens sit at positions 0, 1, 2, ... (as they would alone), and the padding is masked out
of every attention, so a row's tokens do not depend on what else is in the batch. Sampling draws each row
from its own seeded generator for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from homegpt.errors import UserError
from homegpt.model import GPT, KVCache, sample_next
from homegpt.tokenizer import EOT

DEFAULT_BATCH = 16  # rows per forward pass when many prompts are given


@dataclass
class SampleOptions:
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy
    top_k: int | None = 50
    top_p: float | None = None
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the output (CTRL)
    stop: tuple[str, ...] = ()  # the output is cut before the first of these strings
    seed: int = 0

    def validate(self) -> None:
        if self.temperature < 0:
            raise UserError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens <= 0:
            raise UserError(f"--max-new-tokens must be positive, got {self.max_new_tokens}")
        if not self.repetition_penalty > 0:
            raise UserError(f"--repetition-penalty must be positive (1 = off), got {self.repetition_penalty}")
        if any(s == "" for s in self.stop):
            raise UserError("--stop needs a non-empty string")


@dataclass
class Completion:
    prompt: str
    text: str  # the continuation, without the prompt, cut before a stop string
    finish_reason: str  # "stop" (a stop string), "eot" (<|endoftext|>) or "length"
    new_tokens: int
    seed: int
    tokens: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "text": self.text, "finish_reason": self.finish_reason,
                "new_tokens": self.new_tokens, "seed": self.seed}


def encode_prompt(tok, prompt: str, block_size: int, max_new_tokens: int) -> list[int]:
    ids = [tok.token_to_id(EOT)] + tok.encode(prompt).ids
    if len(ids) + max_new_tokens > block_size:
        raise UserError(
            f"prompt ({len(ids)} tokens with the start marker) + --max-new-tokens {max_new_tokens} exceeds the "
            f"model's context of {block_size} tokens: shorten the prompt or lower --max-new-tokens"
        )
    return ids


# --------------------------------------------------------------------------------------------- decoding


class Decoder:
    """A batch's forward passes through the model with a preallocated key/value cache (model.KVCache).

    rows are token-id lists of any lengths (each <= the model's context); the batch is left-padded to the
    longest, and the cache gives each row its own positions and masks its padding. Call prefill() once, then
    step(tokens) per new token; both return the (B, vocab) logits of each row's last position.
    """

    def __init__(self, model: GPT, rows: list[list[int]], max_new_tokens: int) -> None:
        cfg = model.config
        self.model = model
        self.device = model.transformer.wte.weight.device
        if not rows or min(len(r) for r in rows) == 0:
            raise UserError("every row needs at least one token (the start marker)")
        longest = max(len(r) for r in rows)
        if longest + max_new_tokens > cfg.block_size:  # positions are per row: only the longest row can overflow
            raise UserError(f"a prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the "
                            f"model's context of {cfg.block_size} tokens")
        pad = torch.tensor([longest - len(r) for r in rows], device=self.device)
        self.cache = KVCache(cfg, len(rows), longest + max_new_tokens, self.device, pad)
        ids = torch.zeros(len(rows), longest, dtype=torch.long, device=self.device)
        for b, r in enumerate(rows):
            ids[b, longest - len(r):] = torch.tensor(r, dtype=torch.long)
        self.prompt_ids = ids

    def prefill(self) -> torch.Tensor:
        return self.model.decode(self.prompt_ids, self.cache)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, 1) the tokens just chosen; returns the logits for the next ones."""
        if self.cache.filled >= self.cache.capacity:
            raise UserError("the decoder's cache is full: lower max_new_tokens")
        return self.model.decode(tokens, self.cache)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019), as transformers applies it: seen tokens' logits are divided by
    the penalty when positive and multiplied by it when negative, so they always become less likely."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


@torch.inference_mode()
def generate_ids(
    model: GPT,
    rows: list[list[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seeds: list[int] | None = None,
    repetition_penalty: float = 1.0,
    vocab_limit: int | None = None,
    penalty_skip: int = 0,
) -> Iterator[torch.Tensor]:
    """Yield a (B, 1) tensor of next tokens per step; the caller stops iterating when it has enough.

    seeds: one per row (sampling only). vocab_limit: ids at or above it (the vocabulary's padding) are never
    chosen. penalty_skip: how many leading tokens of each row the repetition penalty ignores (the start marker).
    """
    model.eval()
    dec = Decoder(model, rows, max_new_tokens)
    gens = None
    if temperature > 0:
        gens = [torch.Generator(device=dec.device).manual_seed(s) for s in (seeds or [0] * len(rows))]
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(len(rows), model.config.vocab_size, dtype=torch.bool, device=dec.device)
        for b, r in enumerate(rows):
            seen[b, r[penalty_skip:]] = True
    logits = dec.prefill()
    for n in range(max_new_tokens):
        logits = logits.float()
        if vocab_limit is not None and vocab_limit < logits.size(-1):
            logits[:, vocab_limit:] = float("-inf")
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        if gens is None:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:  # row by row, each from its own generator: a row's sample does not depend on its batch
            nxt = torch.cat([sample_next(logits[b : b + 1], temperature, top_k, top_p, g) for b, g in enumerate(gens)])
        if seen is not None:
            seen.scatter_(1, nxt, True)
        yield nxt
        if n + 1 < max_new_tokens:
            logits = dec.step(nxt)


# --------------------------------------------------------------------------------------------- text


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might be the start of a stop string (not safe to show yet)."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:n]):
                keep = n
                break
    return keep


def find_stop(text: str, stops: tuple[str, ...], search_from: int = 0) -> int:
    """Index of the earliest stop string in text (at or after search_from), or -1."""
    hits = [i for i in (text.find(s, search_from) for s in stops) if i >= 0]
    return min(hits) if hits else -1


class _Row:
    """One row's progress: its new tokens, its text so far, and whether and why it ended."""

    def __init__(self, prompt: str, seed: int) -> None:
        self.prompt, self.seed = prompt, seed
        self.tokens: list[int] = []
        self.text = ""
        self.finish: str | None = None


def generate(
    model: GPT,
    tok,
    prompts: list[str],
    opts: SampleOptions,
    seeds: list[int] | None = None,
    on_text: Callable[[str], None] | None = None,
) -> list[Completion]:
    """Continuations of several prompts in one batch (seeds: one per prompt, default opts.seed for all).

    on_text streams the text of a single prompt as it is produced (only with one prompt).
    """
    opts.validate()
    if not prompts:
        return []
    if on_text is not None and len(prompts) != 1:
        raise ValueError("streaming (on_text) needs exactly one prompt")
    seeds = seeds or [opts.seed] * len(prompts)
    block = model.config.block_size
    rows_ids = [encode_prompt(tok, p, block, opts.max_new_tokens) for p in prompts]
    eot = tok.token_to_id(EOT)
    rows = [_Row(p, s) for p, s in zip(prompts, seeds, strict=True)]
    longest_stop = max((len(s) for s in opts.stop), default=0)
    shown = 0
    steps = generate_ids(model, rows_ids, opts.max_new_tokens, opts.temperature, opts.top_k, opts.top_p, seeds,
                         opts.repetition_penalty, vocab_limit=tok.get_vocab_size(), penalty_skip=1)
    for nxt in steps:
        for row, token in zip(rows, nxt[:, 0].tolist(), strict=True):
            if row.finish is not None:
                continue
            if token == eot:
                row.finish = "eot"
                continue
            row.tokens.append(token)
            if opts.stop or on_text is not None:
                before = len(row.text)
                row.text = tok.decode(row.tokens)
                cut = find_stop(row.text, opts.stop, max(0, before - longest_stop)) if opts.stop else -1
                if cut >= 0:
                    row.text, row.finish = row.text[:cut], "stop"
        if on_text is not None:
            shown = _stream(rows[0], opts.stop, shown, on_text)
        if all(r.finish is not None for r in rows):
            break
    out = []
    for row in rows:
        if row.finish != "stop":
            row.text = tok.decode(row.tokens)
        out.append(Completion(row.prompt, row.text, row.finish or "length", len(row.tokens), row.seed, row.tokens))
    if on_text is not None and len(out[0].text) > shown:
        on_text(out[0].text[shown:])
    return out


def _stream(row: _Row, stops: tuple[str, ...], shown: int, on_text: Callable[[str], None]) -> int:
    """Show what is certain: not a character cut mid-way (byte-level tokens), not a possible stop's start."""
    text = row.text
    if row.finish is None:
        if text.endswith("\ufffd"):
            return shown
        text = text[: len(text) - held_back(text, stops)]
    if len(text) > shown:
        on_text(text[shown:])
        return len(text)
    return shown


def generate_text(
    model: GPT,
    tok,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int = 0,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """The continuation of `prompt` (without the prompt); on_text receives it piece by piece."""
    opts = SampleOptions(max_new_tokens, temperature, top_k, top_p, seed=seed)
    return generate(model, tok, [prompt], opts, on_text=on_text)[0].text


def generate_many(model: GPT, tok, prompts: list[str], opts: SampleOptions, num_samples: int = 1,
                  batch_size: int = DEFAULT_BATCH) -> list[Completion]:
    """num_samples continuations of each prompt (seeds opts.seed + i), in batches of similar lengths.

    Returned prompt-major: all samples of the first prompt, then the second's, ...
    """
    jobs = [(p, opts.seed + i) for p in prompts for i in range(num_samples)]
    # Sorting by length keeps padding (wasted positions) small; results go back in the asked order.
    order = sorted(range(len(jobs)), key=lambda j: len(tok.encode(jobs[j][0]).ids))
    out: list[Completion | None] = [None] * len(jobs)
    for i in range(0, len(order), max(1, batch_size)):
        chunk = order[i : i + batch_size]
        done = generate(model, tok, [jobs[j][0] for j in chunk], opts, seeds=[jobs[j][1] for j in chunk])
        for j, c in zip(chunk, done, strict=True):
            out[j] = c
    return out  # type: ignore[return-value]


def sample_run(
    run_dir: str | Path,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int = 0,
    num_samples: int = 1,
    device: str = "auto",
    on_text: Callable[[str], None] | None = None,
    repetition_penalty: float = 1.0,
    stop: tuple[str, ...] = (),
    step: int | str | None = None,
) -> list[str]:
    """num_samples continuations of one prompt from a run's checkpoint (latest, 'best' or a step number),
    streamed through on_text."""
    from homegpt.checkpoint import load_run

    opts = SampleOptions(max_new_tokens, temperature, top_k, top_p, repetition_penalty, tuple(stop), seed)
    opts.validate()
    run = load_run(run_dir, device=device, step=step)
    encode_prompt(run.tokenizer, prompt, run.model.config.block_size, max_new_tokens)  # check before output
    if on_text is None:
        with run.autocast:
            return [c.text for c in generate_many(run.model, run.tokenizer, [prompt], opts, num_samples)]
    out = []
    for i in range(num_samples):  # streamed: one sample at a time
        on_text(prompt)
        with run.autocast:
            out.append(generate(run.model, run.tokenizer, [prompt], opts, seeds=[seed + i], on_text=on_text)[0].text)
        on_text("\n")
    return out
