"""Batch-1 greedy decoding on CPU: `homegpt sample`'s engine vs transformers vs llama.cpp (f32, f16, q8_0).

    python benchmarks/runtime_speed.py [--json] [--models demo,51m] [--threads 1] [--repeats 3]
        [--prompt-tokens 64] [--new-tokens 256] [--work /tmp/runtime_speed] [--demo-run RUN] [--rebuild]

Why: a homegpt run is exported to transformers and to GGUF (llama.cpp, Ollama, LM Studio); this measures
what a user gives up, in speed and memory, by sampling with homegpt itself, and sets the target for
homegpt's own decoding engine. Every contender decodes the same model (one exported checkpoint), after the
same prompt ids, with the same thread count, and must produce exactly --new-tokens tokens.

Models (built once and cached under --work; --rebuild makes them again):
    demo  the demo's model: the tokenizer and shards `homegpt demo` writes, the shape its sizing rule
          (homegpt/demo.py choose_shape) picks on this machine for its default 280 s budget, trained for
          --demo-train-seconds on the built-in corpus. Its context is raised to 512 (no parameter depends
          on it in the modern architecture) so that prompt + new tokens fit. --demo-run RUN takes an
          existing run instead (new tokens are cut to its context if needed, and said so).
    51m   the seed-51m shape as configs/seed-51m.toml trains it (GPT-2 architecture, 8 layers x 512,
          8 heads, context 1024, vocabulary 50,304, tied head), random weights (seed 0), written as a run
          without training (share/export.py write_run). Its tokenizer has 50,257 tokens, so that
          llama.cpp's output layer, which has the tokenizer's rows only, is as large as homegpt's: the
          built-in corpus alone supports only ~21,000 BPE tokens, so the tokenizer is trained on it plus the
          running Python's standard-library sources (what the tokens are does not change the speed).

Contenders, each in its own subprocess (`--worker NAME`, loaded once, warmed up by one untimed run, then
driven round-robin by this script, so the peak resident memory it reports is its own):
    homegpt        the engine `homegpt sample` / generate/sample.py runs (Scheduler over Engine, one row,
                   greedy, padding ids masked, each token decoded to text by TextStream as generate() does);
                   generate() itself would stop at <|endoftext|>, so the same Sequence is submitted with no
                   end token, which forces exactly --new-tokens tokens
    transformers   AutoModelForCausalLM on the run's transformers export, generate(do_sample=False,
                   max_new_tokens=N, min_new_tokens=N), fp32
    llamacpp_f32, llamacpp_f16, llamacpp_q8_0
                   llama_cpp.Llama on the GGUF export (share/gguf.py) of that type, n_threads =
                   n_threads_batch = --threads: timed through Llama.generate, the token loop that
                   create_completion runs (the same greedy sampler chain, in C), stopped after N tokens so
                   <|endoftext|> cannot end it early; create_completion(max_tokens=N, temperature=0,
                   logit_bias forbidding <|endoftext|>) is timed too, end to end (prefill included), as
                   completion_api_tokens_per_s

Timing: t0 when the call starts (prompt ids in hand), then the moment each new token exists (homegpt's
on_token, a transformers streamer's put, each token llama.cpp's generator yields). The first token comes
out of the prompt's forward pass, so prefill_s = first token - t0 (time to first token) and decode
tokens/s = (N - 1) / (last token - first token): the N - 1 one-position forward passes, prompt processing
excluded. Each contender's median over --repeats round-robin runs (the order rotates every repeat) is
reported. Peak RSS is the contender's process's high-water mark (VmHWM) at its end: imports, loading,
weights, caches, all runs. With --json the last stdout line is one JSON object: the 51m model's homegpt_tokens_per_s,
transformers_tokens_per_s, llamacpp_{f32,f16,q8_0}_tokens_per_s and *_vs_homegpt ratios (> 1: faster
than homegpt) at the top level, every model's details under "models", and the settings.

"Where the time goes" (homegpt, every model): forward hooks time the output layer (lm_head), the blocks
and the rest of each decode step for one extra run, and the output layer's matmul is also timed alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONTENDERS = ("homegpt", "transformers", "llamacpp_f32", "llamacpp_f16", "llamacpp_q8_0")
QUANTS = {"llamacpp_f32": "f32", "llamacpp_f16": "f16", "llamacpp_q8_0": "q8_0"}
MODELS = ("demo", "51m")
# configs/seed-51m.toml: the seed-51m preset with the GPT-2 architecture
SEED_51M = dict(n_layer=8, n_head=8, n_embd=512, block_size=1024, vocab_size=50304, arch="gpt2")
TOKENIZER_51M = 50257  # GPT-2's count: 50,304 rows with the padding to a multiple of 64
DEMO_BUDGET_S = 280.0  # `homegpt demo`'s default --seconds: the budget its sizing rule is asked about
DEMO_CONTEXT = 512
PROTOCOL = "@@runtime_speed@@ "  # a worker's result lines on stdout start with this


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_now_mb() -> float:
    """Current resident memory of this process (VmRSS), MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MB: VmHWM, the high-water mark of this program's own memory.

    Not getrusage's ru_maxrss, which a process started by fork + exec inherits from its parent on Linux (the
    parent's peak is recorded at exec), so every worker would report at least this script's own peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


# --------------------------------------------------------------------------------------------- workers
#
# A worker loads one contender and answers one command per stdin line: "run" (one timed generation),
# "profile" (homegpt: where the time goes), "quit" (its peak RSS). Each answer is one JSON line on the
# original stdout; everything else the libraries print (C code included) goes to stderr.


def timed(t0: float, times: list[float], tokens: list[int], n: int) -> dict:
    if len(tokens) != n or len(times) != n:
        raise RuntimeError(f"produced {len(tokens)} tokens, not {n}")
    decode = times[-1] - times[0]
    return {"prefill_s": times[0] - t0, "decode_s": decode, "decode_tokens_per_s": (n - 1) / decode,
            "e2e_s": times[-1] - t0, "e2e_tokens_per_s": n / (times[-1] - t0), "tokens": tokens}


class HomegptWorker:
    def __init__(self, path: str, ids: list[int], n: int, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        from homegpt.generate.engine import Engine, Sampling, Scheduler, Sequence
        from homegpt.generate.sample import TextStream
        from homegpt.rundir.checkpoint import load_run

        self.import_rss = rss_now_mb()
        self.torch, self.Engine, self.Sampling, self.Scheduler = torch, Engine, Sampling, Scheduler
        self.Sequence, self.TextStream = Sequence, TextStream
        self.run_ = load_run(path, device="cpu")
        self.ids, self.n = ids, n
        self.vocab = self.run_.tokenizer.get_vocab_size()

    def run(self) -> dict:
        stream = self.TextStream(self.run_.tokenizer)  # no end ids, no stop strings: nothing ends the row early
        times: list[float] = []

        def on_token(token: int) -> bool:
            times.append(time.perf_counter())
            stream.add(token)
            return False

        t0 = time.perf_counter()
        with self.run_.autocast:  # what generate()/complete() run: a Scheduler over an Engine
            sched = self.Scheduler(self.Engine(self.run_.model, 1, vocab_limit=self.vocab))
            sched.submit([self.Sequence(self.ids, self.Sampling(temperature=0.0), self.n, on_token=on_token,
                                        penalty_skip=1)])
            sched.drain()
        return timed(t0, times, stream.tokens, self.n)

    def profile(self) -> dict:
        """One decode with forward hooks on the output layer and the blocks; the head's matmul alone."""
        torch, model = self.torch, self.run_.model
        spent = {"head": 0.0, "blocks": 0.0, "attn": 0.0, "mlp": 0.0}
        started: dict[str, float] = {}
        on = [False]

        def hook(name: str):
            def pre(module, args):
                if on[0]:
                    started[name] = time.perf_counter()

            def post(module, args, out):
                if on[0]:
                    spent[name] += time.perf_counter() - started[name]
            return pre, post

        handles = []
        parts = [("head", model.lm_head)] + [("blocks", b) for b in model.transformer.h]
        parts += [("attn", b.attn) for b in model.transformer.h] + [("mlp", b.mlp) for b in model.transformer.h]
        for name, module in parts:
            pre, post = hook(name)
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        engine = self.Engine(model, 1, vocab_limit=self.vocab)
        seq = self.Sequence(self.ids, self.Sampling(temperature=0.0), self.n, penalty_skip=1)
        steps = self.n - 1
        with torch.inference_mode(), self.run_.autocast:
            engine.add(seq)  # prefill, not counted
            on[0] = True
            t = time.perf_counter()
            for _ in range(steps):
                engine.step()
            total = time.perf_counter() - t
            on[0] = False
        for h in handles:
            h.remove()
        # The output layer's matmul alone, hot in a loop: (1, d) x (vocab, d)^T, as decode runs it.
        w = model.lm_head.weight
        x = torch.randn(1, w.shape[1])
        with torch.inference_mode():
            for _ in range(5):
                torch.nn.functional.linear(x, w)
            reps = 50
            t = time.perf_counter()
            for _ in range(reps):
                torch.nn.functional.linear(x, w)
            alone = (time.perf_counter() - t) / reps
        ms = lambda s: round(1000 * s / steps, 3)  # noqa: E731
        head_bytes = w.numel() * w.element_size()
        return {
            "decode_steps": steps,
            "step_ms": ms(total),
            "head_ms": ms(spent["head"]),
            "blocks_ms": ms(spent["blocks"]),
            "attention_ms": ms(spent["attn"]),
            "mlp_ms": ms(spent["mlp"]),
            "other_ms": ms(total - spent["head"] - spent["blocks"]),
            "head_share": round(spent["head"] / total, 3),
            "head_alone_ms": round(1000 * alone, 3),
            "head_weight_mb": round(head_bytes / 2**20, 1),
            "head_alone_gb_per_s": round(head_bytes / alone / 1e9, 2),
            "note": "per decode step (one token), forward hooks around lm_head, each block, its attention and "
                    "MLP; other = embedding, final norm, cache bookkeeping, argmax, Python; head_alone = the "
                    "same matmul timed alone in a hot loop",
        }


class TransformersWorker:
    def __init__(self, path: str, ids: list[int], n: int, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        from transformers import AutoModelForCausalLM
        from transformers.generation.streamers import BaseStreamer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.import_rss = rss_now_mb()
        self.torch, self.n, self.n_prompt = torch, n, len(ids)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.prompt = torch.tensor([ids])
        self.mask = torch.ones_like(self.prompt)
        self.pad = ids[0]  # <|endoftext|>, the export's pad token

        class Clock(BaseStreamer):
            """The moment each new token exists: generate() puts the prompt first, then every new token."""

            def __init__(self) -> None:
                self.times: list[float] = []
                self.puts = 0

            def put(self, value) -> None:
                self.puts += 1
                if self.puts > 1:
                    self.times.append(time.perf_counter())

            def end(self) -> None:
                pass

        self.Clock = Clock

    def run(self) -> dict:
        clock = self.Clock()
        t0 = time.perf_counter()
        with self.torch.inference_mode():
            out = self.model.generate(self.prompt, attention_mask=self.mask, do_sample=False, max_new_tokens=self.n,
                                      min_new_tokens=self.n, pad_token_id=self.pad, streamer=clock)
        return timed(t0, clock.times, out[0, self.n_prompt:].tolist(), self.n)


class LlamaCppWorker:
    def __init__(self, path: str, ids: list[int], n: int, threads: int) -> None:
        from llama_cpp import Llama

        self.import_rss = rss_now_mb()
        self.ids, self.n = ids, n
        n_ctx = -(-(len(ids) + n) // 64) * 64
        self.llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
        self.eot = ids[0]

    def run(self) -> dict:
        llm, times, tokens = self.llm, [], []
        llm.reset()  # the whole prompt is evaluated again (no reuse of the previous run's cached prefix)
        t0 = time.perf_counter()
        gen = llm.generate(self.ids, temp=0.0, repeat_penalty=1.0)
        for token in gen:
            times.append(time.perf_counter())
            tokens.append(int(token))
            if len(tokens) == self.n:
                break
        gen.close()
        out = timed(t0, times, tokens, self.n)
        # The public API, end to end: create_completion, <|endoftext|> forbidden so that it runs to N tokens.
        llm.reset()
        t = time.perf_counter()
        r = llm.create_completion(self.ids, max_tokens=self.n, temperature=0.0, repeat_penalty=1.0,
                                  logit_bias={self.eot: -1e30})
        wall = time.perf_counter() - t
        made = r["usage"]["completion_tokens"]
        out.update(completion_api_s=wall, completion_api_tokens=made, completion_api_tokens_per_s=made / wall)
        return out

    def close(self) -> None:
        self.llm.close()


def worker_main(args) -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever else is printed, by Python or C, goes to stderr
    sys.stdout = sys.stderr

    def say(obj: dict) -> None:
        proto.write(PROTOCOL + json.dumps(obj) + "\n")
        proto.flush()

    ids = json.loads(Path(args.prompt_file).read_text())
    kind = {"homegpt": HomegptWorker, "transformers": TransformersWorker}.get(args.worker, LlamaCppWorker)
    t = time.perf_counter()
    w = kind(args.model_path, ids, args.new_tokens, args.threads)
    load_s = time.perf_counter() - t
    loaded = rss_now_mb()
    warm = w.run()  # warm-up, untimed
    say({"ready": True, "load_s": load_s, "import_rss_mb": w.import_rss, "loaded_rss_mb": loaded,
         "warmup_decode_tokens_per_s": warm["decode_tokens_per_s"]})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            say(w.run())
        elif cmd == "profile":
            say(w.profile())
        elif cmd == "quit":
            if hasattr(w, "close"):
                w.close()
            say({"peak_rss_mb": peak_rss_mb()})
            return 0
    return 0


class Worker:
    """The parent's handle on one worker subprocess."""

    def __init__(self, name: str, model_path: Path, prompt_file: Path, args, log_file: Path) -> None:
        self.name = name
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                   TOKENIZERS_PARALLELISM="false")
        cmd = [sys.executable, __file__, "--worker", name, "--model-path", str(model_path), "--prompt-file",
               str(prompt_file), "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
        self.log_file = log_file
        self.err = open(log_file, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     bufsize=1, env=env)
        self.ready = self._answer()

    def _answer(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL):])
        self.proc.wait()
        self.err.flush()
        tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"worker {self.name} ended (exit {self.proc.returncode}) without an answer:\n{tail}")

    def ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def quit(self) -> dict:
        out = self.ask("quit")
        self.proc.wait(timeout=60)
        self.err.close()
        return out


# --------------------------------------------------------------------------------------------- models


def stamp_of(run_dir: Path) -> str:
    from homegpt.rundir.checkpoint import find_checkpoint

    ckpt = find_checkpoint(run_dir) / "model.safetensors"
    st = ckpt.stat()
    return f"{ckpt.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def build_demo(work: Path, args) -> tuple[Path, dict]:
    """A run of the demo's shape (its own sizing rule), trained briefly with the demo's data and recipe."""
    from homegpt.demo import OVERHEAD_S, choose_shape, demo_config, demo_data
    from homegpt.share.gguf import gguf_refusal
    from homegpt.train.loop import train

    out = work / "demo"
    run_dir = out / "run"
    meta_file = out / "built.json"
    if (run_dir / "run.json").exists() and meta_file.exists() and not args.rebuild:
        return run_dir, json.loads(meta_file.read_text())
    log("[demo] tokenizer and shards as `homegpt demo` writes them")
    _, manifest = demo_data("builtin", out, DEMO_BUDGET_S, log, lambda name: None)
    cfg = demo_config(out / "data")
    cfg.device = "cpu"
    vocab = manifest["model_vocab_size"]
    log("[demo] the demo's sizing rule (times a training step of each candidate shape)")
    cfg, choice = choose_shape(cfg, vocab, manifest["splits"]["train"]["tokens"],
                               lambda: DEMO_BUDGET_S - OVERHEAD_S - 5.0)
    meta = {"chosen_shape": f"{cfg.n_layer} x {cfg.n_embd}, {cfg.n_head} heads", "demo_context": cfg.block_size,
            "sizing_tokens_per_s": round(choice["tokens_per_s"]), "train_seconds": args.demo_train_seconds}
    if gguf_refusal(cfg.model_config(vocab)):  # a ReLU² MLP has no llama.cpp graph
        cfg.mlp = "swiglu"
        meta["mlp_changed"] = "the demo's ReLU² MLP has no llama.cpp graph: SwiGLU here"
    cfg.block_size = max(cfg.block_size, DEMO_CONTEXT)
    cfg.micro_batch = max(1, cfg.batch_tokens // cfg.block_size)  # the demo's 2,048-token batches
    cfg.max_seconds = args.demo_train_seconds
    cfg.max_steps = 100_000
    cfg.eval_interval = 100
    cfg.sample_tokens = 0
    log(f"[demo] training {meta['chosen_shape']} (context {cfg.block_size}) for {args.demo_train_seconds:.0f} s")
    result = train(cfg, run_dir, force=True, progress=False, log=log)
    meta.update(trained_tokens=result.get("tokens_trained"), val_bpb=result.get("val_bpb"))
    meta_file.write_text(json.dumps(meta, indent=1) + "\n")
    return run_dir, meta


def tokenizer_texts_51m() -> tuple[list[str], dict]:
    """The built-in corpus's training documents plus the running Python's standard-library sources."""
    import sysconfig

    from homegpt.data.sources import load_corpus

    texts = list(load_corpus("builtin").train)
    root = Path(sysconfig.get_paths()["stdlib"])
    extra = 0
    for p in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "site-packages" in p.parts or p.parent.name.startswith("test"):
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        texts.append(text)
        extra += len(text.encode("utf-8"))
    return texts, {"tokenizer_text": f"built-in corpus + {extra / 1e6:.1f} MB of Python {platform.python_version()} "
                                     f"standard-library sources"}


def build_51m(work: Path, args) -> tuple[Path, dict]:
    """The seed-51m shape with random weights, as a run (no training)."""
    import torch

    from homegpt.data.sources import Corpus
    from homegpt.data.tokenizer import train_tokenizer_on
    from homegpt.model.gpt import GPT, GPTConfig
    from homegpt.rundir.checkpoint import model_state
    from homegpt.share.export import write_run

    out = work / "51m"
    run_dir = out / "run"
    meta_file = out / "built.json"
    if (run_dir / "run.json").exists() and meta_file.exists() and not args.rebuild:
        return run_dir, json.loads(meta_file.read_text())
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    log(f"[51m] tokenizer: byte-level BPE, {TOKENIZER_51M:,} tokens")
    texts, meta = tokenizer_texts_51m()
    t = time.perf_counter()
    tok = train_tokenizer_on(Corpus("builtin+stdlib", texts, []), TOKENIZER_51M)
    meta["tokenizer_seconds"] = round(time.perf_counter() - t, 1)
    tok.save(str(run_dir / "tokenizer.json"))
    if tok.get_vocab_size() < SEED_51M["vocab_size"] - 63:
        log(f"[51m] warning: the tokenizer has only {tok.get_vocab_size():,} tokens: llama.cpp's output layer will be "
            f"smaller than homegpt's {SEED_51M['vocab_size']:,} rows")
    log("[51m] random weights (seed 0), written as a run")
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SEED_51M))
    write_run(run_dir, model.config, model_state(model))
    meta["weights"] = "random init (seed 0), fp32, untrained"
    meta_file.write_text(json.dumps(meta, indent=1) + "\n")
    return run_dir, meta


def exports(run_dir: Path, out: Path, contenders: list[str], rebuild: bool) -> dict[str, Path]:
    """Each contender's model file or folder, exported from the run (cached while the checkpoint is the same)."""
    from homegpt.rundir.checkpoint import load_run
    from homegpt.share.export import write_transformers_model
    from homegpt.share.gguf import export_gguf

    stamp = stamp_of(run_dir)
    paths: dict[str, Path] = {"homegpt": run_dir}
    for name in contenders:
        if name == "homegpt":
            continue
        dest = out / ("hf" if name == "transformers" else f"gguf-{QUANTS[name]}")
        stamp_file = dest / ".runtime_speed_stamp"
        cached = (not rebuild and stamp_file.is_file() and json.loads(stamp_file.read_text())["stamp"] == stamp)
        if cached:
            paths[name] = Path(json.loads(stamp_file.read_text())["path"])
            continue
        log(f"  export for {name}")
        if name == "transformers":
            write_transformers_model(load_run(run_dir, device="cpu"), dest)
            path = dest
        else:
            path = Path(export_gguf(run_dir, dest, quant=QUANTS[name], force=True)["gguf"])
        stamp_file.write_text(json.dumps({"stamp": stamp, "path": str(path)}))
        paths[name] = path
    return paths


def prompt_ids(run_dir: Path, n: int) -> list[int]:
    """<|endoftext|> (as every homegpt prompt starts) + the first n - 1 tokens of the built-in held-out text."""
    from homegpt.data.sources import load_corpus
    from homegpt.data.tokenizer import EOT, load_tokenizer

    tok = load_tokenizer(run_dir / "tokenizer.json")
    text = " ".join(load_corpus("builtin").val)[:20000]
    ids = tok.encode(text).ids[: n - 1]
    if len(ids) < n - 1:
        raise SystemExit(f"the held-out text has only {len(ids)} tokens")
    return [tok.token_to_id(EOT)] + ids


# --------------------------------------------------------------------------------------------- one model


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def bench_model(name: str, args) -> dict:
    from homegpt.data.tokenizer import load_tokenizer
    from homegpt.rundir.info import read_run_info

    work = Path(args.work)
    if name == "demo" and args.demo_run:
        run_dir, meta = Path(args.demo_run), {"run": str(Path(args.demo_run).resolve())}
        out = work / f"demo-run-{abs(hash(str(run_dir.resolve()))) % 10**8}"
    else:
        run_dir, meta = (build_demo if name == "demo" else build_51m)(work, args)
        out = run_dir.parent
    out.mkdir(parents=True, exist_ok=True)
    info = read_run_info(run_dir)
    block = info["model"]["block_size"]
    n_new = args.new_tokens
    if args.prompt_tokens + n_new > block:
        n_new = block - args.prompt_tokens
        log(f"[{name}] context {block}: new tokens cut to {n_new}")
        meta["new_tokens_cut_to_context"] = n_new
    model_args = argparse.Namespace(**dict(vars(args), new_tokens=n_new))
    log(f"[{name}] exports")
    paths = exports(run_dir, out, args.contenders, args.rebuild)
    ids = prompt_ids(run_dir, args.prompt_tokens)
    prompt_file = out / "prompt.json"
    prompt_file.write_text(json.dumps(ids))
    tok_vocab = load_tokenizer(run_dir / "tokenizer.json").get_vocab_size()

    log(f"[{name}] starting {len(args.contenders)} workers (load + one warm-up run each)")
    workers = {}
    for c in args.contenders:
        workers[c] = Worker(c, paths[c], prompt_file, model_args, out / f"worker-{c}.log")
        log(f"  {c:14s} ready: load {workers[c].ready['load_s']:.1f} s, warm-up "
            f"{workers[c].ready['warmup_decode_tokens_per_s']:.1f} tokens/s")
    runs: dict[str, list[dict]] = {c: [] for c in args.contenders}
    for r in range(args.repeats):
        k = r % len(args.contenders)
        order = args.contenders[k:] + args.contenders[:k]  # rotate, so no contender always runs first
        for c in order:
            res = workers[c].ask("run")
            runs[c].append(res)
            log(f"  repeat {r + 1}/{args.repeats} {c:14s} {res['decode_tokens_per_s']:8.1f} tokens/s decode, "
                f"prefill {1000 * res['prefill_s']:.0f} ms")
    breakdown = workers["homegpt"].ask("profile") if "homegpt" in workers else None
    ends = {c: w.quit() for c, w in workers.items()}

    contenders = {}
    ref = runs["homegpt"][0]["tokens"] if "homegpt" in runs else None
    for c in args.contenders:
        rs = runs[c]
        med = lambda key, rs=rs: statistics.median(x[key] for x in rs)  # noqa: E731
        d = {
            "tokens_per_s": round(med("decode_tokens_per_s"), 2),
            "decode_tokens_per_s_repeats": [round(x["decode_tokens_per_s"], 2) for x in rs],
            "prefill_ms": round(1000 * med("prefill_s"), 1),
            "e2e_tokens_per_s": round(med("e2e_tokens_per_s"), 2),
            "peak_rss_mb": round(ends[c]["peak_rss_mb"], 1),
            "rss_after_imports_mb": round(workers[c].ready["import_rss_mb"], 1),
            "rss_after_load_mb": round(workers[c].ready["loaded_rss_mb"], 1),
            "load_s": round(workers[c].ready["load_s"], 2),
            "new_tokens": len(rs[0]["tokens"]),
        }
        if "completion_api_tokens_per_s" in rs[0]:
            d["completion_api_tokens_per_s"] = round(med("completion_api_tokens_per_s"), 2)
            d["completion_api_tokens"] = rs[0]["completion_api_tokens"]
        if ref is not None and c != "homegpt":
            d["same_tokens_as_homegpt"] = common_prefix(ref, rs[0]["tokens"])
        if c.startswith("llamacpp"):
            d["file_mb"] = round(paths[c].stat().st_size / 2**20, 1)
        contenders[c] = d
    from homegpt.model.gpt import GPTConfig, count_params

    cfg = GPTConfig.from_dict(info["model"])
    result = {
        "shape": f"{cfg.n_layer} layers x {cfg.n_embd}, {cfg.n_head} heads, context {cfg.block_size}, {cfg.arch}"
                 f" ({cfg.mlp}, {'tied' if cfg.tie_embeddings else 'untied'} head)",
        "params": count_params(cfg)["total"],
        "model_vocab_size": cfg.vocab_size,
        "tokenizer_vocab_size": tok_vocab,
        "gguf_vocab_rows": tok_vocab,
        "prompt_tokens": len(ids),
        "new_tokens": n_new,
        "contenders": contenders,
        "homegpt_breakdown": breakdown,
        "built": meta,
    }
    h = contenders.get("homegpt", {}).get("tokens_per_s")
    for c in args.contenders:
        if c != "homegpt" and h:
            result[f"{c}_vs_homegpt"] = round(contenders[c]["tokens_per_s"] / h, 3)
    return result


# --------------------------------------------------------------------------------------------- main


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    ap.add_argument("--models", default="demo,51m", help="comma-separated: demo, 51m (default both)")
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma-separated subset of {CONTENDERS}")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for every contender (default 1: steadier on a shared machine)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per contender, round-robin (median)")
    ap.add_argument("--prompt-tokens", type=int, default=64, help="prompt length, <|endoftext|> included")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--work", default="/tmp/runtime_speed", help="where built runs and exports are cached")
    ap.add_argument("--demo-run", default="", help="use this run as the demo model instead of building one")
    ap.add_argument("--demo-train-seconds", type=float, default=60.0,
                    help="training time of the built demo-shaped run (default 60)")
    ap.add_argument("--rebuild", action="store_true", help="build the runs and exports again")
    ap.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    ap.add_argument("--prompt-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for m in args.models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r}: use {', '.join(MODELS)}")
    for c in args.contenders:
        if c not in CONTENDERS:
            ap.error(f"unknown contender {c!r}: use {', '.join(CONTENDERS)}")
    if args.prompt_tokens < 2 or args.new_tokens < 2 or args.repeats < 1 or args.threads < 1:
        ap.error("--prompt-tokens and --new-tokens must be >= 2, --repeats and --threads >= 1")
    import torch

    torch.set_num_threads(args.threads)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    out = log if args.json else print
    load_before = uptime()
    t0 = time.perf_counter()
    models = {m: bench_model(m, args) for m in args.models}
    import llama_cpp
    import transformers

    result: dict = {}
    top = "51m" if "51m" in models else args.models[0]
    for c in args.contenders:
        result[f"{c}_tokens_per_s"] = models[top]["contenders"][c]["tokens_per_s"]
    for c in args.contenders:
        if f"{c}_vs_homegpt" in models[top]:
            result[f"{c}_vs_homegpt"] = models[top][f"{c}_vs_homegpt"]
    result.update(
        top_level_model=top,
        models=models,
        threads=args.threads,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        tokens_per_s="decode: (new tokens - 1) / (last token - first token), prompt processing excluded; median",
        torch=torch.__version__,
        transformers=transformers.__version__,
        llama_cpp=llama_cpp.__version__,
        machine=machine(),
        load_before=load_before,
        load_after=uptime(),
        seconds=round(time.perf_counter() - t0, 1),
        date=time.strftime("%Y-%m-%d"),
    )
    for name, m in models.items():
        out(f"\n{name}: {m['shape']}, {m['params']:,} parameters, vocab {m['model_vocab_size']:,} "
            f"(tokenizer {m['tokenizer_vocab_size']:,}); {m['prompt_tokens']}-token prompt + {m['new_tokens']} new "
            f"tokens, {args.threads} thread(s), median of {args.repeats}")
        out(f"  {'contender':14s} {'decode tok/s':>12s} {'vs homegpt':>10s} {'prefill ms':>10s} {'peak RSS MB':>11s}")
        for c, d in m["contenders"].items():
            ratio = m.get(f"{c}_vs_homegpt", 1.0)
            out(f"  {c:14s} {d['tokens_per_s']:12.1f} {ratio:10.2f} {d['prefill_ms']:10.1f} {d['peak_rss_mb']:11.1f}")
        b = m["homegpt_breakdown"]
        if b:
            out(f"  homegpt per token: {b['step_ms']:.2f} ms = head {b['head_ms']:.2f} + blocks {b['blocks_ms']:.2f} "
                f"+ other {b['other_ms']:.2f}; the head alone {b['head_alone_ms']:.2f} ms "
                f"({b['head_weight_mb']} MB at {b['head_alone_gb_per_s']} GB/s)")
    out(f"load: before {load_before}; after {result['load_after']}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
