"""`homegpt serve` under load: aggregate generated tokens/s at 1, 4 and 16 concurrent streaming clients, and
time to first token, against one server process on this machine.

    python benchmarks/serve_throughput.py [--json] [--seconds 12] [--max-tokens 100] [--threads N]
                                          [--client aiohttp|openai]

--threads N is passed to `homegpt serve --threads N` (default: serve's own, one thread per core but one).

The model is made here, not downloaded: a randomly initialised homegpt GPT of the `cpu-small` preset (modern
architecture, 4 layers, 4 heads, 128 wide, 128-token context, vocabulary 2048) with a byte-level BPE
tokenizer trained on seeded pseudo-words (as benchmarks/sample_throughput.py does), saved as a run. Speed
does not depend on what the weights learned. The server is `python -m homegpt serve RUN --max-batch 16` on a
loopback port (its HTTP process and the engine process it spawns).

The clients (one process, one event loop) send streamed completions back to back for --seconds per
concurrency level: homegpt's default sampling (temperature 0.8, top-k 50), `ignore_eos` so every request
generates exactly --max-tokens tokens, distinct prompts and seeds. They are plain aiohttp requests whose
server-sent events are split and json-parsed here (--client aiohttp, the default; vLLM's serving benchmark
measures the same way), or the official `openai` client (--client openai), which spends ~0.5 ms of CPU per
streamed token building its pydantic objects: clients and server share the machine's cores, as they would
on a laptop, so on a 2-core machine that CPU is taken from the server being measured (a third of the
machine at 16 clients). The tests drive the server with the official client; this measures the server.

Measured per level: tokens/s = completion tokens of the requests finished / wall time from the first request
to the last one finishing; time to first token = request sent -> first streamed text; the CPU seconds the
server's two processes and the clients used (how the cores were shared; other work on the machine shows as
neither). scaling_16 = tokens_per_s_16 / tokens_per_s_1. Targets (issue 12): scaling_16 >= 5 and
ttft_p50_16_s <= 1. With --json the last stdout line is one JSON object (tokens_per_s_1, tokens_per_s_4,
tokens_per_s_16, scaling_4, scaling_16, ttft_p50_1_s, ttft_p50_4_s, ttft_p50_16_s, client, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

LEVELS = (1, 4, 16)
WORDS = ["the", "king", "said", "unto", "them", "and", "it", "came", "to", "pass", "in", "those", "days"]


def build_run(work: Path) -> Path:
    import torch
    from sample_throughput import pseudo_text

    from homegpt.data.sources import Corpus
    from homegpt.data.tokenizer import train_tokenizer_on
    from homegpt.model.gpt import GPT, PRESETS, GPTConfig
    from homegpt.share.export import write_run

    cfg = GPTConfig(**{**PRESETS["cpu-small"], "arch": "modern"})
    tok = train_tokenizer_on(Corpus("pseudo-words", pseudo_text(), []), cfg.vocab_size)
    run = work / "cpu-small"
    run.mkdir()
    tok.save(str(run / "tokenizer.json"))
    torch.manual_seed(0)
    model = GPT(cfg)
    tied = {"lm_head.weight"} if cfg.tie_embeddings else set()
    write_run(run, cfg, {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied})
    return run


def start_server(run: Path, log: Path, threads: int | None) -> tuple[subprocess.Popen, str]:
    flags = ["--threads", str(threads)] if threads else []
    proc = subprocess.Popen([sys.executable, "-m", "homegpt", "serve", str(run), "--port", "0", "--device", "cpu",
                             "--max-batch", "16", *flags], stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (m := re.search(r"at (http://127\.0\.0\.1:\d+)/", log.read_text())):
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.1)
    url = m.group(1)
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=5).read()
            return proc, url
        except OSError:
            time.sleep(0.1)


def request_body(i: int, max_tokens: int) -> dict:
    """Request i: a distinct prompt and seed, homegpt's default sampling, exactly max_tokens new tokens."""
    return {"model": "cpu-small", "prompt": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(6)),
            "max_tokens": max_tokens, "stream": True, "temperature": 0.8, "seed": i, "top_k": 50,
            "ignore_eos": True, "stream_options": {"include_usage": True}}


async def one_request_aiohttp(session, url: str, i: int, max_tokens: int) -> tuple[float, int]:
    """(seconds to the first text, completion tokens) of one streamed completion, SSE parsed by hand."""
    t0 = time.perf_counter()
    first, tokens = None, 0
    async with session.post(url + "/v1/completions", json=request_body(i, max_tokens)) as resp:
        if resp.status != 200:
            raise SystemExit(f"HTTP {resp.status}: {await resp.text()}")
        async for line in resp.content:  # one server-sent event per "data: ..." line
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (first if first is not None else time.perf_counter() - t0), tokens


async def one_request(client, i: int, max_tokens: int) -> tuple[float, int]:
    """(seconds to the first text, completion tokens) of one streamed completion, through the openai client."""
    b = request_body(i, max_tokens)
    t0 = time.perf_counter()
    first, tokens = None, 0
    stream = await client.completions.create(model=b["model"], prompt=b["prompt"], max_tokens=b["max_tokens"],
                                             stream=True, temperature=b["temperature"], seed=b["seed"],
                                             stream_options=b["stream_options"],
                                             extra_body={"top_k": b["top_k"], "ignore_eos": b["ignore_eos"]})
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - t0
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return (first if first is not None else time.perf_counter() - t0), tokens


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its children (the server's engine process)."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def level(url: str, clients: int, seconds: float, max_tokens: int, kind: str = "aiohttp") -> dict:
    if kind == "openai":
        import openai

        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        send = lambda i: one_request(client, i, max_tokens)  # noqa: E731
    else:
        import aiohttp

        client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                       timeout=aiohttp.ClientTimeout(total=600))
        send = lambda i: one_request_aiohttp(client, url, i, max_tokens)  # noqa: E731
    counter = iter(range(10**9))
    results: list[tuple[float, int]] = []
    start = time.perf_counter()

    async def worker() -> None:
        while time.perf_counter() - start < seconds:
            results.append(await send(next(counter)))

    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - start
    await client.close()
    tokens = sum(t for _, t in results)
    return {"clients": clients, "requests": len(results), "tokens": tokens, "seconds": round(wall, 2),
            "tokens_per_s": tokens / wall, "ttft_p50_s": statistics.median(f for f, _ in results)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seconds", type=float, default=12.0, help="load time per concurrency level (default 12)")
    ap.add_argument("--max-tokens", type=int, default=100, help="tokens per request (default 100)")
    ap.add_argument("--threads", type=int, default=None, help="the server's --threads (default: torch's)")
    ap.add_argument("--client", choices=("aiohttp", "openai"), default="aiohttp",
                    help="aiohttp with SSE parsed here (default), or the official openai client")
    args = ap.parse_args(argv)
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine skews everything: recorded
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(Path(tmp))
        proc, url = start_server(run, Path(tmp) / "server.log", args.threads)
        try:
            asyncio.run(level(url, 2, 2.0, args.max_tokens, args.client))  # warm-up: allocators, first-request costs
            levels = {}
            for c in LEVELS:
                server0, client0 = cpu_seconds(proc.pid), time.process_time()
                levels[c] = r = asyncio.run(level(url, c, args.seconds, args.max_tokens, args.client))
                # How the cores were shared: the server's and the clients' CPU time over the level's wall time.
                r["server_cpu_s"] = round(cpu_seconds(proc.pid) - server0, 2)
                r["client_cpu_s"] = round(time.process_time() - client0, 2)
                log(f"{c:>2} clients: {r['tokens_per_s']:7.1f} tokens/s aggregate ({r['requests']} requests, "
                    f"{r['seconds']} s), time to first token p50 {r['ttft_p50_s'] * 1000:.0f} ms; CPU: server "
                    f"{r['server_cpu_s']} s, clients {r['client_cpu_s']} s")
            health = json.loads(urllib.request.urlopen(url + "/health", timeout=10).read())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    base = levels[1]["tokens_per_s"]
    result = {f"tokens_per_s_{c}": round(levels[c]["tokens_per_s"], 1) for c in LEVELS}
    result.update({f"scaling_{c}": round(levels[c]["tokens_per_s"] / base, 2) for c in LEVELS if c > 1})
    result.update({f"ttft_p50_{c}_s": round(levels[c]["ttft_p50_s"], 3) for c in LEVELS})
    result.update(levels={str(c): levels[c] for c in LEVELS}, peak_running=health["peak_running"],
                  max_tokens=args.max_tokens, seconds_per_level=args.seconds, server_threads=args.threads,
                  client=args.client,
                  model="cpu-small (modern, random weights)", cpu=platform.processor() or platform.machine(),
                  cores=os.cpu_count(), load_avg_1m_before=load_before, load_avg_1m=round(os.getloadavg()[0], 2),
                  targets={"scaling_16": 5.0, "ttft_p50_16_s": 1.0},
                  meets_targets=result["scaling_16"] >= 5.0 and result["ttft_p50_16_s"] <= 1.0)
    log(f"16 clients / 1 client: {result['scaling_16']:.2f}x (target >= 5x); time to first token p50 at 16 "
        f"clients: {result['ttft_p50_16_s']:.3f} s (target <= 1 s)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
