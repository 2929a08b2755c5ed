"""Token shards: documents encoded, joined by <|endoftext|>, packed end to end with no padding.

A prepared directory holds
    tokenizer.json            a copy of the tokenizer that made the ids
    train-00000.bin, ...      token ids, raw little-endian uint16 (vocab <= 65,536) or uint32, for np.memmap
    val-00000.bin, ...        the held-out split, same format
    manifest.json             tokenizer hash, dtype, per split: tokens, bytes, documents and every shard with
                              its token count and SHA-256; the source and the settings that made it

How it runs (see docs/data.md): the main process streams documents from the source, cuts long ones into
pieces, and hands chunks of pieces to `workers` encoder processes; results come back in corpus order and
are appended to fixed-size shards, so the output is the same whatever the worker count. Memory is bounded
by `memory_mb` (chunk size and the number of chunks in flight follow from it). Progress is committed to a
state file at every completed shard (and every COMMIT_SECONDS): rerunning after a crash resumes from the
last commit and writes exactly the shards an uninterrupted run would.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import deque
from itertools import chain
from pathlib import Path

import numpy as np

from homegpt.data.chunks import Chunk, DedupTable, chunks
from homegpt.data.fastenc import Encoder, EncoderMismatch, choose_encoder, encode_chunk, init_worker
from homegpt.data.formats import Progress
from homegpt.data.shards import (
    SHARD_RE,
    SplitWriter,
    fsync_dir,
    open_split,
    read_manifest,
    verify,
    write_json_atomic,
)
from homegpt.data.sources import VAL_EVERY, as_source, fingerprint
from homegpt.data.tokenizer import EOT, file_sha256, load_tokenizer, round_vocab
from homegpt.errors import UserError

__all__ = ["prepare", "read_manifest", "open_split", "verify", "token_dtype", "plan_memory", "min_memory_mb"]

MANIFEST_VERSION = 2
STATE_FILE = ".prepare-state.json"
DEDUP_LOG = ".prepare-dedup.bin"
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 100_000_000
DEFAULT_MEMORY_MB = 1024
COMMIT_SECONDS = 30.0
SPOT_CHECK_EVERY = 16  # chunk 0 and every 16th chunk: a few samples are re-encoded with tokenizers
SMALL_INPUT_BYTES = 8 << 20  # below this, one process is faster than starting a pool

# The memory model, measured as RSS on Linux (docs/data.md): a process with Python, numpy, tokenizers and
# tiktoken loaded; the tokenizer's tables in both libraries (per byte of tokenizer.json); the main process's
# read buffers; and per character of text in flight the string, its pickled and unpickled copies and the ids.
MB = 1 << 20
PROCESS_MB = 40
TOKENIZER_FACTOR = 20
READER_MB = 12
BYTES_PER_CHAR_IN_FLIGHT = 20
MAX_CHUNK_CHARS = 1 << 19  # small enough to keep every worker busy from the start


def token_dtype(model_vocab: int) -> np.dtype:
    if model_vocab <= 2**16:
        return np.dtype("<u2")
    if model_vocab <= 2**32:
        return np.dtype("<u4")
    raise UserError(f"vocab size {model_vocab} is too large for uint32 token ids")


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _fixed_bytes(workers: int, tokenizer_bytes: int) -> int:
    processes = 1 + (workers if workers > 1 else 0)
    # + one more set of tables in the main process: its own tokenizer and the encoder check's
    return processes * (PROCESS_MB * MB + TOKENIZER_FACTOR * tokenizer_bytes) + TOKENIZER_FACTOR * tokenizer_bytes \
        + READER_MB * MB


def min_memory_mb(workers: int, tokenizer_bytes: int) -> int:
    """The smallest memory bound that fits `workers` encoder processes (chunks of one piece)."""
    from homegpt.data.sources import PIECE_CHARS

    in_flight = 2 * workers if workers > 1 else 1
    return -(-(_fixed_bytes(workers, tokenizer_bytes) + in_flight * BYTES_PER_CHAR_IN_FLIGHT * PIECE_CHARS) // MB)


def plan_memory(memory_mb: int | None, workers: int | None, tokenizer_bytes: int) -> tuple[int, int, int, int]:
    """(memory bound in MiB, workers, characters per chunk, chunks in flight) keeping the process tree under
    the bound: with no bound given, DEFAULT_MEMORY_MB or what the workers need; with no worker count, as many
    cores as the bound allows."""
    n = workers or default_workers()
    if memory_mb is None:
        memory_mb = max(DEFAULT_MEMORY_MB, min_memory_mb(n, tokenizer_bytes) + 64)
    elif workers is None:
        while n > 1 and min_memory_mb(n, tokenizer_bytes) > memory_mb:
            n -= 1
    if min_memory_mb(n, tokenizer_bytes) > memory_mb:
        raise UserError(f"--memory-mb {memory_mb} is too small for {n} worker(s) with this tokenizer: give at least "
                        f"{min_memory_mb(n, tokenizer_bytes)}, or fewer --workers")
    in_flight = 2 * n if n > 1 else 1
    chunk = (memory_mb * MB - _fixed_bytes(n, tokenizer_bytes)) // (in_flight * BYTES_PER_CHAR_IN_FLIGHT)
    return memory_mb, n, int(min(chunk, MAX_CHUNK_CHARS)), in_flight


def prepare(source: str, tokenizer_path: str | Path, out_dir: str | Path, force: bool = False, *,
            workers: int | None = None, max_tokens: int | None = None, dedup: bool = False, seed: int = 0,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, memory_mb: int | None = None, encoder: str = "auto",
            progress: bool = False, log=None) -> dict:
    """Encode a source into train/val shards under out_dir (resuming an interrupted run) -> the manifest."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out_dir)
    tok_file = Path(tokenizer_path)
    tok_file = tok_file / "tokenizer.json" if tok_file.is_dir() else tok_file
    tok = load_tokenizer(tok_file)
    _check_settings(workers, max_tokens, shard_tokens, memory_mb)
    src = as_source(source)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    if (out / "manifest.json").exists() and not force:
        raise UserError(f"{out} already holds prepared data: choose another --out or pass --force")
    model_vocab = round_vocab(tok.get_vocab_size())
    dtype = token_dtype(model_vocab)
    eot = tok.token_to_id(EOT)
    settings = {"source": src.spec, "fingerprint": fingerprint(src), "tokenizer_sha256": file_sha256(tok_file),
                "seed": seed, "dedup": dedup, "max_tokens": max_tokens, "shard_tokens": shard_tokens,
                "val_every": VAL_EVERY, "dtype": dtype.name}
    kind, why = choose_encoder(tok_file, encoder)
    state = _load_state(out, settings, force) if out.is_dir() else None
    if workers is None and _small_input(src):
        workers = 1  # a pool costs more than it saves on a few megabytes
    memory_mb, n_workers, chunk_chars, in_flight = plan_memory(memory_mb, workers, tok_file.stat().st_size)
    reader_progress = Progress()
    position = tuple(state["position"]) if state else (0, 0)
    source_chunks = chunks(src, seed, dedup, position, chunk_chars, reader_progress)
    first = next(source_chunks, None)  # opens the source: a bad one fails here, before anything is written
    if state is None and (first is None or not first.texts):
        raise UserError(f"source {src.spec!r} holds no text: the corpus is empty")
    out.mkdir(parents=True, exist_ok=True)
    if state is None:
        _clean(out)
        state = _fresh_state(settings)
    else:
        log(f"resuming the interrupted prepare in {out}: {state['splits']['train']['tokens']:,} training "
            f"tokens already written")
    log(f"encoder: {kind} ({why}); {n_workers} worker(s), chunks of {chunk_chars // 1024:,}K characters, "
        f"memory bound {memory_mb:,} MiB")
    run = _Run(out, state, settings, dtype, tok_file, kind, eot, n_workers, in_flight, log)
    try:
        run.execute(chain([first] if first else [], source_chunks), reader_progress, progress)
    except BaseException:
        run.abandon()  # the committed state stays as it was: a rerun resumes from it
        raise
    finally:
        run.close_pool()
    return _finish(out, run, tok_file, tok, src, settings, kind)


def _check_settings(workers, max_tokens, shard_tokens, memory_mb) -> None:
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if max_tokens is not None and max_tokens < 1:
        raise UserError(f"--max-tokens must be positive, got {max_tokens}")
    if shard_tokens < 1024:
        raise UserError(f"--shard-tokens must be at least 1024, got {shard_tokens}")
    if memory_mb is not None and memory_mb < 1:
        raise UserError(f"--memory-mb must be positive, got {memory_mb}")


def _small_input(src) -> bool:
    if src.kind == "builtin":
        return True
    if src.kind != "file":
        return False
    return sum(size for _, size, _ in fingerprint(src)) < SMALL_INPUT_BYTES


def _fresh_state(settings: dict) -> dict:
    return {"settings": settings, "position": [0, 0], "keep_current": True, "phase": "open",
            "splits": {s: {"shards": [], "partial": 0, "tokens": 0, "bytes": 0, "documents": 0} for s in SPLITS},
            "duplicates": 0, "empty_documents": 0, "dedup_entries": 0, "stopped_early": False}


def _load_state(out: Path, settings: dict, force: bool) -> dict | None:
    path = out / STATE_FILE
    if force or not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # written atomically, so damage means someone else wrote it: start over
    if state.get("settings") != settings:
        changed = sorted(k for k in settings if state.get("settings", {}).get(k) != settings[k])
        raise UserError(f"{out} holds an interrupted prepare with other settings ({', '.join(changed)} differ): "
                        f"rerun it with the same ones to resume, or pass --force to start over")
    return state


def _clean(out: Path) -> None:
    """Remove what a previous prepare wrote here (and nothing else)."""
    names = {"manifest.json", "tokenizer.json", "train.bin", "val.bin", STATE_FILE, DEDUP_LOG,
             "manifest.json.tmp", "tokenizer.json.tmp", STATE_FILE + ".tmp"}
    for p in out.iterdir():
        if p.is_file() and (p.name in names or SHARD_RE.match(p.name)):
            p.unlink()


class _Inline:
    """The result of a chunk encoded in this process (workers=1), shaped like a Future."""

    def __init__(self, value) -> None:
        self.value = value

    def result(self):
        return self.value


class _Run:
    """The ordered writer: takes encoded chunks in corpus order, drops duplicates, stops at max_tokens,
    appends to the shards and commits the state."""

    def __init__(self, out, state, settings, dtype, tok_file, kind, eot, workers, in_flight, log) -> None:
        self.out, self.state, self.settings, self.log = out, state, settings, log
        self.workers, self.in_flight = workers, in_flight
        self.writers = {s: SplitWriter(out, s, dtype, settings["shard_tokens"], state["splits"][s]["shards"],
                                       state["splits"][s]["partial"]) for s in SPLITS}
        self.dedup = DedupTable.load(out / DEDUP_LOG, state["dedup_entries"]) if settings["dedup"] else None
        self.pool = None
        args = (str(tok_file), kind, dtype.name, eot)
        if workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn: workers start clean (no copied threads or locks from the reader's libraries); an executor,
            # not a Pool, because a worker that dies (killed, out of memory) fails the run instead of hanging it
            self.pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=init_worker,
                                            initargs=args)
        else:
            self.encoder = Encoder(*args)
        self.last_commit = time.monotonic()
        self.text_bytes = self.tokens_encoded = 0  # in this run (a resumed one skips what was written)
        self.seconds = 0.0

    def submit(self, chunk: Chunk):
        check = chunk.index % SPOT_CHECK_EVERY == 0
        if self.pool is None:
            return _Inline(encode_chunk(chunk.texts, chunk.ends, check, self.encoder))
        return self.pool.submit(encode_chunk, chunk.texts, chunk.ends, check)

    def execute(self, source_chunks, reader_progress: Progress, show: bool) -> None:
        from tqdm import tqdm

        bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc="prepare", file=sys.stderr,
                   disable=not show, dynamic_ncols=True)
        t0 = time.perf_counter()
        tokens0 = self.state["splits"]["train"]["tokens"] + self.state["splits"]["val"]["tokens"]
        pending: deque = deque()
        try:
            for chunk in source_chunks:
                pending.append((chunk, self.submit(chunk)))
                chunk.texts = None  # sent: the worker has its own copy
                while len(pending) >= self.in_flight:
                    if self._write(*pending.popleft(), bar, reader_progress, t0, tokens0):
                        return
            while pending:
                if self._write(*pending.popleft(), bar, reader_progress, t0, tokens0):
                    return
        finally:
            bar.close()
            self.seconds = time.perf_counter() - t0

    def _write(self, chunk: Chunk, result, bar, reader_progress: Progress, t0: float, tokens0: int) -> bool:
        """Write one chunk; True when max_tokens has been reached."""
        from concurrent.futures.process import BrokenProcessPool

        try:
            tokens, counts, nbytes = result.result()
        except BrokenProcessPool:
            raise UserError("an encoder worker process died (out of memory, or killed): rerun to resume, with "
                            "fewer --workers or a smaller --memory-mb") from None
        except EncoderMismatch:
            raise UserError(f"the fast encoder (tiktoken) gave other ids than tokenizers in chunk {chunk.index}: "
                            f"rerun with --force --encoder hf (and please report it)") from None
        st = self.state
        keep = np.ones(len(counts), bool)
        duplicate = np.zeros(len(counts), bool)  # first pieces of documents dropped as duplicates
        if self.dedup is not None:
            keep, duplicate = self._dedup(chunk)
        stop, n = self._cutoff(chunk, counts, keep)
        keep, counts, nbytes = keep[:n], counts[:n], nbytes[:n]
        split = chunk.splits[:n]
        owner = np.repeat(np.where(keep, split, 2), counts)
        tokens = tokens[:len(owner)]
        completed = 0
        for code, name in enumerate(SPLITS):
            info = st["splits"][name]
            mine = keep & (split == code)
            completed += self.writers[name].write(tokens[owner == code])
            info["tokens"] += int(counts[mine].sum())
            info["bytes"] += int(nbytes[mine].sum())
            info["documents"] += int((chunk.ends[:n] & mine).sum())
        # counted up to the cut only, so a stop at max_tokens counts the same whatever the chunking
        st["duplicates"] += int(duplicate[:n].sum())
        st["empty_documents"] += int(chunk.empties[:n].sum()) + (chunk.trailing_empties if n == len(chunk.ends) else 0)
        st["position"] = list(chunk.end_position)
        self.text_bytes += int(nbytes.sum())
        if completed or time.monotonic() - self.last_commit > COMMIT_SECONDS:
            self.commit()
        written = st["splits"]["train"]["tokens"] + st["splits"]["val"]["tokens"]
        bar.total = reader_progress.total
        bar.n = reader_progress.done if reader_progress.total else self.text_bytes
        self.tokens_encoded = written - tokens0
        rate = self.tokens_encoded / max(1e-9, time.perf_counter() - t0)
        bar.set_postfix_str(f"{written:,} tokens, {rate:,.0f} tok/s", refresh=True)
        st["stopped_early"] = stop
        return stop

    def _dedup(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
        """(keep, duplicate) per piece: the first copy of every document is kept, and its first piece decides
        for all its pieces (a document continuing from the previous chunk keeps that chunk's verdict)."""
        n = len(chunk.firsts)
        fresh = self.dedup.add_new(chunk.digests[chunk.firsts])
        doc = np.cumsum(chunk.firsts) - 1  # which document of this chunk each piece belongs to (-1: continued)
        if len(fresh):
            keep = np.where(doc >= 0, fresh[np.maximum(doc, 0)], self.state["keep_current"])
        else:
            keep = np.full(n, self.state["keep_current"])
        duplicate = np.zeros(n, bool)
        duplicate[np.flatnonzero(chunk.firsts)[~fresh]] = True
        self.state["dedup_entries"] = len(self.dedup)
        self.state["keep_current"] = bool(keep[-1]) if n and not chunk.ends[-1] else True
        return keep, duplicate

    def _cutoff(self, chunk: Chunk, counts: np.ndarray, keep: np.ndarray) -> tuple[bool, int]:
        """(stop, pieces of this chunk to write). Once the training split reaches max_tokens, the document
        that got it there is finished; then, if no held-out document was written yet, training pieces are
        skipped until one is (a held-out split is never left empty); then the run stops."""
        limit, st = self.settings["max_tokens"], self.state
        n = len(counts)
        if limit is None:
            return False, n
        start = 0
        if st["phase"] == "open":
            train = np.where(keep & (chunk.splits == 0), counts, 0).cumsum() + st["splits"]["train"]["tokens"]
            hit = np.flatnonzero(train >= limit)
            if not len(hit):
                return False, n
            st["phase"], start = "finish_doc", int(hit[0])
        val_docs = st["splits"]["val"]["documents"] + int((chunk.ends & keep & (chunk.splits == 1))[:start].sum())
        for i in range(start, n):
            if st["phase"] == "finish_doc" and chunk.ends[i]:
                st["phase"] = "await_val"
            elif st["phase"] == "await_val" and chunk.splits[i] == 0:
                keep[i] = False
            elif st["phase"] == "await_val" and keep[i] and chunk.ends[i]:
                val_docs += 1
            if st["phase"] == "await_val" and val_docs:
                return True, i + 1
        return False, n

    def commit(self) -> None:
        """Make everything written so far durable, then record it: a crash resumes from here."""
        for name, w in self.writers.items():
            w.sync()
            self.state["splits"][name]["shards"] = list(w.shards)
            self.state["splits"][name]["partial"] = w.count
        if self.dedup is not None:
            self.dedup.sync()
        fsync_dir(self.out)
        write_json_atomic(self.out / STATE_FILE, self.state)
        self.last_commit = time.monotonic()

    def close_pool(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def abandon(self) -> None:
        for w in self.writers.values():
            w.abandon()


def _finish(out: Path, run: _Run, tok_file: Path, tok, src, settings: dict, kind: str) -> dict:
    """Complete the last shards, check every checksum on disk, then write the manifest (last of all)."""
    st = run.state
    for name in SPLITS:
        w = run.writers[name]
        w.close()
        st["splits"][name]["shards"], st["splits"][name]["partial"] = list(w.shards), 0
    for name in SPLITS:
        if st["splits"][name]["tokens"] < 2:
            what = "training" if name == "train" else "held-out"
            raise UserError(f"source {src.spec!r} gives too little {what} text to use: give it more text")
    for name in SPLITS:
        for shard in st["splits"][name]["shards"]:
            if file_sha256(out / shard["file"]) != shard["sha256"]:
                raise UserError(f"{out / shard['file']} changed on disk while being written: prepare again")
    tmp_tok = out / "tokenizer.json.tmp"
    shutil.copyfile(tok_file, tmp_tok)
    tmp_tok.replace(out / "tokenizer.json")
    manifest = {
        "version": MANIFEST_VERSION,
        "source": src.spec,
        "tokenizer_sha256": file_sha256(out / "tokenizer.json"),
        "vocab_size": tok.get_vocab_size(),
        "model_vocab_size": round_vocab(tok.get_vocab_size()),
        "eot_id": tok.token_to_id(EOT),
        "dtype": settings["dtype"],
        "splits": {name: {k: st["splits"][name][k] for k in ("tokens", "bytes", "documents", "shards")}
                   for name in SPLITS},
        "seed": settings["seed"],
        "val_every": VAL_EVERY,
        "dedup": settings["dedup"],
        "duplicates_removed": st["duplicates"],
        "empty_documents": st["empty_documents"],
        "max_tokens": settings["max_tokens"],
        "stopped_at_max_tokens": st["stopped_early"],
        "shard_tokens": settings["shard_tokens"],
        "encoder": kind,
    }
    write_json_atomic(out / "manifest.json", manifest)
    if run.dedup is not None:
        run.dedup.log.close()
    for name in (STATE_FILE, DEDUP_LOG):
        (out / name).unlink(missing_ok=True)
    fsync_dir(out)
    s = max(run.seconds, 1e-9)
    run.log(f"encoded {run.text_bytes / 1e6:,.1f} MB of text and wrote {run.tokens_encoded:,} tokens in {s:.1f} s: "
            f"{run.text_bytes / 1e6 / s:,.2f} MB/s, {run.tokens_encoded / s:,.0f} tokens/s ({run.workers} worker(s))")
    return manifest
