"""CLI for using and sharing a trained model: `homegpt sample` (and later export / import / push)."""

from __future__ import annotations

import json
import sys


def cmd_sample(args) -> int:
    from homegpt.sample import sample_run

    stream = None if args.json else (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    texts = sample_run(args.run, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                       args.seed, args.num_samples, args.device, on_text=stream)
    if args.json:
        print(json.dumps({"prompt": args.prompt, "samples": texts}))
    return 0


def register(sub) -> None:
    s = sub.add_parser("sample", help="generate text from a run (KV cache, streamed)")
    s.add_argument("run")
    s.add_argument("--prompt", default="")
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=50)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-samples", type=int, default=1)
    s.add_argument("--device", default="auto")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sample)
