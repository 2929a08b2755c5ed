"""`homegpt demo`: the whole pipeline on a small corpus, sized for a time budget (demo.py)."""

from __future__ import annotations

from homegpt.cli.common import STARTED, emit
from homegpt.data.sources import add_source_flags


def cmd_demo(args) -> int:
    from homegpt.data.sources import source_spec
    from homegpt.demo import run_demo

    data = source_spec(args.data, args.hf_config, args.split, args.text_column, args.revision)
    result = run_demo(data, args.out, seconds=args.seconds, force=args.force, device=args.device,
                      progress=not args.no_progress, started=STARTED)
    lines = [
        f"run directory: {result['run_dir']}",
        f"held-out loss {result['val_loss']:.4f} nats/token | perplexity {result['val_perplexity']:.2f} | "
        f"{result['val_bpb']:.3f} bits/byte",
        f"{result['params']:,} parameters, {result['tokens_trained']:,} tokens, {result['seconds']:.0f} s",
    ]
    emit(result, args.json, lines)
    return 0


def register(sub) -> None:
    d = sub.add_parser("demo", help="the whole pipeline on a small corpus in a few minutes")
    d.add_argument("--data", default="builtin", help="source: builtin (default), file:PATH or hf:NAME")
    add_source_flags(d)
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--seconds", type=float, default=280.0, help="wall-time budget for the whole demo")
    d.add_argument("--device", default="auto")
    d.add_argument("--force", action="store_true", help="replace an earlier demo in --out")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    d.set_defaults(func=cmd_demo)
