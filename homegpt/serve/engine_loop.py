"""The server's engine process: one engine.Scheduler stepping a batch of rows, fed over a pipe by worker.Worker.

The process is spawned (worker.EngineProcess starts `engine_main` by its module path), gets the model's
weights without a copy (shared memory, CUDA IPC; worker.py says how), and owns each row's
sample.TextStream (stop strings, end of text, incremental decoding), so it knows when a row ends.

The pipe's messages, every one a tuple whose first item is its kind (pickles, between the two processes
of one server only):

    HTTP process -> engine process
      ("submit", gid, [RowSpec, ...])   request gid's rows: they wait, then join the batch at the next step
      ("cancel", gid)                   request gid's rows leave the batch at the next step
      ("stop",)                         the server is stopping: return
    engine process -> HTTP process
      ("ready",)                        once, when it has loaded and takes rows
      ("events", [(gid, Event), ...], stats)
                                        after every step: the text each row made certain; stats: rows
                                        "running" and "waiting", "peak_running", "tokens" and "errors" so
                                        far, and "seen" (the submits taken: gid + 1 of the last one)

A bug inside a step fails the rows of that step (each gets an Event with finish "error") and the loop
goes on.
"""

from __future__ import annotations

import multiprocessing.connection
import signal
import traceback
from dataclasses import dataclass

import torch

from homegpt.generate.engine import Engine, Sampling, Scheduler, Sequence
from homegpt.generate.sample import TextStream


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


def default_threads(device: str) -> int:
    """torch's threads for the engine process: on a CPU one core fewer than torch would take, for the HTTP
    process and the clients (2 cores, 16 clients: 1,496.5 tokens/s with 1 thread vs 1,114.8 with 2)."""
    n = torch.get_num_threads()
    return max(1, n - 1) if torch.device(device).type == "cpu" else n


def engine_main(conn: multiprocessing.connection.Connection, model, device: str, tokenizer_json: str, autocast,
                max_batch: int, threads: int | None) -> None:
    """The engine process: take rows from the pipe, step the batch, send each step's events back."""
    from tokenizers import Tokenizer

    # Ctrl-C reaches the whole process group: the HTTP process handles it and stops this one over the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads or default_threads(device))
    tokenizer = Tokenizer.from_str(tokenizer_json)
    model = model.to(device).eval()
    loop = _EngineLoop(conn, Scheduler(Engine(model, max_batch, vocab_limit=tokenizer.get_vocab_size())), tokenizer)
    conn.send(("ready",))
    try:
        with autocast:
            loop.run()
    except (EOFError, OSError, KeyboardInterrupt):  # the server has gone: nothing left to answer
        pass


class _EngineLoop:
    """Read the pipe, step the scheduler, report each step's events, until told to stop."""

    def __init__(self, conn, scheduler: Scheduler, tokenizer) -> None:
        self.conn, self.scheduler, self.tokenizer = conn, scheduler, tokenizer
        self.rows: dict[int, list[_Row]] = {}  # request -> its rows still running or waiting
        self.outbox: list[tuple[int, Event]] = []  # this step's events
        self.stats = {"tokens": 0, "errors": 0, "seen": 0}

    def run(self) -> None:
        while True:
            while self.conn.poll(0 if self.scheduler.busy() else None):  # idle: block until a message
                if not self._handle(self.conn.recv()):
                    return
            if not self.scheduler.busy():
                continue
            try:
                self.scheduler.run_once()
            except Exception:  # a bug must not take the server down: fail these rows, keep serving
                traceback.print_exc()
                self.stats["errors"] += 1
                for row in self.scheduler.abort():
                    row.fail()
            self._report()

    def _handle(self, message: tuple) -> bool:
        kind = message[0]
        if kind == "stop":
            return False
        if kind == "submit":
            _, gid, specs = message
            rows = self.rows[gid] = [self._row(gid, spec) for spec in specs]
            self.scheduler.submit(rows)
            self.stats["seen"] = gid + 1
        elif kind == "cancel":
            for row in self.rows.pop(message[1], []):
                row.cancelled = True
        return True

    def _report(self) -> None:
        sch = self.scheduler
        engine = {"running": len(sch.engine.rows), "waiting": len(sch.waiting), "peak_running": sch.peak,
                  **self.stats}
        self.conn.send(("events", self.outbox, engine))
        self.outbox = []

    def _row(self, gid: int, spec: RowSpec) -> _Row:
        stream = TextStream(self.tokenizer, spec.stop, spec.end_ids)

        def send(finish: str | None, text: str = "") -> None:
            self.outbox.append((gid, Event(spec.index, text, finish, len(stream.tokens))))
            if finish is not None:
                self._finished(gid, row)

        row = _Row(spec.ids, spec.sampling, spec.max_new_tokens, penalty_skip=spec.penalty_skip,
                   fail=lambda: send("error"))

        def on_token(token: int) -> bool:
            ended = stream.add(token)
            self.stats["tokens"] += 1
            if len(row.tokens) >= row.max_new_tokens:
                stream.close("length")
            text = stream.take()
            if text or stream.finish:
                send(stream.finish, text)
            return ended

        row.on_token = on_token
        return row

    def _finished(self, gid: int, row: _Row) -> None:
        rows = self.rows.get(gid)
        if rows is not None and row in rows:
            rows.remove(row)
            if not rows:
                del self.rows[gid]


class _Row(Sequence):
    """A row of a request: a Sequence that can also report that it failed."""

    def __init__(self, *args, fail, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fail = fail
