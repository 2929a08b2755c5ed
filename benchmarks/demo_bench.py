"""`homegpt demo` end to end: wall time and held-out bits per byte, optionally against a plain baseline.

    python benchmarks/demo_bench.py [--data builtin] [--baseline] [--load N] [--keep DIR] [--json]

Runs the real command (`homegpt demo --json`) in a subprocess and times it. Targets on 2 CPU cores and the
built-in corpus: at most 300 s wall (issue 2), held-out bits per byte at most 1.47 (issue 10; 1.8 before),
and the wall time within ~5% of the demo's own budget (`homegpt demo --seconds`, default 280) whether the
machine is quiet or loaded: --load N runs N busy processes (fp32 matmuls on one thread each) beside it.

--baseline also trains the reference point the target was set against, a plain GPT-2 of about 4M
parameters (4 layers, 256 wide, 8,192-token vocabulary, context 256, lr 1e-3, 16K-token batches, cosine
schedule), for the same training seconds as the demo, and reports the ratio of the two bits-per-byte
values (bits per byte does not depend on the tokenizer, so the two compare fairly).

--keep DIR writes the demo (and the baseline) into DIR and keeps them (DIR/demo/run is then the demo's run,
e.g. a base for benchmarks/chat_task.py); by default they go to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_demo(data: str, out: Path) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "homegpt", "demo", "--data", data, "--out", str(out), "--json",
                           "--no-progress", "--force"], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"demo failed: {proc.stderr.strip().splitlines()[-1]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def run_baseline(data: str, out: Path, seconds: float) -> dict:
    from homegpt.data.prepare import prepare
    from homegpt.data.shards import read_manifest
    from homegpt.data.tokenizer import train_tokenizer
    from homegpt.train.config import TrainConfig
    from homegpt.train.loop import measure_throughput, train

    train_tokenizer(data, 8192, out / "tok", force=True)
    prepare(data, out / "tok", out / "data", force=True)
    vocab = read_manifest(out / "data")["model_vocab_size"]
    cfg = TrainConfig(data_dir=str(out / "data"), preset="", n_layer=4, n_head=4, n_embd=256, block_size=256,
                      batch_tokens=16384, micro_batch=16, lr=1e-3, warmup_steps=10, eval_interval=10_000,
                      sample_tokens=0, arch="gpt2")
    tps = measure_throughput(cfg, vocab, steps=2)["tokens_per_s"]
    cfg.max_steps = max(20, int(tps * seconds / cfg.batch_tokens))
    return train(cfg, out / "run", force=True, progress=False, log=lambda m: None)


BURNER = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a @ a\n"
DEMO_BUDGET_S = 280.0  # homegpt demo's default --seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="builtin")
    ap.add_argument("--baseline", action="store_true", help="also train the plain 4M GPT-2 reference")
    ap.add_argument("--load", type=int, default=0, help="busy processes running beside the demo")
    ap.add_argument("--keep", help="write the runs into this directory and keep them")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    burners = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(args.load)]
    try:
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            result = measure(args, Path(args.keep))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                result = measure(args, Path(tmp))
    finally:
        for b in burners:
            b.kill()
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32s} {value}")


def measure(args, tmp: Path) -> dict:
    """Run the demo (and the baseline) in tmp; the result row."""
    demo = run_demo(args.data, tmp / "demo")
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "data": args.data,
        "demo_wall_s": round(demo["wall_s"], 1),
        "demo_val_bpb": round(demo["val_bpb"], 4),
        "demo_val_loss": round(demo["val_loss"], 4),
        "demo_params": demo["params"],
        "demo_tokens_trained": demo["tokens_trained"],
        "demo_train_s": demo["train_seconds"],
        "load_processes": args.load,
        "wall_over_budget": round(demo["wall_s"] / DEMO_BUDGET_S, 3),
        "target_met": demo["wall_s"] <= 300 and demo["val_bpb"] <= 1.47,
        "wall_target_met": demo["wall_s"] <= 300,  # the 1.47 bits/byte target is the built-in corpus's only
        "demo_phases": demo.get("phases"),  # seconds of startup, tokenizer, prepare, sizing, train, samples
    }
    if args.baseline:
        base = run_baseline(args.data, tmp / "baseline", demo["train_seconds"])
        result.update(baseline_val_bpb=round(base["val_bpb"], 4), baseline_params=base["params"],
                      baseline_tokens_trained=base["tokens_trained"],
                      bpb_ratio_demo_over_baseline=round(demo["val_bpb"] / base["val_bpb"], 4))
    return result


if __name__ == "__main__":
    main()
