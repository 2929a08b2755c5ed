"""The `homegpt` command: a thin layer over the Python API, one subcommand per pipeline stage.

Bad input raises UserError anywhere below; here it becomes one line on stderr and exit code 2.
With --json, the last line on stdout is one JSON object; progress and logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from homegpt import __version__, chat_cli, plan_cli, serve_cli, share_cli
from homegpt.errors import UserError
from homegpt.sources import add_source_flags, count_arg

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(EXIT_USAGE, f"homegpt: error: {message} (see {self.prog} --help)\n")


def _emit(result: dict, as_json: bool, text_lines: list[str]) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        print("\n".join(text_lines))


def cmd_demo(args) -> int:
    from homegpt.demo import run_demo
    from homegpt.sources import source_spec

    data = source_spec(args.data, args.hf_config, args.split, args.text_column, args.revision)
    result = run_demo(data, args.out, seconds=args.seconds, force=args.force, device=args.device,
                      progress=not args.no_progress)
    lines = [
        f"run directory: {result['run_dir']}",
        f"held-out loss {result['val_loss']:.4f} nats/token | perplexity {result['val_perplexity']:.2f} | "
        f"{result['val_bpb']:.3f} bits/byte",
        f"{result['params']:,} parameters, {result['tokens_trained']:,} tokens, {result['seconds']:.0f} s",
    ]
    _emit(result, args.json, lines)
    return 0


def cmd_tokenizer(args) -> int:
    from homegpt.sources import source_spec
    from homegpt.tokenizer import train_tokenizer

    data = source_spec(args.data, args.hf_config, args.split, args.text_column, args.revision)
    info = train_tokenizer(data, args.vocab_size, args.out, force=args.force, sample_bytes=args.sample_bytes,
                           sample_docs=args.sample_docs, seed=args.seed)
    lines = [f"wrote {info['path']}: {info['vocab_size']:,} tokens (model vocabulary {info['model_vocab_size']:,}), "
             f"{info['bytes_per_token']:.3f} bytes/token on held-out text; trained on {info['sample_documents']:,} "
             f"documents ({info['sample_bytes'] / 1e6:,.1f} MB) sampled from {info['scanned_bytes'] / 1e6:,.1f} MB"]
    _emit(info, args.json, lines)
    return 0


def cmd_prepare(args) -> int:
    import time

    from homegpt.prepare import prepare, verify
    from homegpt.sources import source_spec

    if args.tokenizer is None:
        if not args.verify:
            raise UserError("prepare needs --tokenizer DIR (or --verify to check the data in --out)")
        r = verify(args.out)
        _emit(r, args.json, [f"{args.out}: all {r['shards']} shards ({r['tokens']:,} tokens) match the manifest"
                             + ("" if r["checksums"] else " in size (this older folder has no checksums)")])
        return 0
    data = source_spec(args.data, args.hf_config, args.split, args.text_column, args.revision)
    t0 = time.perf_counter()
    m = prepare(data, args.tokenizer, args.out, force=args.force, workers=args.workers, max_tokens=args.max_tokens,
                dedup=args.dedup, seed=args.seed, shard_tokens=args.shard_tokens, memory_mb=args.memory_mb,
                encoder=args.encoder, progress=not (args.no_progress or args.json))
    seconds = time.perf_counter() - t0
    if args.verify:
        verify(args.out)
    s = m["splits"]
    n_shards = len(s["train"]["shards"])
    lines = [f"wrote {args.out}: train {s['train']['tokens']:,} tokens ({s['train']['documents']:,} documents, "
             f"{n_shards} shard{'s' if n_shards != 1 else ''}), val {s['val']['tokens']:,} tokens "
             f"({s['val']['documents']:,} documents), {m['dtype']}; {m['duplicates_removed']:,} duplicates removed"]
    _emit(dict(m, seconds=round(seconds, 2)), args.json, lines)
    return 0


def cmd_train(args, overrides: list[str]) -> int:
    from homegpt.config import load_config, parse_overrides
    from homegpt.train import EXIT_PREEMPTED, train

    config_path, out = args.config, args.out
    if config_path is not None and Path(config_path).is_dir():  # `homegpt train RUN --resume`
        out = out or config_path
        config_path = str(Path(config_path) / "config.toml")
    if config_path is None and args.resume and out:
        config_path = str(Path(out) / "config.toml")
    if config_path is None:
        raise UserError("give a config file (homegpt train CONFIG.toml) or --resume RUN")
    cfg = load_config(config_path, parse_overrides(overrides))
    if out is None:
        out = str(Path("runs") / Path(config_path).stem)
    result = train(cfg, out, resume=args.resume, force=args.force, progress=not args.no_progress)
    if not result:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    if not result.get("finished", True):
        _emit(result, args.json, [f"stopped at step {result['step']}: continue with homegpt train {out} --resume"])
        return EXIT_PREEMPTED if result.get("preempted") else 0
    lines = [f"run directory: {out}",
             f"held-out loss {result['val_loss']:.4f} | perplexity {result['val_perplexity']:.2f} | "
             f"{result['val_bpb']:.3f} bits/byte after {result['tokens_trained']:,} tokens"]
    _emit(result, args.json, lines)
    return 0


def cmd_eval(args) -> int:
    from homegpt.sources import source_spec

    if args.tasks is not None:
        from homegpt.tasks import format_table, parse_task_names, run_tasks

        if args.data or args.scope:
            raise UserError("--tasks scores the harness's tasks: leave out --data, --whole and --held-out")
        r = run_tasks(args.run, parse_task_names(args.tasks), args.num_fewshot, args.limit, args.include_path,
                      args.batch_size, args.device, args.step)
        _emit(r, args.json, [*format_table(r), f"wrote {r['path']}"])
        return 0
    from homegpt.evaluate import evaluate_run

    if args.num_fewshot is not None or args.limit is not None or args.include_path is not None:
        raise UserError("--num-fewshot, --limit and --include-path go with --tasks")
    data = source_spec(args.data, args.hf_config, args.split, args.text_column, args.revision) if args.data else None
    r = evaluate_run(args.run, data, args.batch_size, args.device, args.step, args.scope, progress=True)
    lines = [r["scored"],
             f"loss {r['loss']:.4f} nats/token | perplexity {r['perplexity']:.3f} | {r['bpb']:.4f} bits/byte"]
    _emit(r, args.json, lines)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="homegpt", description="Create your own GPT from scratch.")
    p.add_argument("--version", action="version", version=f"homegpt {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

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

    t = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on a seeded sample of a corpus")
    t.add_argument("--data", default="builtin", help="source: builtin, file:PATH or hf:NAME")
    add_source_flags(t)
    t.add_argument("--vocab-size", type=int, default=8192)
    t.add_argument("--out", required=True, help="folder for tokenizer.json")
    t.add_argument("--sample-bytes", type=count_arg, help="train on a random sample of this many bytes "
                   "(default 100,000,000), drawn from at most 10 times as much")
    t.add_argument("--sample-docs", type=count_arg, help="train on a random sample of this many documents instead")
    t.add_argument("--seed", type=int, default=0, help="the sample's and the held-out split's seed (default 0)")
    t.add_argument("--force", action="store_true")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_tokenizer)

    pr = sub.add_parser("prepare", help="encode a corpus into train/val token shards (resumable, parallel)")
    pr.add_argument("--data", default="builtin", help="source: builtin, file:PATH or hf:NAME")
    add_source_flags(pr)
    pr.add_argument("--tokenizer", help="tokenizer.json or its folder")
    pr.add_argument("--out", required=True, help="folder for the shards (an interrupted prepare there resumes)")
    pr.add_argument("--workers", type=int, help="encoder processes (default: all cores)")
    pr.add_argument("--max-tokens", type=count_arg, help="stop after the document that brings the training "
                    "split to this many tokens")
    pr.add_argument("--dedup", action="store_true", help="drop exact duplicate documents (by hash)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the held-out document choice (default 0)")
    pr.add_argument("--shard-tokens", type=count_arg, default=100_000_000, help="tokens per shard (default 1e8)")
    pr.add_argument("--memory-mb", type=count_arg, help="bound on the memory of the whole process tree, in MiB "
                    "(default 1024, or what --workers need)")
    pr.add_argument("--encoder", default="auto", choices=("auto", "tiktoken", "hf"),
                    help="auto: tiktoken where it gives the same ids as tokenizers (checked), else tokenizers")
    pr.add_argument("--verify", action="store_true", help="re-hash every shard against the manifest "
                    "(alone, without --tokenizer: just check the data in --out)")
    pr.add_argument("--force", action="store_true", help="start over, replacing prepared data in --out")
    pr.add_argument("--no-progress", action="store_true")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_prepare)

    tr = sub.add_parser("train", help="train a GPT from a TOML config; any config key can be given as --key value")
    tr.add_argument("config", nargs="?", help="CONFIG.toml, or a run directory to resume")
    tr.add_argument("--out", help="run directory (default runs/CONFIG-NAME)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--force", action="store_true", help="start over in a folder that holds another run")
    tr.add_argument("--no-progress", action="store_true")
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(func=cmd_train, takes_overrides=True)

    e = sub.add_parser("eval", help="loss, perplexity and bits per byte of a run on text; or lm-eval tasks")
    e.add_argument("run")
    e.add_argument("--data", default=None, help="score this source: every document of it (the run's own "
                   "source: its held-out split)")
    add_source_flags(e)
    scope = e.add_mutually_exclusive_group()
    scope.add_argument("--whole", dest="scope", action="store_const", const="whole",
                       help="score every document of the source")
    scope.add_argument("--held-out", dest="scope", action="store_const", const="held-out",
                       help="score only the source's held-out documents")
    e.add_argument("--tasks", help="lm-evaluation-harness tasks, comma-separated (needs homegpt[eval])")
    e.add_argument("--num-fewshot", type=int, help="--tasks: examples in each prompt (default: the task's)")
    e.add_argument("--limit", type=int, help="--tasks: at most N examples per task (a quick look, not a score)")
    e.add_argument("--include-path", help="--tasks: a folder of your own task YAML files")
    e.add_argument("--batch-size", type=int, default=8, help="windows (or requests) per forward pass (default 8)")
    e.add_argument("--step", type=share_cli.step_arg, default=None, help=share_cli.STEP_HELP)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    # Stages with several subcommands register their own: sharing (sample/export/import/push), chat fine-tuning
    # (sft), serving, planning.
    share_cli.register(sub)
    chat_cli.register(sub)
    serve_cli.register(sub)
    plan_cli.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args, rest = parser.parse_known_args(argv)
    try:
        if getattr(args, "takes_overrides", False):
            return args.func(args, rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args.func(args)
    except UserError as e:
        print(f"homegpt: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("homegpt: interrupted", file=sys.stderr)
        return 130
