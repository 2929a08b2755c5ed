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

This module plans the run (the memory model, the worker count) and makes the directory complete (the
checks and the manifest, last of all); chunks.py reads the source, encoders.py encodes, writer.py writes
and commits.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import numpy as np

from homegpt.data.chunks import Chunk, chunks
from homegpt.data.encoders import EncoderPool
from homegpt.data.fastenc import choose_encoder
from homegpt.data.formats import Progress
from homegpt.data.shards import SHARD_RE, file_sha256, fsync_dir, write_json_atomic
from homegpt.data.sources import PIECES_VERSION, VAL_EVERY, Source, as_source, fingerprint
from homegpt.data.tokenizer import EOT, load_tokenizer, round_vocab
from homegpt.data.writer import DEDUP_LOG, SPLITS, STATE_FILE, OrderedWriter, fresh_state, load_state
from homegpt.errors import UserError

MANIFEST_VERSION = 2
DEFAULT_SHARD_TOKENS = 100_000_000
DEFAULT_MEMORY_MB = 1024
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
    _check_out(out, force)
    dtype = token_dtype(round_vocab(tok.get_vocab_size()))
    settings = {"source": src.spec, "fingerprint": fingerprint(src), "tokenizer_sha256": file_sha256(tok_file),
                "seed": seed, "dedup": dedup, "max_tokens": max_tokens, "shard_tokens": shard_tokens,
                "val_every": VAL_EVERY, "dtype": dtype.name, "pieces": PIECES_VERSION}
    kind, why = choose_encoder(tok_file, encoder)
    state = load_state(out, settings, force) if out.is_dir() else None

    if workers is None and _small_input(src):
        workers = 1  # a pool costs more than it saves on a few megabytes
    memory_mb, n_workers, chunk_chars, in_flight = plan_memory(memory_mb, workers, tok_file.stat().st_size)
    reader_progress = Progress()
    source_chunks = _open_chunks(src, settings, state, chunk_chars, reader_progress)
    out.mkdir(parents=True, exist_ok=True)
    if state is None:
        _clean(out)
        state = fresh_state(settings)
    else:
        log(f"resuming the interrupted prepare in {out}: {state['splits']['train']['tokens']:,} training "
            f"tokens already written")
    log(f"encoder: {kind} ({why}); {n_workers} worker(s), chunks of {chunk_chars // 1024:,}K characters, "
        f"memory bound {memory_mb:,} MiB")

    writer = OrderedWriter(out, state, settings, dtype)
    with EncoderPool(tok_file, kind, dtype, tok.token_to_id(EOT), n_workers, in_flight) as pool:
        try:
            writer.run(pool.encoded(source_chunks), reader_progress, progress)
        except BaseException:
            writer.abandon()  # the committed state stays as it was: a rerun resumes from it
            raise
    manifest = _finish(out, writer, tok_file, tok, src, settings, kind)
    s = max(writer.seconds, 1e-9)
    mb, tokens = writer.text_bytes / 1e6, writer.tokens_written
    log(f"encoded {mb:,.1f} MB of text and wrote {tokens:,} tokens in {s:.1f} s: "
        f"{mb / s:,.2f} MB/s, {tokens / s:,.0f} tokens/s ({n_workers} worker(s))")
    return manifest


def _check_settings(workers, max_tokens, shard_tokens, memory_mb) -> None:
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if max_tokens is not None and max_tokens < 1:
        raise UserError(f"--max-tokens must be positive, got {max_tokens}")
    if shard_tokens < 1024:
        raise UserError(f"--shard-tokens must be at least 1024, got {shard_tokens}")
    if memory_mb is not None and memory_mb < 1:
        raise UserError(f"--memory-mb must be positive, got {memory_mb}")


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    if (out / "manifest.json").exists() and not force:
        raise UserError(f"{out} already holds prepared data: choose another --out or pass --force")


def _small_input(src: Source) -> bool:
    if src.kind == "builtin":
        return True
    if src.kind != "file":
        return False
    return sum(size for _, size, _ in fingerprint(src)) < SMALL_INPUT_BYTES


def _open_chunks(src: Source, settings: dict, state: dict | None, chunk_chars: int, progress: Progress
                 ) -> Iterator[Chunk]:
    """The source's chunks from the committed position (the start for a fresh run), the source already opened:
    a bad one fails here, before anything is written, and an empty one is refused."""
    position = tuple(state["position"]) if state else (0, 0)
    source_chunks = chunks(src, settings["seed"], settings["dedup"], position, chunk_chars, progress)
    first = next(source_chunks, None)
    if state is None and (first is None or not first.texts):
        raise UserError(f"source {src.spec!r} holds no text: the corpus is empty")
    return chain([first] if first else [], source_chunks)


def _clean(out: Path) -> None:
    """Remove what a previous prepare wrote here (and nothing else)."""
    names = {"manifest.json", "tokenizer.json", "train.bin", "val.bin", STATE_FILE, DEDUP_LOG,
             "manifest.json.tmp", "tokenizer.json.tmp", STATE_FILE + ".tmp"}
    for p in out.iterdir():
        if p.is_file() and (p.name in names or SHARD_RE.match(p.name)):
            p.unlink()


def _finish(out: Path, writer: OrderedWriter, tok_file: Path, tok, src: Source, settings: dict, kind: str) -> dict:
    """Complete the last shards, check every checksum on disk, then write the manifest (last of all)."""
    writer.close()
    st = writer.state
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
    manifest = _manifest(st, settings, file_sha256(out / "tokenizer.json"), tok, src, kind)
    write_json_atomic(out / "manifest.json", manifest)
    writer.forget()
    fsync_dir(out)
    return manifest


def _manifest(st: dict, settings: dict, tokenizer_sha256: str, tok, src: Source, kind: str) -> dict:
    return {
        "version": MANIFEST_VERSION,
        "source": src.spec,
        "tokenizer_sha256": tokenizer_sha256,
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
