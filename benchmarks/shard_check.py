"""What checking shards before training costs: sizes, token ids, SHA-256, at 1B-token scale.

    python benchmarks/shard_check.py [--tokens 1e9] [--shard-tokens 1e8] [--dir DIR] [--threads 1,4] [--json]

Writes `--tokens` random uint16 token ids (GPT-2's 50,257-token vocabulary; 2 bytes a token) into real
shards with homegpt's SplitWriter (so the manifest's SHA-256 are the real ones), then times what `homegpt
train` and `homegpt eval` run before they start (shards.check_split): every shard's size alone; sizes and
ids (one read of every byte); sizes, ids and SHA-256 (the same read, hashed too). Each is timed with the
shards in the page cache (warm: a restart soon after prepare or a previous run) and, where the kernel allows
dropping them (posix_fadvise DONTNEED), read from disk (cold: the first start after a reboot). Removes the
shards at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from homegpt.data import shards
from homegpt.data.shards import SplitWriter, check_shard, check_split, split_shards

VOCAB = 50257


def write_shards(out: Path, tokens: int, shard_tokens: int) -> dict:
    writer = SplitWriter(out, "train", np.dtype("<u2"), shard_tokens)
    rng = np.random.default_rng(0)
    left = tokens
    while left:
        n = min(left, 1 << 24)
        writer.write(rng.integers(0, VOCAB, n, dtype=np.uint16))
        left -= n
    writer.close()
    return {"dtype": "uint16", "vocab_size": VOCAB, "model_vocab_size": 50304,
            "splits": {"train": {"tokens": tokens, "shards": writer.shards}}}


def drop_cache(out: Path) -> bool:
    """Ask the kernel to forget the shards' cached pages (clean pages: no root needed). False if unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for p in out.glob("train-*.bin"):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(out: Path, manifest: dict, threads: int, cold: bool) -> dict:
    shards.SCAN_THREADS = threads
    dtype = np.dtype(manifest["dtype"])
    row = {"threads": threads, "cache": "cold" if cold else "warm"}
    row["sizes_s"] = timed(lambda: [check_shard(out / s["file"], s, dtype, False)
                                    for s in split_shards(manifest["splits"]["train"])])
    for name, checksums in (("ids_s", False), ("ids_sha256_s", True)):
        if cold:
            drop_cache(out)
        else:
            check_split(out, "train", manifest, checksums=False)  # bring every page into the cache
        row[name] = timed(lambda c=checksums: check_split(out, "train", manifest, checksums=c))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=float, default=1e9)
    ap.add_argument("--shard-tokens", type=float, default=1e8)
    ap.add_argument("--dir", help="where to write the shards (default: a temporary folder)")
    ap.add_argument("--threads", default="1,4", help="SCAN_THREADS values to time (default 1,4)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tokens, per_shard = int(args.tokens), int(args.shard_tokens)
    out = Path(tempfile.mkdtemp(prefix="shard-check-", dir=args.dir))
    try:
        t = time.perf_counter()
        manifest = write_shards(out, tokens, per_shard)
        write_s = time.perf_counter() - t
        gb = tokens * 2 / 1e9
        can_drop = drop_cache(out)
        rows = [measure(out, manifest, int(n), cold) for n in args.threads.split(",")
                for cold in ((False, True) if can_drop else (False,))]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    result = {"tokens": tokens, "shards": len(manifest["splits"]["train"]["shards"]), "gigabytes": gb,
              "write_s": write_s, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "python": sys.version.split()[0], "rows": rows}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{tokens:,} tokens in {result['shards']} shards ({gb:.2f} GB) written in {write_s:.1f} s")
    print(f"{'threads':>7} {'cache':>5} {'sizes':>8} {'ids':>8} {'ids+sha256':>11}   per 1B tokens (ids+sha256)")
    for r in rows:
        per_b = r["ids_sha256_s"] * 1e9 / tokens
        print(f"{r['threads']:>7} {r['cache']:>5} {r['sizes_s']:>7.3f}s {r['ids_s']:>7.2f}s {r['ids_sha256_s']:>10.2f}s"
              f"   {per_b:.2f} s ({gb / r['ids_sha256_s']:.2f} GB/s)")


if __name__ == "__main__":
    main()
