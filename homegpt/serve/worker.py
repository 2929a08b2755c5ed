"""The server's engine process: one engine.Scheduler in a child process, fed by the HTTP handlers over a pipe.

Why a process and not a thread: decoding a small model on a CPU is mostly Python between short torch ops,
and so is the HTTP side (JSON, server-sent events, the event loop). In one process they take turns on one
interpreter lock, so the server could never use more than about one core, however many it has; measured
with 16 streaming clients on 2 cores, the threaded server used 1.05 cores while 0.8 sat idle, and the split
gives 20-25% more tokens/s (BENCHMARKS.md, Serving). vLLM splits its engine from its API server the same way.

    HTTP process (event loop)                        engine process (spawned)
    Worker.submit(rows) --("submit", id, rows)-->    rows wait, join the running batch at the next step
    Generation.cancel() --("cancel", id)-------->    the request's rows leave the batch at the next step
    Generation.events() <--("events", [...], stats)  after every step: the text each row made certain

The engine process owns the scheduler and each row's sample.TextStream (stop strings, end of text,
incremental decoding), so it knows when a row ends; per step it sends one message with every row's new text.
The model's weights are not copied: CPU tensors go through shared memory, CUDA tensors through CUDA IPC
(torch.multiprocessing); other devices (MPS) get a CPU copy that the engine process moves onto the device.
The pipe carries pickles only between these two processes of one server, never from a file.

A bug inside a step fails the rows of that step (HTTP 500 for them) and the engine goes on. If the engine
process itself dies (killed, out of memory; SIGTERM excepted, which is a shutdown or someone's deliberate
kill), every open request fails and a new engine process starts from the same shared weights (new requests
get HTTP 503 meanwhile); if it dies again within RESTART_WINDOW_S of a restart, the server stops trying:
/health says so and requests get 503 until it is restarted. More waiting rows than --max-queue:
`Overloaded` (HTTP 503).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import multiprocessing.connection
import signal
import time
import traceback
from dataclasses import dataclass

import torch

from homegpt.errors import UserError
from homegpt.generate.engine import Engine, Sampling, Scheduler, Sequence
from homegpt.generate.sample import TextStream

START_TIMEOUT_S = 300  # spawning the engine process: a fresh interpreter importing torch and homegpt
RESTART_WINDOW_S = 60  # an engine that dies again this soon after a restart is not restarted again
NO_ENGINE = {"running": 0, "waiting": 0, "peak_running": 0, "seen": 0}  # what an engine reports before its first step


class Overloaded(Exception):
    """More rows are waiting than the queue holds, or the engine process is gone."""


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

    def __init__(self, worker: Worker, gid: int, choices: list[int]) -> None:
        self.worker, self.gid = worker, gid
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.open = len(choices)  # choices not finished yet (counted by events())
        self.unfinished = set(choices)  # the worker's view: choices with no final event yet
        self.cancelled = False

    def cancel(self) -> None:
        """Stop generating (the client went away); a no-op once every row has finished."""
        if self.cancelled or not self.unfinished:
            return
        self.cancelled = True
        self.worker.stats["cancelled"] += 1
        self.worker.send(("cancel", self.gid))

    async def events(self) -> list[Event]:
        """Wait for at least one event, then take every event already there."""
        out = [await self.queue.get()]
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        self.open -= sum(e.finish is not None for e in out)
        return out


class Worker:
    """The HTTP side of the engine process: submit rows, route each step's events to their requests."""

    def __init__(self, model, tokenizer, autocast, max_batch: int = 16, max_queue: int = 64,
                 threads: int | None = None) -> None:
        self.model, self.tokenizer, self.autocast = model, tokenizer, autocast
        self.max_batch, self.max_queue, self.threads = max_batch, max_queue, threads
        self.context = model.config.block_size
        self.stats = {"requests": 0, "cancelled": 0, "tokens": 0, "errors": 0}
        self.engine = dict(NO_ENGINE)  # as of its last message
        self.generations: dict[int, Generation] = {}
        self.sent_rows: dict[int, int] = {}  # submit number -> rows, until the engine has taken it
        self.ids = itertools.count()
        self.peak = 0  # the most rows that ever decoded together, over every engine process
        self.process = self.conn = None
        self.exited: str | None = None  # why the engine process is gone (None while one runs)
        self.restarts, self.restarting, self.started_at, self.stopping = 0, False, 0.0, False
        self.counted = {"tokens": 0, "errors": 0}  # by engine processes that have exited

    # ------------------------------------------------------------------ event-loop side

    def submit(self, rows: list[RowSpec]) -> Generation:
        if self.restarting:
            raise Overloaded(f"the engine process exited ({self.exited}) and is restarting: try again shortly")
        if self.exited:
            raise Overloaded(f"the engine process has exited ({self.exited}): restart homegpt serve")
        for r in rows:
            if len(r.ids) + r.max_new_tokens > self.context:  # serve.py checks first; this is the last guard
                raise UserError(f"a prompt of {len(r.ids)} tokens + {r.max_new_tokens} new tokens exceeds the "
                                f"model's context of {self.context} tokens")
        waiting = self.engine["waiting"] + sum(self.sent_rows.values())
        if waiting + len(rows) > self.max_queue:
            raise Overloaded(f"{waiting} rows are already waiting (--max-queue {self.max_queue}): try again shortly")
        gid = next(self.ids)
        gen = self.generations[gid] = Generation(self, gid, [r.index for r in rows])
        self.sent_rows[gid] = len(rows)
        self.stats["requests"] += 1
        self.send(("submit", gid, rows))
        return gen

    def send(self, message: tuple) -> None:
        if self.exited is None:
            try:
                self.conn.send(message)
            except OSError as e:
                self._gone(f"the pipe to it broke: {e}")

    def status(self) -> str:
        return "restarting" if self.restarting else "error" if self.exited else "ok"

    def snapshot(self) -> dict:
        e = self.engine
        return {"running": e["running"], "waiting": e["waiting"] + sum(self.sent_rows.values()),
                "peak_running": self.peak, "max_batch": self.max_batch, **self.stats,
                "engine_restarts": self.restarts, **({"engine_exited": self.exited} if self.exited else {})}

    async def start(self) -> None:
        """Spawn the engine process and wait until it is ready to take rows."""
        import torch.multiprocessing as mp  # registers the reductions that share tensors instead of copying them

        ctx = mp.get_context("spawn")  # not fork: CUDA and OpenMP's thread pool do not survive a fork
        self.conn, child = ctx.Pipe()
        model, device = self.model, self.model.transformer.wte.weight.device
        if device.type == "cpu":
            model.share_memory()
        elif device.type != "cuda":  # no sharing for this device: a CPU copy, moved back in the engine process
            model = copy.deepcopy(model).cpu()
        self.process = ctx.Process(target=engine_main, name="homegpt-engine", daemon=True,
                                   args=(child, model, str(device), self.tokenizer.to_str(), self.autocast,
                                         self.max_batch, self.threads))
        self.process.start()
        child.close()
        loop = asyncio.get_running_loop()
        try:
            ready = await loop.run_in_executor(None, self.conn.poll, START_TIMEOUT_S)
            ready = ready and self.conn.recv() == ("ready",)
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.process.kill()
            raise RuntimeError("the engine process did not start (its traceback is above)")
        loop.add_reader(self.conn.fileno(), self._receive)
        self.started_at = time.monotonic()

    def stop(self) -> None:
        self.stopping = True
        if self.process is None:
            return
        if self.restarting:
            self._restart_task.cancel()
            self.process.kill()
        elif self.exited is None:
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            self.exited = "the server is stopping"
            try:
                self.conn.send(("stop",))
            except OSError:  # it has gone already (Ctrl-C reaches it too)
                pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
        self.conn.close()

    def _receive(self) -> None:
        """The engine has written: route every message already in the pipe."""
        try:
            while self.conn.poll():
                _, events, engine = self.conn.recv()
                self._route(events, engine)
        except (EOFError, OSError):
            self.process.join(timeout=1)
            code = self.process.exitcode
            # terminated on purpose (SIGTERM: a shutdown, or someone's kill): not restarted
            self._gone(f"exit code {code}", restart=code != -signal.SIGTERM)

    def _route(self, events: list[tuple[int, Event]], engine: dict) -> None:
        while self.sent_rows and next(iter(self.sent_rows)) < engine["seen"]:  # submits, in order, now taken
            del self.sent_rows[next(iter(self.sent_rows))]
        self.engine = engine
        self.peak = max(self.peak, engine["peak_running"])
        for k in ("tokens", "errors"):
            self.stats[k] = self.counted[k] + engine[k]
        for gid, event in events:
            gen = self.generations.get(gid)
            if gen is None:
                continue
            gen.queue.put_nowait(event)
            if event.finish is not None:
                gen.unfinished.discard(event.index)
                if not gen.unfinished:
                    del self.generations[gid]

    def _gone(self, why: str, restart: bool = True) -> None:
        """The engine process died: fail every open request (once), then start another one if it may."""
        if self.exited is not None:
            return
        self.exited = why
        try:
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
        except (RuntimeError, ValueError, OSError):
            pass
        for gen in self.generations.values():
            for i in gen.unfinished:
                gen.queue.put_nowait(Event(i, "", "error", 0))
        self.generations.clear()
        self.sent_rows.clear()
        self.counted = {k: self.stats[k] for k in self.counted}
        self.engine = dict(NO_ENGINE)
        soon = self.restarts > 0 and time.monotonic() - self.started_at < RESTART_WINDOW_S
        again = restart and not self.stopping and not soon
        print(f"homegpt: the engine process has exited ({why}): open requests fail; "
              + ("starting a new one" if again else "it died again soon after a restart" if soon else
                 "it was terminated") + ("" if again else ": new requests get 503 until homegpt serve is restarted"),
              flush=True)
        if again:
            self.restarting = True
            self._restart_task = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        self.conn.close()
        try:
            await self.start()
        except RuntimeError as e:
            print(f"homegpt: {e}: new requests get 503 until homegpt serve is restarted", flush=True)
            return
        finally:
            self.restarting = False
        self.restarts += 1
        self.exited = None
        print(f"homegpt: a new engine process is serving (restart {self.restarts})", flush=True)


def default_threads(device: str) -> int:
    """torch's threads for the engine process: on a CPU one core fewer than torch would take, for the HTTP
    process and the clients (2 cores, 16 clients: 1,496.5 tokens/s with 1 thread vs 1,114.8 with 2)."""
    n = torch.get_num_threads()
    return max(1, n - 1) if torch.device(device).type == "cpu" else n


# ---------------------------------------------------------------------- the engine process


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
