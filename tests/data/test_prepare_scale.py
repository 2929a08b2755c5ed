"""prepare at scale, as a real command: killed mid-way and rerun, and memory under its bound.

Both run `python -m homegpt prepare` as a subprocess on corpora made here from the built-in corpus.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from homegpt.data.sources import load_corpus
from homegpt.train.meter import process_tree_memory_mb


def _prepare_cmd(data: str, tok: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "homegpt", "prepare", "--data", data, "--tokenizer", str(tok), "--out", str(out),
            "--no-progress", "--json", *extra]


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory) -> Path:
    """~20 MB in every kind of file: JSON Lines (zstd, with duplicates), parquet, and big .txt files streamed
    in pieces (so a commit can fall in the middle of a document)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    corpus = load_corpus("builtin")
    docs = corpus.train + corpus.val
    d = tmp_path_factory.mktemp("mixed")
    lines = "".join(json.dumps({"text": doc}) + "\n" for doc in docs + docs[:300])
    (d / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    pq.write_table(pa.table({"text": docs[::-1]}), d / "b.parquet", row_group_size=200)
    for i in range(3):
        (d / f"c{i}.txt").write_text("\n\n".join(docs[i::2]) * 2, encoding="utf-8")
    return d


def test_killed_prepare_reruns_to_byte_identical_shards(mixed_corpus, tokenizer_dir, tmp_path):
    data = f"file:{mixed_corpus}"
    args = ("--shard-tokens", "300000", "--dedup", "--workers", "2")
    reference = tmp_path / "reference"
    subprocess.run(_prepare_cmd(data, tokenizer_dir, reference, *args), check=True, capture_output=True,
                   timeout=300)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_prepare_cmd(data, tokenizer_dir, out, *args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not ((out / "train-00002.bin").exists() and (out / ".prepare-state.json").exists()):
        assert proc.poll() is None, "prepare finished before it could be killed: make the corpus bigger"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the process and its workers, with no chance to clean up
    proc.wait()
    assert not (out / "manifest.json").exists()
    done = subprocess.run(_prepare_cmd(data, tokenizer_dir, out, *args[:-1], "1"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    assert _files(out) == _files(reference)  # every shard, the manifest, the tokenizer: byte for byte
    m = json.loads((reference / "manifest.json").read_text())
    assert len(m["splits"]["train"]["shards"]) > 5 and m["duplicates_removed"] >= 300


def test_memory_stays_under_the_bound_on_a_corpus_three_times_bigger(tokenizer_dir, tmp_path):
    pytest.importorskip("psutil")
    bound = 64  # MiB, for the whole process tree
    text = "\n\n".join(load_corpus("builtin").train).encode()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    size = 0
    for i in range(4):  # four big text files, each streamed block by block
        with open(corpus / f"part{i}.txt", "wb") as f:
            while size < (i + 1) * 3 * bound * 2**20 / 4:
                f.write(text)
                size += len(text)
    assert size > 3 * bound * 2**20
    proc = subprocess.Popen(_prepare_cmd(f"file:{corpus}", tokenizer_dir, tmp_path / "out", "--workers", "1",
                                         "--memory-mb", str(bound), "--shard-tokens", "1e7"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process_tree_memory_mb(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate(timeout=300)
    stop.set()
    sampler.join()
    assert proc.returncode == 0, err
    m = json.loads(out.strip().splitlines()[-1])
    assert m["splits"]["train"]["bytes"] + m["splits"]["val"]["bytes"] == size
    assert 20 < peak[0] < bound, f"peak {peak[0]:.0f} MiB against a bound of {bound} MiB"
