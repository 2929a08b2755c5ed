"""Shared fixtures: a small real corpus, its tokenizer, prepared shards and a tiny trained run.

Everything is built once per test session through the real code paths, small enough for 2 CPU cores.
"""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# The best CPU matmul rate measured (meter.cpu_peak) is kept in a cache: the tests' own, not the user's.
os.environ.setdefault("HOMEGPT_CACHE", tempfile.mkdtemp(prefix="homegpt-cache-"))


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """40 chapters of the built-in corpus as 40 .txt files (enough documents for a document split)."""
    from homegpt.data.sources import load_corpus

    corpus = load_corpus("builtin")
    d = tmp_path_factory.mktemp("corpus")
    for i, doc in enumerate(corpus.train[:40]):
        (d / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
    return d


@pytest.fixture(scope="session")
def source(corpus_dir):
    return f"file:{corpus_dir}"


@pytest.fixture(scope="session")
def tokenizer_dir(source, tmp_path_factory):
    from homegpt.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(source, 512, out, force=True)
    return out


@pytest.fixture(scope="session")
def data_dir(source, tokenizer_dir, tmp_path_factory):
    from homegpt.data.prepare import prepare

    out = tmp_path_factory.mktemp("data")
    prepare(source, tokenizer_dir, out, force=True)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Decoding tiny models is per-op latency; on a shared 2-core machine, two threads per op wait on each
    other (measured: attention 10 us on one thread, ~10 ms on two under load). Correctness is the point here."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(data_dir, **overrides):
    from homegpt.train.config import TrainConfig

    values = dict(
        data_dir=str(data_dir), preset="cpu-tiny", batch_tokens=512, micro_batch=4, max_steps=6,
        warmup_steps=2, eval_interval=3, eval_tokens=1024, sample_tokens=8, seed=7, device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def trained_run(data_dir, tmp_path_factory):
    from homegpt.train.loop import train

    out = tmp_path_factory.mktemp("run") / "run"
    result = train(tiny_config(data_dir), out, progress=False, log=lambda m: None)
    return out, result
