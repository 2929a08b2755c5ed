"""Text generation from a trained model: batched prompts, stop strings, repetition penalty, streaming.

The prompt is preceded by <|endoftext|>, as every training document is, so the model starts as it would
at the beginning of a document. A row stops at <|endoftext|>, at a stop string, or after max_new_tokens.

Decoding runs on engine.py's engine, the one `homegpt serve` runs too: one preallocated key/value cache with
a slot per row (kvcache.KVCache), the prompt run once, then one position per step. Each row has its own
length and positions in the cache and draws from its own seeded generator, so a row's tokens do not depend
on what else is in the batch, and a finished row leaves at once, its slot taken by the next prompt waiting
(`generate_many`). TextStream turns a row's tokens into text: incremental decoding, stop strings, and what
is safe to stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from homegpt.data.tokenizer import EOT
from homegpt.errors import UserError, check_text
from homegpt.generate.engine import Engine, Sampling, Scheduler, Sequence, apply_repetition_penalty  # noqa: F401
from homegpt.model.gpt import GPT

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
        for s in self.stop:
            check_text(s, "--stop")


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


def encode_prompt(tok, prompt: str, block_size: int, max_new_tokens: int, what: str = "the prompt") -> list[int]:
    ids = [tok.token_to_id(EOT)] + tok.encode(check_text(prompt, what)).ids
    if len(ids) + max_new_tokens > block_size:
        raise UserError(
            f"prompt ({len(ids)} tokens with the start marker) + --max-new-tokens {max_new_tokens} exceeds the "
            f"model's context of {block_size} tokens: shorten the prompt or lower --max-new-tokens"
        )
    return ids


# --------------------------------------------------------------------------------------------- tokens


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
    """Yield a (B, 1) tensor of next tokens per step, every row joining at the start and staying until
    max_new_tokens (the caller stops iterating when it has enough): token ids only, on the engine.

    seeds: one per row (sampling only). vocab_limit: ids at or above it (the vocabulary's padding) are never
    chosen. penalty_skip: how many leading tokens of each row the repetition penalty ignores (the start marker).
    """
    engine = Engine(model, len(rows), vocab_limit)
    seqs = [Sequence(r, Sampling(temperature, top_k, top_p, s, repetition_penalty), max_new_tokens,
                     penalty_skip=penalty_skip) for r, s in zip(rows, seeds or [0] * len(rows), strict=True)]
    for seq in seqs:
        engine.check(seq)
    yield torch.tensor([[engine.add(seq)] for seq in seqs])
    for _ in range(max_new_tokens - 1):
        yield torch.tensor(engine.step())[:, None]


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


class TextStream:
    """One row's text as its tokens arrive: end-of-text tokens, stop strings, and what is safe to show.

    add(token) returns True once the row has ended: at one of end_ids (finish "eot", the token is not part
    of the output) or at a stop string (finish "stop", the text cut before it). close() marks any other end
    ("length"). take() gives the text not shown yet that is certain: while the row runs, never half a
    character (byte-level tokens) nor what might be the start of a stop string.

    Decoding is incremental: tokens up to the last complete character are decoded once, so a long row costs
    no more per token than a short one. For a byte-level tokenizer that is the same text as decoding all
    tokens at once (UTF-8 resynchronises at every complete character).
    """

    def __init__(self, tok, stops: tuple[str, ...] = (), end_ids: frozenset[int] | set[int] = frozenset()) -> None:
        self.tok, self.stops, self.end_ids = tok, tuple(stops), frozenset(end_ids)
        self.longest_stop = max((len(s) for s in self.stops), default=0)
        self.tokens: list[int] = []
        self.text = ""
        self.finish: str | None = None
        self._done, self._pending = "", []  # text of the tokens up to the last complete character; the rest
        self._shown = 0

    def add(self, token: int) -> bool:
        if self.finish is not None:
            return True
        if token in self.end_ids:
            self.finish = "eot"
            return True
        self.tokens.append(token)
        self._pending.append(token)
        piece = self.tok.decode(self._pending)
        before = len(self.text)
        self.text = self._done + piece
        if not piece.endswith("\ufffd"):
            self._done, self._pending = self.text, []
        if self.stops:
            cut = find_stop(self.text, self.stops, max(0, before - self.longest_stop))
            if cut >= 0:
                self.text, self.finish = self.text[:cut], "stop"
        return self.finish is not None

    def close(self, reason: str = "length") -> None:
        self.finish = self.finish or reason

    def take(self) -> str:
        text = self.text
        if self.finish is None:
            if text.endswith("\ufffd"):
                return ""
            text = text[: len(text) - held_back(text, self.stops)]
        if len(text) <= self._shown:
            return ""
        piece, self._shown = text[self._shown :], len(text)
        return piece


def generate(
    model: GPT,
    tok,
    prompts: list[str],
    opts: SampleOptions,
    seeds: list[int] | None = None,
    on_text: Callable[[str], None] | None = None,
) -> list[Completion]:
    """Continuations of several prompts decoded together (seeds: one per prompt, default opts.seed for all).

    on_text streams the text of a single prompt as it is produced (only with one prompt).
    """
    if on_text is not None and len(prompts) != 1:
        raise ValueError("streaming (on_text) needs exactly one prompt")
    seeds = seeds or [opts.seed] * len(prompts)
    return complete(model, tok, list(zip(prompts, seeds, strict=True)), opts, max(1, len(prompts)), on_text)


def complete(model: GPT, tok, jobs: list[tuple[str, int]], opts: SampleOptions, max_batch: int,
             on_text: Callable[[str], None] | None = None) -> list[Completion]:
    """(prompt, seed) jobs through one engine of max_batch rows: a job joins as soon as a row is free and
    leaves when it ends. Results in the jobs' order; on_text streams the first job's text."""
    opts.validate()
    if not jobs:
        return []
    block = model.config.block_size
    ids = [encode_prompt(tok, p, block, opts.max_new_tokens) for p, _ in jobs]
    eot = {tok.token_to_id(EOT)}
    streams = [TextStream(tok, opts.stop, eot) for _ in jobs]
    seqs = [Sequence(i, Sampling(opts.temperature, opts.top_k, opts.top_p, seed, opts.repetition_penalty),
                     opts.max_new_tokens, on_token=st.add, penalty_skip=1)
            for i, st, (_, seed) in zip(ids, streams, jobs, strict=True)]
    if on_text is not None:
        first = streams[0]

        def show(token: int) -> bool:
            ended = first.add(token)
            piece = first.take()
            if piece:
                on_text(piece)
            return ended

        seqs[0].on_token = show
    scheduler = Scheduler(Engine(model, min(max_batch, len(jobs)), vocab_limit=tok.get_vocab_size()))
    scheduler.submit(seqs)
    scheduler.drain()
    for st in streams:
        st.close("length")
    if on_text is not None and (rest := streams[0].take()):
        on_text(rest)
    return [Completion(p, st.text, st.finish, len(st.tokens), seed, st.tokens)
            for st, (p, seed) in zip(streams, jobs, strict=True)]


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
    """num_samples continuations of each prompt (seeds opts.seed + i), batch_size rows decoding at a time.

    Returned prompt-major: all samples of the first prompt, then the second's, ...
    """
    jobs = [(p, opts.seed + i) for p in prompts for i in range(num_samples)]
    return complete(model, tok, jobs, opts, max(1, batch_size))


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
    from homegpt.rundir.checkpoint import load_run

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
