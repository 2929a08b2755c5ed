"""Token shards on disk: written crash-safely, listed with checksums in manifest.json, read as one array.

    train-00000.bin, train-00001.bin, ...   raw little-endian uint16 (vocab <= 65,536) or uint32 token ids
    val-00000.bin, ...                      each shard holds exactly shard_tokens ids, except the last

A shard is written as NAME.tmp and renamed only when complete. The manifest lists every shard with its
token count and SHA-256; opening a split checks every shard's size, `check_split` (what training and
evaluation run before they start) also reads every shard once for ids beyond the vocabulary and its
SHA-256, and `verify` (homegpt prepare --verify) re-hashes them. Older prepared folders with one train.bin /
val.bin (manifest version 1) still open.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from homegpt.errors import UserError

HASH_BLOCK = 1 << 20
SCAN_BLOCK = 1 << 24  # bytes read at a time when checking a shard's ids and hash (a multiple of 4)
SCAN_THREADS = 4  # shards checked at once: hashing releases the GIL, so the cores share the work


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


SHARD_RE = re.compile(r"^(train|val)-(\d{5})\.bin(\.tmp)?$")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in blocks (shards can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class SplitWriter:
    """Appends token ids to a split's shards, shard_tokens per shard, each renamed from .tmp when full.

    Resuming: `shards` are the complete shards a commit recorded and `partial` the ids it recorded in the
    shard being written; anything on disk beyond that (a later shard, a longer .tmp) is discarded.
    """

    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_tokens: int,
                 shards: list[dict] | None = None, partial: int = 0) -> None:
        self.out, self.split, self.dtype, self.shard_tokens = out, split, np.dtype(dtype), shard_tokens
        self.shards = list(shards or [])
        self.index, self.count = len(self.shards), partial
        self.hash = hashlib.sha256()
        self.file = None
        tmp, final = self._tmp(), out / shard_name(split, self.index)
        if partial and not tmp.exists() and final.exists():
            final.replace(tmp)  # completed after the last commit: take it back to the committed length
        self._discard_beyond()
        if partial:
            need = partial * self.dtype.itemsize
            if not tmp.exists() or tmp.stat().st_size < need:
                raise UserError(f"{tmp} is shorter than the interrupted prepare recorded: pass --force to start over")
            self.file = open(tmp, "r+b")  # noqa: SIM115 -- kept open while writing, closed in _finish / close
            self.file.truncate(need)
            while block := self.file.read(HASH_BLOCK):
                self.hash.update(block)
        else:
            tmp.unlink(missing_ok=True)

    def _tmp(self) -> Path:
        return self.out / (shard_name(self.split, self.index) + ".tmp")

    def _discard_beyond(self) -> None:
        for p in self.out.iterdir():
            m = SHARD_RE.match(p.name)
            if m and m.group(1) == self.split and (int(m.group(2)) > self.index or
                                                   (int(m.group(2)) == self.index and not m.group(3))):
                p.unlink()

    def write(self, ids: np.ndarray) -> int:
        """Append ids; returns how many shards this completed."""
        completed, pos = 0, 0
        while pos < len(ids):
            if self.file is None:
                self.file = open(self._tmp(), "wb")  # noqa: SIM115
            take = min(self.shard_tokens - self.count, len(ids) - pos)
            data = memoryview(np.ascontiguousarray(ids[pos:pos + take], dtype=self.dtype)).cast("B")
            self.file.write(data)
            self.hash.update(data)
            self.count += take
            pos += take
            if self.count == self.shard_tokens:
                self._finish()
                completed += 1
        return completed

    def _finish(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.file = None
        name = shard_name(self.split, self.index)
        self._tmp().replace(self.out / name)
        self.shards.append({"file": name, "tokens": self.count, "sha256": self.hash.hexdigest()})
        self.index, self.count, self.hash = self.index + 1, 0, hashlib.sha256()

    def sync(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        """Complete the last, shorter shard."""
        if self.file is not None and self.count:
            self._finish()
        elif self.file is not None:
            self.file.close()
            self._tmp().unlink(missing_ok=True)
            self.file = None

    def abandon(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class ShardedTokens:
    """A split's shards, memory-mapped, as one read-only 1-D sequence: len(), [i] and [a:b] -> np.ndarray."""

    def __init__(self, arrays: list[np.ndarray], dtype: np.dtype) -> None:
        self.arrays, self.dtype = arrays, np.dtype(dtype)
        self.starts = [0]
        for a in arrays:
            self.starts.append(self.starts[-1] + len(a))

    def __len__(self) -> int:
        return self.starts[-1]

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return np.asarray(self)[key]
            return self._range(start, max(start, stop))
        i = int(key)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"token index {key} out of range for {n} tokens")
        s = bisect.bisect_right(self.starts, i) - 1
        return self.arrays[s][i - self.starts[s]]

    def _range(self, start: int, stop: int) -> np.ndarray:
        s = bisect.bisect_right(self.starts, start) - 1
        parts = []
        while start < stop and s < len(self.arrays):
            lo = start - self.starts[s]
            hi = min(stop, self.starts[s + 1]) - self.starts[s]
            parts.append(self.arrays[s][lo:hi])
            start, s = self.starts[s] + hi, s + 1
        if len(parts) == 1:
            return np.asarray(parts[0])
        return np.concatenate(parts) if parts else np.empty(0, self.dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self._range(0, len(self))
        return whole.astype(dtype) if dtype is not None else whole


# ---- manifest -------------------------------------------------------------------------------------------


def split_shards(info: dict) -> list[dict]:
    """The shard list of a split (version-1 manifests have a single "file")."""
    if "shards" in info:
        return info["shards"]
    return [{"file": info["file"], "tokens": info["tokens"]}]


def read_manifest(data_dir: str | Path) -> dict:

    d = Path(data_dir)
    path = d / "manifest.json"
    if not path.is_file():
        raise UserError(f"{d} is not a prepared data directory (no manifest.json): run homegpt prepare")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        _ = manifest["splits"]["train"]["tokens"], manifest["dtype"], manifest["tokenizer_sha256"]
        for split in manifest["splits"].values():
            for shard in split_shards(split):
                _ = shard["file"], int(shard["tokens"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is damaged: prepare the data again") from None
    if not (d / "tokenizer.json").is_file():
        raise UserError(f"{d} has no tokenizer.json: prepare the data again")
    if file_sha256(d / "tokenizer.json") != manifest["tokenizer_sha256"]:
        raise UserError(f"{d}/tokenizer.json does not match the manifest's tokenizer hash: prepare again")
    return manifest


def open_split(data_dir: str | Path, split: str, manifest: dict | None = None, verify: bool = False
               ) -> ShardedTokens:
    """A split as one sequence over memory-mapped shards, after checking each shard's size (and with
    verify=True its checksum) against the manifest."""
    d = Path(data_dir)
    manifest = manifest or read_manifest(d)
    dtype = np.dtype(manifest["dtype"])
    arrays = []
    for shard in split_shards(manifest["splits"][split]):
        path = d / shard["file"]
        check_shard(path, shard, dtype, verify)
        if shard["tokens"]:
            arrays.append(np.memmap(path, dtype=dtype, mode="r"))
    return ShardedTokens(arrays, dtype)


def check_shard(path: Path, shard: dict, dtype: np.dtype, verify: bool) -> None:
    expected = shard["tokens"] * dtype.itemsize
    if not path.is_file():
        raise UserError(f"{path} is missing (manifest lists {shard['tokens']:,} tokens): prepare again")
    size = path.stat().st_size
    if size != expected:
        raise UserError(f"{path} is truncated or damaged: {size:,} bytes, the manifest says {expected:,} "
                        f"({shard['tokens']:,} tokens): prepare again")
    if verify and "sha256" in shard and file_sha256(path) != shard["sha256"]:
        raise UserError(f"{path} is corrupted: its SHA-256 differs from the manifest's: prepare again with --force")


def scan_shard(path: Path, shard: dict, dtype: np.dtype, vocab_size: int, checksum: bool = True) -> int:
    """Check one shard in a single read: its size, every token id below vocab_size and (checksum=True) its
    SHA-256 against the manifest. Returns the bytes read; a UserError names the file and what is wrong."""
    check_shard(path, shard, dtype, verify=False)
    digest = hashlib.sha256() if checksum and "sha256" in shard else None
    buf, seen, total = bytearray(SCAN_BLOCK), 0, 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            view = memoryview(buf)[:n]
            if digest is not None:
                digest.update(view)
            ids = np.frombuffer(view, dtype=dtype)
            if len(ids) and int(ids.max()) >= vocab_size:
                at = int(np.argmax(ids >= vocab_size))
                raise UserError(f"{path} holds token id {int(ids[at]):,} at token {seen + at:,}, beyond the "
                                f"{vocab_size:,}-token vocabulary of its tokenizer.json: the shard is corrupted or "
                                f"was written with another tokenizer: prepare again with --force")
            seen, total = seen + len(ids), total + n
    if digest is not None and digest.hexdigest() != shard["sha256"]:
        raise UserError(f"{path} is corrupted or comes from another preparation: its SHA-256 differs from the "
                        f"manifest's: prepare again with --force")
    return total


def check_split(data_dir: str | Path, split: str, manifest: dict | None = None, checksums: bool = True) -> dict:
    """Every shard of a split checked before use (scan_shard): sizes, ids and checksums, a few shards at once.
    Returns {"shards", "bytes", "seconds"}; the first bad shard (in manifest order) raises its UserError."""
    d = Path(data_dir)
    manifest = manifest or read_manifest(d)
    dtype = np.dtype(manifest["dtype"])
    vocab = int(manifest.get("vocab_size") or manifest["model_vocab_size"])
    shards = split_shards(manifest["splits"][split])
    for shard in shards:  # sizes first: a missing or truncated shard is named before anything is read
        check_shard(d / shard["file"], shard, dtype, verify=False)
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(min(SCAN_THREADS, max(1, len(shards))))
    try:
        jobs = [pool.submit(scan_shard, d / s["file"], s, dtype, vocab, checksums) for s in shards]
        read = sum(job.result() for job in jobs)
    finally:
        pool.shutdown(cancel_futures=True)  # a bad shard: the ones not yet started are not read
    return {"shards": len(shards), "bytes": read, "seconds": time.perf_counter() - t0}


def check_prepared(data_dir: str | Path, manifest: dict | None = None) -> dict:
    """Both splits checked (check_split), as training does at every start: about 2-5 s per billion tokens
    on 2 CPU cores (benchmarks/shard_check.py, docs/data.md)."""
    train, val = (check_split(data_dir, split, manifest) for split in ("train", "val"))
    return {k: train[k] + val[k] for k in ("shards", "bytes", "seconds")}


def verify(data_dir: str | Path) -> dict:
    """Re-hash every shard against the manifest; a UserError names the first bad one."""
    d = Path(data_dir)
    manifest = read_manifest(d)
    dtype = np.dtype(manifest["dtype"])
    shards = tokens = 0
    for split in manifest["splits"].values():
        for shard in split_shards(split):
            check_shard(d / shard["file"], shard, dtype, verify=True)
            shards += 1
            tokens += shard["tokens"]
    checked = all("sha256" in s for split in manifest["splits"].values() for s in split_shards(split))
    return {"data_dir": str(d), "shards": shards, "tokens": tokens, "checksums": checked, "ok": True}
