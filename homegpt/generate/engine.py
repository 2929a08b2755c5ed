"""The generation engine: one model, one slot cache, rows that join and leave at any step (continuous batching).

Everything that generates runs this: `homegpt sample` and the Python sampling API (sample.py), the samples
written during training and into the model card, and `homegpt serve`.

    Engine      up to max_batch rows in a kvcache.KVCache with one slot per row.
                add(seq): the row's prompt runs alone into the next free slot (prefill) and its first token
                is picked; step(): every row's last token goes through the model in one batched forward
                pass and each row's next token is picked; remove(seq): the row leaves, and the last row
                moves into its slot, so the busy rows are always slots 0..n-1 and a step computes no idle row.
    Scheduler   rows wait in a queue and join the engine as slots free up; each picked token goes to the
                row's `on_token`, which says whether the row is finished (end of text, a stop string, its
                token budget); finished and cancelled rows leave before the next step.

A row's tokens do not depend on the rows that share its steps: its positions and attention are its own (the
cache keeps a length per row and masks everything else), and it samples from its own seeded generator with
its own settings. So for the same prompt, seed and settings a row gets the same tokens alone, in a batch
that started together, or joining a running batch; only float rounding differs between batch shapes.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from homegpt.errors import UserError
from homegpt.model.gpt import GPT, draw, sampling_probs
from homegpt.model.kvcache import KVCache


@dataclass(frozen=True)
class Sampling:
    """How a row picks its tokens: temperature 0 is greedy; top_k / top_p filter before sampling."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    repetition_penalty: float = 1.0  # > 1: tokens already in the prompt or the output get less likely (CTRL)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019), as transformers applies it: seen tokens' logits are divided by
    the penalty when positive and multiplied by it when negative, so they always become less likely."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


class Sequence:
    """One row: its prompt ids, how it samples, and what it has generated.

    on_token(token) is called with every token picked for it and returns True when the row is finished;
    penalty_skip leading prompt tokens (the start marker) are not counted by the repetition penalty.
    """

    def __init__(self, ids: list[int], sampling: Sampling, max_new_tokens: int,
                 on_token: Callable[[int], bool] | None = None, penalty_skip: int = 0) -> None:
        if not ids:
            raise UserError("every row needs at least one token (the start marker)")
        if max_new_tokens <= 0:
            raise UserError(f"max_new_tokens must be positive, got {max_new_tokens}")
        self.ids = list(ids)
        self.sampling = sampling
        self.max_new_tokens = max_new_tokens
        self.on_token = on_token or (lambda token: False)
        self.penalty_skip = penalty_skip
        self.tokens: list[int] = []  # picked so far
        self.finished = False
        self.cancelled = False  # set from any thread: the row leaves at the next step
        self.generator: torch.Generator | None = None
        self.seen: torch.Tensor | None = None  # (1, vocab) tokens the repetition penalty counts

    def take(self, token: int) -> None:
        self.tokens.append(token)
        if self.seen is not None:
            self.seen[0, token] = True
        if self.on_token(token) or len(self.tokens) >= self.max_new_tokens:
            self.finished = True


class Engine:
    """Up to max_batch rows decoding together over one slot cache (see the module doc)."""

    def __init__(self, model: GPT, max_batch: int, vocab_limit: int | None = None) -> None:
        if max_batch <= 0:
            raise UserError(f"the batch needs at least one row, got {max_batch}")
        cfg = model.config
        self.model = model.eval()
        self.device = model.transformer.wte.weight.device
        self.context = cfg.block_size
        self.cache = KVCache(cfg, max_batch, cfg.block_size, self.device)
        self.rows: list[Sequence] = []  # rows[i] is in cache slot i
        self.max_batch = max_batch
        self.vocab_limit = vocab_limit  # ids at or above it (the vocabulary's padding) are never picked

    def free(self) -> int:
        return self.max_batch - len(self.rows)

    def check(self, seq: Sequence) -> None:
        if len(seq.ids) + seq.max_new_tokens > self.context:
            raise UserError(f"a prompt of {len(seq.ids)} tokens + {seq.max_new_tokens} new tokens exceeds the "
                            f"model's context of {self.context} tokens")

    @torch.inference_mode()
    def add(self, seq: Sequence) -> int:
        """Prefill a new row into the next free slot and pick its first token (given to seq.take)."""
        self.check(seq)
        if not self.free():
            raise RuntimeError("no free slot: remove a row first")
        slot = len(self.rows)
        self.cache.clear(slot)
        s = seq.sampling
        if s.temperature > 0:
            seq.generator = torch.Generator(device=self.device).manual_seed(s.seed)
        if s.repetition_penalty != 1.0:
            seq.seen = torch.zeros(1, self.model.config.vocab_size, dtype=torch.bool, device=self.device)
            seq.seen[0, seq.ids[seq.penalty_skip:]] = True
        ids = torch.tensor([seq.ids], dtype=torch.long, device=self.device)
        logits = self.model.decode(ids, self.cache.rows(slot, slot + 1))
        self.rows.append(seq)
        token = self._pick([seq], logits)[0]
        seq.take(token)
        return token

    def step(self) -> list[int]:
        """One token for every row (in slot order), from one forward pass over all of them."""
        return self.take(self.forward()) if self.rows else []

    @torch.inference_mode()
    def forward(self) -> torch.Tensor:
        """Every row's last token through the model at once: the (rows, vocab) logits of the next tokens."""
        if any(r.finished for r in self.rows):
            raise RuntimeError("remove finished rows before the next step")
        last = torch.tensor([[r.tokens[-1]] for r in self.rows], dtype=torch.long, device=self.device)
        return self.model.decode(last, self.cache.rows(0, len(self.rows)))

    @torch.inference_mode()
    def take(self, logits: torch.Tensor) -> list[int]:
        """Pick each row's next token from forward()'s logits and hand it to the row."""
        picked = self._pick(self.rows, logits)
        for row, token in zip(self.rows, picked, strict=True):
            row.take(token)
        return picked

    @torch.inference_mode()
    def remove(self, seq: Sequence) -> None:
        slot = self.rows.index(seq)
        last = len(self.rows) - 1
        if slot != last:
            self.cache.move(last, slot)
            self.rows[slot] = self.rows[last]
        self.rows.pop()
        self.cache.clear(last)

    def _pick(self, rows: list[Sequence], logits: torch.Tensor) -> list[int]:
        """Each row's next token from its (vocab,) logits, with its own settings and generator: greedy rows by
        one argmax, sampled rows filtered together (model.sampling_probs) and drawn with one uniform number
        from each row's generator."""
        logits = logits.float()
        if self.vocab_limit is not None and self.vocab_limit < logits.size(-1):
            logits[:, self.vocab_limit:] = float("-inf")
        for b, row in enumerate(rows):
            if row.seen is not None:
                penalty = row.sampling.repetition_penalty
                logits[b : b + 1] = apply_repetition_penalty(logits[b : b + 1], row.seen, penalty)
        sampled = [b for b, row in enumerate(rows) if row.generator is not None]
        out = logits.argmax(dim=-1).tolist() if len(sampled) < len(rows) else [0] * len(rows)
        if sampled:
            s = [rows[b].sampling for b in sampled]
            probs = sampling_probs(logits[sampled], [x.temperature for x in s], [x.top_k or 0 for x in s],
                                   [x.top_p or 1.0 for x in s])
            u = torch.cat([torch.rand(1, 1, generator=rows[b].generator, device=self.device) for b in sampled])
            for b, token in zip(sampled, draw(probs, u)[:, 0].tolist(), strict=True):
                out[b] = token
        return out


class Scheduler:
    """A queue of rows in front of an Engine: admit rows into free slots, step, retire finished rows.

    submit() and cancel flags may be used from other threads; run_once() belongs to one thread.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.waiting: deque[Sequence] = deque()
        self.lock = threading.Lock()
        self.peak = 0  # the most rows that ever decoded together

    def submit(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            self.engine.check(s)
        with self.lock:
            self.waiting.extend(seqs)

    def busy(self) -> bool:
        return bool(self.engine.rows or self.waiting)

    def run_once(self) -> None:
        """Retire cancelled rows, admit waiting rows while slots are free, then one step for every row."""
        eng = self.engine
        for row in [r for r in eng.rows if r.cancelled]:
            eng.remove(row)
        while eng.free():
            with self.lock:
                seq = self.waiting.popleft() if self.waiting else None
            if seq is None:
                break
            if seq.cancelled:
                continue
            eng.add(seq)
            if seq.finished:
                eng.remove(seq)
        self.peak = max(self.peak, len(eng.rows))
        eng.step()
        for row in [r for r in eng.rows if r.finished]:
            eng.remove(row)

    def drain(self) -> None:
        """Run until every submitted row has finished (the caller's thread does the work)."""
        while self.busy():
            self.run_once()

    def abort(self) -> list[Sequence]:
        """Drop every row, running or waiting (after an error); the dropped rows."""
        with self.lock:
            dropped = list(self.engine.rows) + list(self.waiting)
            self.waiting.clear()
        for row in list(self.engine.rows):
            self.engine.remove(row)
        return dropped
