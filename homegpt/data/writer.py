"""The writing side of prepare: encoded chunks, in corpus order, appended to shards and committed for resuming.

Everything that decides what a prepared directory holds happens here, in one process and in corpus order:
dropping duplicate documents, stopping at max_tokens, splitting ids between train and val. So the shards
depend only on the source and the settings, never on how many workers encoded it or how it was chunked.

The state file (STATE_FILE) is the record of a run in progress: the settings, the source position after the
last chunk written, each split's complete shards and the length of the one being written, the counters, the
dedup table's length and the max_tokens phase. It is rewritten atomically at every commit, after everything
it records has been made durable; a rerun with the same settings resumes from it (see shards.SplitWriter and
chunks.DedupTable for how what was written after the last commit is dropped).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from homegpt.data.chunks import Chunk, DedupTable
from homegpt.data.formats import Progress
from homegpt.data.shards import SplitWriter, fsync_dir, write_json_atomic
from homegpt.errors import UserError
from homegpt.progress import progress_bar

STATE_FILE = ".prepare-state.json"
DEDUP_LOG = ".prepare-dedup.bin"
SPLITS = ("train", "val")
COMMIT_SECONDS = 30.0


def fresh_state(settings: dict) -> dict:
    return {"settings": settings, "position": [0, 0], "keep_current": True, "phase": "open",
            "splits": {s: {"shards": [], "partial": 0, "tokens": 0, "bytes": 0, "documents": 0} for s in SPLITS},
            "duplicates": 0, "empty_documents": 0, "dedup_entries": 0, "stopped_early": False}


def load_state(out: Path, settings: dict, force: bool) -> dict | None:
    """The committed state of an interrupted prepare in out with these settings, or None to start afresh."""
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


class OrderedWriter:
    """Writes a prepare's encoded chunks into the train/val shards in out, continuing from `state` (made
    with these settings).

    Guarantees:
    - order: chunks are written in the order given, which must be corpus order; each piece's ids go to its
      split whole and in order, so the shards are the same whatever the worker count or chunk size;
    - resumability: `state` is fresh_state(...) or a committed one (load_state); a writer made from a commit
      continues exactly where it left off, and the run then writes exactly the shards an uninterrupted one
      would;
    - atomic commits: `commit` (at every completed shard and every COMMIT_SECONDS) first makes the shards and
      the dedup log durable, then replaces the state file in one rename: a crash at any point leaves the
      previous commit or this one, never a mix.
    """

    def __init__(self, out: Path, state: dict, settings: dict, dtype: np.dtype) -> None:
        self.out, self.state, self.settings = out, state, settings
        self.writers = {s: SplitWriter(out, s, dtype, self.settings["shard_tokens"], state["splits"][s]["shards"],
                                       state["splits"][s]["partial"]) for s in SPLITS}
        self.dedup = DedupTable.load(out / DEDUP_LOG, state["dedup_entries"]) if self.settings["dedup"] else None
        self.last_commit = time.monotonic()
        self.tokens_at_start = self.written  # a resumed run skips what was written
        self.text_bytes = 0  # in this run
        self.seconds = 0.0

    @property
    def written(self) -> int:
        """Tokens in both splits so far, committed or not."""
        return self.state["splits"]["train"]["tokens"] + self.state["splits"]["val"]["tokens"]

    @property
    def tokens_written(self) -> int:
        """Tokens written in this run."""
        return self.written - self.tokens_at_start

    def run(self, encoded: Iterable[tuple[Chunk, np.ndarray, np.ndarray, np.ndarray]], reader_progress: Progress,
            show: bool) -> None:
        """Write (chunk, tokens, tokens per piece, bytes per piece) until they run out or max_tokens is reached,
        with a progress bar on stderr when `show`."""
        bar = progress_bar(unit="B", unit_scale=True, unit_divisor=1024, desc="prepare", disable=not show)
        t0 = time.perf_counter()
        try:
            for chunk, tokens, counts, nbytes in encoded:
                stop = self.write(chunk, tokens, counts, nbytes)
                bar.total = reader_progress.total
                bar.n = reader_progress.done if reader_progress.total else self.text_bytes
                rate = self.tokens_written / max(1e-9, time.perf_counter() - t0)
                bar.set_postfix_str(f"{self.written:,} tokens, {rate:,.0f} tok/s", refresh=True)
                if stop:
                    return
        finally:
            bar.close()
            self.seconds = time.perf_counter() - t0

    def write(self, chunk: Chunk, tokens: np.ndarray, counts: np.ndarray, nbytes: np.ndarray) -> bool:
        """Write one chunk; True when max_tokens has been reached."""
        st = self.state
        keep = np.ones(len(counts), bool)
        duplicate = np.zeros(len(counts), bool)  # first pieces of documents dropped as duplicates
        if self.dedup is not None:
            keep, duplicate = _dedup(self.dedup, st, chunk)
        stop, n = _cutoff(st, chunk, counts, keep, self.settings["max_tokens"])
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
        st["stopped_early"] = stop
        return stop

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

    def abandon(self) -> None:
        """Stop without committing (a failed or interrupted run): the last commit stays what a rerun resumes."""
        for w in self.writers.values():
            w.abandon()

    def close(self) -> None:
        """Complete the last, shorter shard of each split and record every shard in the state."""
        for name in SPLITS:
            w = self.writers[name]
            w.close()
            self.state["splits"][name]["shards"], self.state["splits"][name]["partial"] = list(w.shards), 0

    def forget(self) -> None:
        """Remove the state file and the dedup log: once the manifest is written, nothing is left to resume."""
        if self.dedup is not None:
            self.dedup.log.close()
        for name in (STATE_FILE, DEDUP_LOG):
            (self.out / name).unlink(missing_ok=True)


def _dedup(table: DedupTable, state: dict, chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
    """(keep, duplicate) per piece: the first copy of every document is kept, and its first piece decides
    for all its pieces (a document continuing from the previous chunk keeps that chunk's verdict)."""
    n = len(chunk.firsts)
    fresh = table.add_new(chunk.digests[chunk.firsts])
    doc = np.cumsum(chunk.firsts) - 1  # which document of this chunk each piece belongs to (-1: continued)
    if len(fresh):
        keep = np.where(doc >= 0, fresh[np.maximum(doc, 0)], state["keep_current"])
    else:
        keep = np.full(n, state["keep_current"])
    duplicate = np.zeros(n, bool)
    duplicate[np.flatnonzero(chunk.firsts)[~fresh]] = True
    state["dedup_entries"] = len(table)
    state["keep_current"] = bool(keep[-1]) if n and not chunk.ends[-1] else True
    return keep, duplicate


def _cutoff(st: dict, chunk: Chunk, counts: np.ndarray, keep: np.ndarray, limit: int | None) -> tuple[bool, int]:
    """(stop, pieces of this chunk to write). Once the training split reaches max_tokens, the document
    that got it there is finished; then, if no held-out document was written yet, training pieces are
    skipped until one is (a held-out split is never left empty); then the run stops."""
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
