"""The server's generation thread: one engine.Scheduler, fed by the HTTP handlers, answering into asyncio queues.

Requests arrive on the event loop, are turned into rows (one per prompt and choice) and submitted; the
thread runs the scheduler whenever a row is waiting or running: waiting rows join the running batch at the
next step while slots are free (up to --max-batch), finished rows leave. Each picked token goes through the
row's sample.TextStream (stop strings, end of text, incremental decoding) and whatever text is now certain
is put on the request's queue: one loop.call_soon_threadsafe per step for all rows' events, not one per
token, so the event loop wakes once per step however many rows run. A request whose client went away is cancelled:
its rows leave the batch at the next step. More waiting rows than --max-queue: `Overloaded` (HTTP 503).
"""

from __future__ import annotations

import asyncio
import threading
import traceback
from dataclasses import dataclass

import torch

from homegpt.engine import Engine, Sampling, Scheduler, Sequence
from homegpt.sample import TextStream


class Overloaded(Exception):
    """More rows are waiting than the queue holds."""


@dataclass
class RowSpec:
    """One row to generate: a prompt's ids, its sampling and stopping, and which choice it answers."""

    index: int
    ids: list[int]
    sampling: Sampling
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    end_ids: frozenset[int] = frozenset()
    penalty_skip: int = 0  # leading tokens the repetition penalty ignores (the start marker)


@dataclass
class Event:
    index: int  # the choice
    text: str  # new text, certain (may be empty on the last event)
    finish: str | None  # None while the row runs; "eot", "stop", "length", or "error"
    tokens: int  # tokens generated so far for this choice


class Generation:
    """One request's rows and the queue their events arrive on (on the event loop)."""

    def __init__(self, worker: Worker, seqs: list[Sequence], queue: asyncio.Queue) -> None:
        self.worker, self.seqs, self.queue = worker, seqs, queue
        self.open = len(seqs)  # choices not finished yet (counted on the event loop)

    def cancel(self) -> None:
        """Stop generating (the client went away); a no-op once every row has finished."""
        if self.open and not any(s.cancelled for s in self.seqs):
            self.worker.stats["cancelled"] += 1
        for s in self.seqs:
            s.cancelled = True
        self.worker.wake()

    async def events(self) -> list[Event]:
        """Wait for at least one event, then take every event already there."""
        out = [await self.queue.get()]
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        self.open -= sum(e.finish is not None for e in out)
        return out


class Worker:
    def __init__(self, model, tokenizer, autocast, max_batch: int = 16, max_queue: int = 64,
                 threads: int | None = None) -> None:
        self.scheduler = Scheduler(Engine(model, max_batch, vocab_limit=tokenizer.get_vocab_size()))
        self.tokenizer, self.autocast, self.max_queue = tokenizer, autocast, max_queue
        self.cond = threading.Condition()
        self.stopping = False
        self.threads = threads  # torch's intra-op threads, set on the engine thread itself (OpenMP's are per thread)
        self.thread = threading.Thread(target=self._loop, name="homegpt-engine", daemon=True)
        self.stats = {"requests": 0, "cancelled": 0, "tokens": 0, "errors": 0}
        self._outbox: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, Event]] = []  # this step's events

    # ------------------------------------------------------------------ event-loop side

    def submit(self, rows: list[RowSpec], loop: asyncio.AbstractEventLoop) -> Generation:
        queue: asyncio.Queue = asyncio.Queue()
        seqs = [self._sequence(r, queue, loop) for r in rows]
        gen = Generation(self, seqs, queue)
        with self.cond:
            if len(self.scheduler.waiting) + len(seqs) > self.max_queue:
                raise Overloaded(f"{len(self.scheduler.waiting)} rows are already waiting (--max-queue "
                                 f"{self.max_queue}): try again shortly")
            self.scheduler.submit(seqs)
            self.stats["requests"] += 1
            self.cond.notify()
        return gen

    def _sequence(self, row: RowSpec, queue: asyncio.Queue, loop: asyncio.AbstractEventLoop) -> _Row:
        stream = TextStream(self.tokenizer, row.stop, row.end_ids)

        def send(finish: str | None, text: str = "") -> None:
            self._outbox.append((loop, queue, Event(row.index, text, finish, len(stream.tokens))))

        seq = _Row(row.ids, row.sampling, row.max_new_tokens, penalty_skip=row.penalty_skip,
                   fail=lambda: send("error"))

        def on_token(token: int) -> bool:  # on the engine thread
            ended = stream.add(token)
            self.stats["tokens"] += 1
            if len(seq.tokens) >= seq.max_new_tokens:
                stream.close("length")
            text = stream.take()
            if text or stream.finish:
                send(stream.finish, text)
            return ended

        seq.on_token = on_token
        return seq

    def snapshot(self) -> dict:
        return {"running": len(self.scheduler.engine.rows), "waiting": len(self.scheduler.waiting),
                "peak_running": self.scheduler.peak, "max_batch": self.scheduler.engine.max_batch, **self.stats}

    def wake(self) -> None:
        with self.cond:
            self.cond.notify()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout=10)

    # ------------------------------------------------------------------ engine thread

    def _loop(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        with self.autocast:
            while True:
                with self.cond:
                    while not self.scheduler.busy() and not self.stopping:
                        self.cond.wait()
                    if self.stopping:
                        return
                try:
                    self.scheduler.run_once()
                except Exception:  # a bug must not take the server down: fail these requests, keep serving
                    traceback.print_exc()
                    self.stats["errors"] += 1
                    for seq in self.scheduler.abort():
                        seq.fail()
                self._flush()

    def _flush(self) -> None:
        """Hand this step's events to their event loops, one wake-up per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for loop, queue, event in self._outbox:
            by_loop.setdefault(loop, []).append((queue, event))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop has closed: the server is shutting down
                pass


def _deliver(items: list[tuple[asyncio.Queue, Event]]) -> None:
    for queue, event in items:
        queue.put_nowait(event)


class _Row(Sequence):
    """A row of a request: a Sequence that can also report that it failed."""

    def __init__(self, *args, fail, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fail = fail
