"""Which demo shape learns most per FLOP? Equal-compute comparison of small GPTs on the built-in corpus.

    python benchmarks/demo_shapes.py [--flops 1.5e13] [--threads 1] [--json]

Each variant starts from the demo's config (homegpt.demo.demo_config), trains for the same number of
FLOPs (6N + attention per token, so tokens = flops / flops_per_token) and reports held-out bits per byte
and tokens/s. Quality at equal FLOPs does not depend on machine load; tokens/s does, so compare speeds
only within one quiet run. This is the evidence behind the demo's sizing rule and batch size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = {
    "4x192 (batch 4096)": {"n_layer": 4, "n_embd": 192, "batch_tokens": 4096, "micro_batch": 32},
    "4x128 (batch 4096)": {"n_layer": 4, "n_embd": 128, "batch_tokens": 4096, "micro_batch": 32},
    "6x128 (batch 4096)": {"n_layer": 6, "n_embd": 128, "batch_tokens": 4096, "micro_batch": 32},
    "4x128 (batch 2048)": {"n_layer": 4, "n_embd": 128, "batch_tokens": 2048, "micro_batch": 16},
}


def main() -> None:
    from homegpt.data.prepare import prepare
    from homegpt.data.tokenizer import train_tokenizer
    from homegpt.demo import DEMO_VOCAB, demo_config
    from homegpt.model.gpt import flops_per_token
    from homegpt.train.loop import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--flops", type=float, default=1.5e13)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_tokenizer("builtin", DEMO_VOCAB, root / "tok")
        prepare("builtin", root / "tok", root / "data")
        for name, over in VARIANTS.items():
            if args.only and name not in args.only.split(","):
                continue
            cfg = demo_config(root / "data")
            for key, value in over.items():
                setattr(cfg, key, value)
            cfg.n_head = cfg.n_embd // 32
            mcfg = cfg.model_config(DEMO_VOCAB)
            cfg.max_steps = int(args.flops / flops_per_token(mcfg)) // cfg.batch_tokens
            cfg.eval_interval, cfg.sample_tokens = cfg.max_steps, 0
            t = time.perf_counter()
            r = train(cfg, root / "run", force=True, progress=False, log=lambda m: None)
            rows.append({"variant": name, "params": r["params"], "tokens": r["tokens_trained"],
                         "val_bpb": round(r["val_bpb"], 4), "tokens_per_s": round(r["train_tokens_per_s"]),
                         "wall_s": round(time.perf_counter() - t)})
            if not args.json:
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        print(json.dumps({"flops": args.flops, "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
