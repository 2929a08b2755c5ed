"""The HTTP process's side of the engine process: the Worker that app.py submits rows to, and what keeps
the engine process (engine_loop.py) running.

Why a process and not a thread: decoding a small model on a CPU is mostly Python between short torch ops,
and so is the HTTP side (JSON, server-sent events, the event loop). In one process they take turns on one
interpreter lock, so the server could never use more than about one core, however many it has; measured
with 16 streaming clients on 2 cores, the threaded server used 1.05 cores while 0.8 sat idle, and the split
gives 20-25% more tokens/s (BENCHMARKS.md, Serving). vLLM splits its engine from its API server the same way.

    HTTP process (event loop)                        engine process (spawned: engine_loop.engine_main)
    Worker.submit(rows) --("submit", id, rows)-->    rows wait, join the running batch at the next step
    Generation.cancel() --("cancel", id)-------->    the request's rows leave the batch at the next step
    Generation.events() <--("events", [...], stats)  after every step: the text each row made certain

engine_loop.py's docstring lists every message that crosses the pipe. In this process, EngineProcess is
one engine process and its end of the pipe, Supervisor reads the pipe and restarts the process when it
dies, Router routes each step's events to their requests, and Worker puts them together for app.py.
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
import signal
import time
from collections.abc import Callable, Iterator

from homegpt.errors import UserError
from homegpt.serve.engine_loop import Event, RowSpec, engine_main

START_TIMEOUT_S = 300  # spawning the engine process: a fresh interpreter importing torch and homegpt
RESTART_WINDOW_S = 60  # an engine that dies again this soon after a restart is not restarted again
NO_ENGINE = {"running": 0, "waiting": 0, "peak_running": 0, "seen": 0}  # what an engine reports before its first step


class Overloaded(Exception):
    """More rows are waiting than the queue holds, or the engine process is gone."""


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
        self.max_batch, self.max_queue = max_batch, max_queue
        self.context = model.config.block_size
        self.stats = {"requests": 0, "cancelled": 0, "tokens": 0, "errors": 0}
        self.router = Router(self.stats)
        self.ids = itertools.count()
        self.supervisor = Supervisor(lambda: EngineProcess(model, tokenizer, autocast, max_batch, threads),
                                     on_events=self.router.route, on_exit=self.router.fail_open)

    def submit(self, rows: list[RowSpec]) -> Generation:
        sup = self.supervisor
        if sup.restarting:
            raise Overloaded(f"the engine process exited ({sup.exited}) and is restarting: try again shortly")
        if sup.exited:
            raise Overloaded(f"the engine process has exited ({sup.exited}): restart homegpt serve")
        for r in rows:
            if len(r.ids) + r.max_new_tokens > self.context:  # app.py checks first; this is the last guard
                raise UserError(f"a prompt of {len(r.ids)} tokens + {r.max_new_tokens} new tokens exceeds the "
                                f"model's context of {self.context} tokens")
        waiting = self.router.waiting()
        if waiting + len(rows) > self.max_queue:
            raise Overloaded(f"{waiting} rows are already waiting (--max-queue {self.max_queue}): try again shortly")
        gen = Generation(self, next(self.ids), [r.index for r in rows])
        self.router.add(gen, len(rows))
        self.stats["requests"] += 1
        self.send(("submit", gen.gid, rows))
        return gen

    def send(self, message: tuple) -> None:
        self.supervisor.send(message)

    def status(self) -> str:
        sup = self.supervisor
        return "restarting" if sup.restarting else "error" if sup.exited else "ok"

    def snapshot(self) -> dict:
        sup, exited = self.supervisor, self.supervisor.exited
        return {"running": self.router.engine["running"], "waiting": self.router.waiting(),
                "peak_running": self.router.peak, "max_batch": self.max_batch, **self.stats,
                "engine_restarts": sup.restarts, **({"engine_exited": exited} if exited else {})}

    async def start(self) -> None:
        """Spawn the engine process and wait until it is ready to take rows."""
        await self.supervisor.start()

    def stop(self) -> None:
        self.supervisor.stop()


class Router:
    """What the HTTP side knows of the engine's rows (each request's Generation, the submits the engine has
    not taken yet, its last report) and the routing of each step's events to their requests."""

    def __init__(self, stats: dict) -> None:
        self.stats = stats  # the worker's counters; "tokens" and "errors" are kept here
        self.engine = dict(NO_ENGINE)  # as of its last message
        self.generations: dict[int, Generation] = {}
        self.sent_rows: dict[int, int] = {}  # submit number -> rows, until the engine has taken it
        self.peak = 0  # the most rows that ever decoded together, over every engine process
        self.counted = {"tokens": 0, "errors": 0}  # by engine processes that have exited

    def waiting(self) -> int:
        """Rows waiting: in the engine's queue, or sent to it and not taken yet."""
        return self.engine["waiting"] + sum(self.sent_rows.values())

    def add(self, gen: Generation, rows: int) -> None:
        self.generations[gen.gid] = gen
        self.sent_rows[gen.gid] = rows

    def route(self, events: list[tuple[int, Event]], engine: dict) -> None:
        """One "events" message: the engine's report, and the events of one step."""
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

    def fail_open(self) -> None:
        """The engine process died: every open request's unfinished choices fail; its counts are kept."""
        for gen in self.generations.values():
            for i in gen.unfinished:
                gen.queue.put_nowait(Event(i, "", "error", 0))
        self.generations.clear()
        self.sent_rows.clear()
        self.counted = {k: self.stats[k] for k in self.counted}
        self.engine = dict(NO_ENGINE)


class Supervisor:
    """Keeps an engine process serving: starts it, reads its pipe, and when it dies fails the open requests
    (on_exit) and starts another one, unless it died again within RESTART_WINDOW_S of a restart."""

    def __init__(self, spawn: Callable[[], EngineProcess], on_events: Callable[[list, dict], None],
                 on_exit: Callable[[], None]) -> None:
        self.spawn, self.on_events, self.on_exit = spawn, on_events, on_exit
        self.process: EngineProcess | None = None
        self.exited: str | None = None  # why the engine process is gone (None while one runs)
        self.restarts, self.restarting, self.started_at, self.stopping = 0, False, 0.0, False
        self.restart_task: asyncio.Task | None = None

    async def start(self) -> None:
        self.process = self.spawn()
        if not await self.process.ready():
            self.process.kill()
            raise RuntimeError("the engine process did not start (its traceback is above)")
        self.process.listen(self._receive)
        self.started_at = time.monotonic()

    def send(self, message: tuple) -> None:
        if self.exited is None:
            try:
                self.process.send(message)
            except OSError as e:
                self._gone(f"the pipe to it broke: {e}")

    def stop(self) -> None:
        self.stopping = True
        if self.process is None:
            return
        if self.restarting:
            self.restart_task.cancel()
            self.process.kill()
        elif self.exited is None:
            self.process.unlisten()
            self.exited = "the server is stopping"
            self.process.ask_to_stop()
        self.process.close()

    def _receive(self) -> None:
        """The engine has written: route every message already in the pipe."""
        try:
            for _, events, engine in self.process.messages():
                self.on_events(events, engine)
        except (EOFError, OSError):
            code = self.process.exit_code()
            # terminated on purpose (SIGTERM: a shutdown, or someone's kill): not restarted
            self._gone(f"exit code {code}", restart=code != -signal.SIGTERM)

    def _gone(self, why: str, restart: bool = True) -> None:
        """The engine process died: fail every open request (once), then start another one if it may."""
        if self.exited is not None:
            return
        self.exited = why
        try:
            self.process.unlisten()
        except (RuntimeError, ValueError, OSError):
            pass
        self.on_exit()
        soon = self.restarts > 0 and time.monotonic() - self.started_at < RESTART_WINDOW_S
        again = restart and not self.stopping and not soon
        print(f"homegpt: the engine process has exited ({why}): open requests fail; "
              + ("starting a new one" if again else "it died again soon after a restart" if soon else
                 "it was terminated") + ("" if again else ": new requests get 503 until homegpt serve is restarted"),
              flush=True)
        if again:
            self.restarting = True
            self.restart_task = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        self.process.conn.close()
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


class EngineProcess:
    """One engine process, spawned with the model's weights, and this process's end of its pipe."""

    def __init__(self, model, tokenizer, autocast, max_batch: int, threads: int | None) -> None:
        import torch.multiprocessing as mp  # registers the reductions that share tensors instead of copying them

        ctx = mp.get_context("spawn")  # not fork: CUDA and OpenMP's thread pool do not survive a fork
        self.conn, child = ctx.Pipe()
        device = model.transformer.wte.weight.device
        if device.type == "cpu":
            model.share_memory()
        elif device.type != "cuda":  # no sharing for this device: a CPU copy, moved back in the engine process
            model = copy.deepcopy(model).cpu()
        self.process = ctx.Process(target=engine_main, name="homegpt-engine", daemon=True,
                                   args=(child, model, str(device), tokenizer.to_str(), autocast, max_batch, threads))
        self.process.start()
        child.close()

    async def ready(self) -> bool:
        """Whether it said ("ready",) within START_TIMEOUT_S."""
        try:
            ready = await asyncio.get_running_loop().run_in_executor(None, self.conn.poll, START_TIMEOUT_S)
            return ready and self.conn.recv() == ("ready",)
        except (EOFError, OSError):
            return False

    def listen(self, callback: Callable[[], None]) -> None:
        """Call callback on the event loop whenever the engine has written."""
        asyncio.get_running_loop().add_reader(self.conn.fileno(), callback)

    def unlisten(self) -> None:
        asyncio.get_running_loop().remove_reader(self.conn.fileno())

    def send(self, message: tuple) -> None:
        self.conn.send(message)

    def messages(self) -> Iterator[tuple]:
        """Every message already in the pipe (EOFError or OSError once the process has gone)."""
        while self.conn.poll():
            yield self.conn.recv()

    def exit_code(self) -> int | None:
        self.process.join(timeout=1)
        return self.process.exitcode

    def ask_to_stop(self) -> None:
        try:
            self.conn.send(("stop",))
        except OSError:  # it has gone already (Ctrl-C reaches it too)
            pass

    def kill(self) -> None:
        self.process.kill()

    def close(self) -> None:
        """Wait for it to exit (killed after 10 s), and close the pipe."""
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
        self.conn.close()
