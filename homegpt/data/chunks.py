"""The reading side of prepare: a source's documents as numbered chunks of pieces, and the duplicate table.

A position (document, piece) names a point in the source's stream of non-empty documents (in corpus order,
split already assigned) and pieces (long documents are cut into pieces, see sources.cut_pieces). Chunks end
at positions, and a commit records the position after the last chunk written, so a resumed prepare skips
exactly what was written: reading the source again from the start, but encoding nothing twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from homegpt.data.sources import Source, cut_pieces, doc_digest, iter_assigned

SPLIT_CODES = {"train": 0, "val": 1}


@dataclass
class Chunk:
    index: int  # 0, 1, 2, ... in this run
    texts: list[str] | None  # the pieces (dropped once sent to a worker)
    ends: np.ndarray  # bool per piece: the last piece of its document (<|endoftext|> follows)
    firsts: np.ndarray  # bool per piece: the first piece of its document
    splits: np.ndarray  # uint8 per piece: 0 train, 1 val
    digests: np.ndarray  # uint64 per piece: the document's hash on its first piece (with dedup), else 0
    end_position: tuple[int, int]  # the stream position right after this chunk
    empties: np.ndarray  # uint32 per piece: empty documents skipped just before it
    trailing_empties: int  # empty documents skipped after the last piece (at the end of the source)


def chunks(src: Source, seed: int, dedup: bool, start: tuple[int, int], chunk_chars: int, progress=None
           ) -> Iterator[Chunk]:
    """Chunks of about chunk_chars characters from `start` on; a chunk never splits a piece."""
    start_doc, start_piece = start
    counting = start == (0, 0)  # empty documents are counted once: not again while replaying to `start`
    empties = 0

    def on_empty() -> None:
        nonlocal empties
        empties += counting

    pieces: list[tuple[str, bool, bool, int, int]] = []
    size, index, position = 0, 0, start
    for d, (split, doc) in enumerate(iter_assigned(src, seed, progress, on_empty)):
        if d < start_doc:
            counting = d == start_doc - 1 and start_piece == 0
            continue
        counting = True
        first_piece = start_piece if d == start_doc else 0
        digest = int.from_bytes(doc_digest(doc), "little") if dedup and first_piece == 0 else 0
        for k, (text, last) in enumerate(cut_pieces(doc)):
            if k < first_piece:
                continue
            pieces.append((text, last, k == 0, SPLIT_CODES[split], digest if k == 0 else 0, empties))
            empties = 0
            size += len(text)
            position = (d + 1, 0) if last else (d, k + 1)
            if size >= chunk_chars:
                yield _chunk(index, pieces, position, 0)
                pieces, size, index = [], 0, index + 1
    if pieces or empties:
        yield _chunk(index, pieces, position, empties)


def _chunk(index: int, pieces: list, position: tuple[int, int], trailing_empties: int) -> Chunk:
    n = len(pieces)
    return Chunk(
        index=index,
        texts=[p[0] for p in pieces],
        ends=np.fromiter((p[1] for p in pieces), bool, n),
        firsts=np.fromiter((p[2] for p in pieces), bool, n),
        splits=np.fromiter((p[3] for p in pieces), np.uint8, n),
        digests=np.fromiter((p[4] for p in pieces), np.uint64, n),
        end_position=position,
        empties=np.fromiter((p[5] for p in pieces), np.uint32, n),
        trailing_empties=trailing_empties,
    )


class DedupTable:
    """The 8-byte hashes of every document kept so far, as sorted runs merged LSM-style (8 bytes a document),
    and an append-only log of them on disk, so a resumed prepare rebuilds exactly the committed table."""

    def __init__(self, log_path: Path, digests: np.ndarray) -> None:
        self.runs = [np.sort(digests)] if len(digests) else []
        self.count = len(digests)
        self.log = open(log_path, "ab")  # noqa: SIM115 -- open for the whole prepare, closed with the process

    @classmethod
    def load(cls, log_path: Path, entries: int) -> DedupTable:
        digests = np.empty(0, np.uint64)
        if entries and log_path.exists():
            digests = np.fromfile(log_path, dtype="<u8", count=entries)
        if log_path.exists():
            with open(log_path, "r+b") as f:
                f.truncate(len(digests) * 8)  # entries written after the last commit are redone
        return cls(log_path, digests)

    def __len__(self) -> int:
        return self.count

    def contains(self, digests: np.ndarray) -> np.ndarray:
        found = np.zeros(len(digests), bool)
        for run in self.runs:
            pos = np.minimum(np.searchsorted(run, digests), len(run) - 1)
            found |= run[pos] == digests
        return found

    def add_new(self, digests: np.ndarray) -> np.ndarray:
        """True for each digest seen for the first time (earlier in this batch counts); those are added."""
        first = np.zeros(len(digests), bool)
        first[np.unique(digests, return_index=True)[1]] = True
        fresh = first & ~self.contains(digests)
        new = digests[fresh]
        if len(new):
            self.log.write(new.astype("<u8").tobytes())
            self.runs.append(np.sort(new))
            self.count += len(new)
            while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
                last = self.runs.pop()
                self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]))
        return fresh

    def sync(self) -> None:
        self.log.flush()
        os.fsync(self.log.fileno())
