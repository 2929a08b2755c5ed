"""Preparation throughput: `homegpt prepare` on all cores vs one process of HF tokenizers' encode_batch.

The corpus is the built-in one (one document per chapter) repeated to --mb megabytes of JSON Lines (default
200 MB; a speed test, so repetition is fine). One byte-level BPE tokenizer is trained on the built-in corpus
and used by both sides:

  baseline   HF `tokenizers` Tokenizer.encode_batch in batches of 256 documents, in this one process (with
             the library's own thread pool, as homegpt's earlier prepare ran), on the first --baseline-mb of the
             same documents (the corpus repeats, so the rate is the same text's rate)
  prepare    `python -m homegpt prepare --workers N` as a subprocess on the whole corpus: reading, encoding,
             shards, checksums and manifest included; peak memory is the largest sum of the proportional set
             size (PSS; RSS where PSS is unavailable) of the process and its workers, sampled every 50 ms

Also times each encoder on one core over the baseline text and checks tiktoken's ids equal tokenizers'.

    python benchmarks/prepare_throughput.py [--json] [--mb 200] [--workers N] [--vocab-size 16384]
                                            [--baseline-mb 16] [--memory-mb 1024]

With --json the last line is one JSON object with ratio (prepare MB/s / baseline MB/s) and peak_rss_mb.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from homegpt.train.meter import process_tree_memory_mb


class PeakSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.done = pid, every, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, process_tree_memory_mb(self.pid))
            time.sleep(self.every)


def make_corpus(path: Path, mb: float) -> tuple[int, int]:
    from homegpt.data.sources import load_corpus

    corpus = load_corpus("builtin")
    docs = corpus.train + corpus.val
    lines = [json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs]
    text_bytes = sum(len(d.encode("utf-8")) for d in docs)
    target, written, n_docs, text = mb * 1e6, 0, 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while text < target:
            for line in lines:
                f.write(line)
            written += 1
            n_docs += len(docs)
            text += text_bytes
    return n_docs, text


def first_docs(path: Path, mb: float) -> list[str]:
    docs, size = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["text"]
            docs.append(doc)
            size += len(doc.encode("utf-8"))
            if size >= mb * 1e6:
                break
    return docs


def time_encoders(tok_path: Path, docs: list[str]) -> dict:
    """MB/s of each encoder on one core over the same documents, and whether tiktoken's ids are identical."""
    from tokenizers import Tokenizer

    from homegpt.data.fastenc import build_tiktoken, tokenizer_spec
    from homegpt.data.tokenizer import EOT

    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    tok = Tokenizer.from_file(str(tok_path))
    result = {}

    def run(name, fn):
        t = time.perf_counter()
        ids = fn()
        result[name] = round(nbytes / 1e6 / (time.perf_counter() - t), 2)
        return ids

    hf = run("hf_encode_batch_threads_mb_s",
             lambda: [e.ids for i in range(0, len(docs), 256) for e in tok.encode_batch(docs[i:i + 256])])
    enc = build_tiktoken(tokenizer_spec(tok_path), tok.token_to_id(EOT))
    tt = run("tiktoken_one_core_mb_s", lambda: [enc.encode(d, allowed_special="all") for d in docs])
    result["tiktoken_identical"] = hf == tt
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=200.0, help="corpus size in MB of text (default 200)")
    ap.add_argument("--workers", type=int, default=None, help="prepare --workers (default: all cores)")
    ap.add_argument("--vocab-size", type=int, default=16384)
    ap.add_argument("--baseline-mb", type=float, default=16.0, help="MB of the corpus the baseline encodes")
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from homegpt.data.prepare import default_workers
    from homegpt.data.tokenizer import train_tokenizer

    workers = args.workers or default_workers()
    with tempfile.TemporaryDirectory(prefix="homegpt-prep-bench-") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        n_docs, text_bytes = make_corpus(corpus, args.mb)
        train_tokenizer("builtin", args.vocab_size, tmp / "tok")
        tok_path = tmp / "tok" / "tokenizer.json"
        print(f"corpus: {text_bytes / 1e6:,.1f} MB of text, {n_docs:,} documents, "
              f"{corpus.stat().st_size / 1e6:,.1f} MB of JSON Lines; tokenizer: {args.vocab_size:,} tokens",
              file=sys.stderr)

        docs = first_docs(corpus, args.baseline_mb)
        nbytes = sum(len(d.encode("utf-8")) for d in docs)
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_path))
        t = time.perf_counter()
        base_tokens = sum(len(e.ids) for i in range(0, len(docs), 256) for e in tok.encode_batch(docs[i:i + 256]))
        base_s = time.perf_counter() - t
        baseline = {"mb_s": nbytes / 1e6 / base_s, "tokens_s": base_tokens / base_s, "mb": nbytes / 1e6}
        print(f"baseline  HF encode_batch, one process: {baseline['mb_s']:.2f} MB/s, "
              f"{baseline['tokens_s']:,.0f} tokens/s (on {baseline['mb']:.1f} MB)", file=sys.stderr)

        cmd = [sys.executable, "-m", "homegpt", "prepare", "--data", f"file:{corpus}", "--tokenizer", str(tok_path),
               "--out", str(tmp / "data"), "--workers", str(workers), "--memory-mb", str(args.memory_mb),
               "--no-progress", "--json"]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler = PeakSampler(proc.pid)
        sampler.start()
        out, err = proc.communicate()
        wall = time.perf_counter() - t
        sampler.done.set()
        sampler.join()
        if proc.returncode != 0:
            sys.exit(f"prepare failed: {err.strip()}")
        m = json.loads(out.strip().splitlines()[-1])
        tokens = m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]
        prep = {"mb_s": text_bytes / 1e6 / wall, "tokens_s": tokens / wall, "seconds": wall}
        print(f"prepare   {workers} worker(s), encoder {m['encoder']}: {prep['mb_s']:.2f} MB/s, "
              f"{prep['tokens_s']:,.0f} tokens/s ({wall:.1f} s wall, everything included), "
              f"peak memory {sampler.peak:.0f} MiB (bound {args.memory_mb})", file=sys.stderr)
        encoders = time_encoders(tok_path, docs[: max(1, len(docs) // 4)])
        print(f"encoders  {encoders}", file=sys.stderr)

    ratio = prep["mb_s"] / baseline["mb_s"]
    print(f"ratio     {ratio:.2f}x (target >= 3 on 2 cores)")
    result = {
        "ratio": round(ratio, 2),
        "peak_rss_mb": round(sampler.peak, 1),
        "prepare_mb_s": round(prep["mb_s"], 2),
        "prepare_tokens_s": round(prep["tokens_s"]),
        "prepare_seconds": round(prep["seconds"], 2),
        "baseline_mb_s": round(baseline["mb_s"], 2),
        "baseline_tokens_s": round(baseline["tokens_s"]),
        "corpus_mb": round(text_bytes / 1e6, 1),
        "tokens": tokens,
        "workers": workers,
        "memory_mb": args.memory_mb,
        "vocab_size": args.vocab_size,
        "encoder": m["encoder"],
        "encoders": encoders,
        "cpu_count": os.cpu_count(),
        "machine": f"{platform.system()} {platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
    }
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
