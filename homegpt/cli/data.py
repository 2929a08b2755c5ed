"""`homegpt tokenizer` and `homegpt prepare`: from a corpus to a tokenizer and checksummed token shards."""

from __future__ import annotations

from homegpt.cli.common import emit
from homegpt.data.sources import add_source_flags, count_arg
from homegpt.errors import UserError, plural


def cmd_tokenizer(args) -> int:
    from homegpt.data.sources import source_spec
    from homegpt.data.tokenizer import train_tokenizer

    data = source_spec(args.data, args.hf_config, args.split, args.text_column, args.revision)
    info = train_tokenizer(data, args.vocab_size, args.out, force=args.force, sample_bytes=args.sample_bytes,
                           sample_docs=args.sample_docs, seed=args.seed, pre_tokenizer=args.pre_tokenizer)
    lines = [f"wrote {info['path']}: {info['vocab_size']:,} tokens (model vocabulary {info['model_vocab_size']:,}, "
             f"{info['pre_tokenizer']} pre-tokenizer), "
             f"{info['bytes_per_token']:.3f} bytes/token on held-out text; trained on "
             f"{plural(info['sample_documents'], 'document')} ({info['sample_bytes'] / 1e6:,.1f} MB) sampled from "
             f"{info['scanned_bytes'] / 1e6:,.1f} MB"]
    emit(info, args.json, lines)
    return 0


def cmd_prepare(args) -> int:
    import time

    from homegpt.data.prepare import prepare
    from homegpt.data.shards import verify
    from homegpt.data.sources import source_spec

    if args.tokenizer is None:
        if not args.verify:
            raise UserError("prepare needs --tokenizer DIR (or --verify to check the data in --out)")
        r = verify(args.out)
        emit(r, args.json, [f"{args.out}: all {r['shards']} shards ({r['tokens']:,} tokens) match the manifest"
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
    train, val = s["train"], s["val"]
    lines = [f"wrote {args.out}: train {train['tokens']:,} tokens ({plural(train['documents'], 'document')}, "
             f"{plural(n_shards, 'shard')}), val {val['tokens']:,} tokens ({plural(val['documents'], 'document')}), "
             f"{m['dtype']}; {plural(m['duplicates_removed'], 'duplicate')} removed"]
    emit(dict(m, seconds=round(seconds, 2)), args.json, lines)
    return 0


def register(sub) -> None:
    t = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on a seeded sample of a corpus")
    t.add_argument("--data", default="builtin", help="source: builtin, file:PATH or hf:NAME")
    add_source_flags(t)
    t.add_argument("--vocab-size", type=int, default=8192)
    t.add_argument("--out", required=True, help="folder for tokenizer.json")
    t.add_argument("--sample-bytes", type=count_arg, help="train on a random sample of this many bytes "
                   "(default 100,000,000), drawn from at most 10 times as much")
    t.add_argument("--sample-docs", type=count_arg, help="train on a random sample of this many documents instead")
    t.add_argument("--seed", type=int, default=0, help="the sample's and the held-out split's seed (default 0)")
    t.add_argument("--pre-tokenizer", default="qwen2", choices=("qwen2", "gpt2"),  # tokenizer.PRE_TOKENIZERS
                   help="how text is cut before BPE: qwen2 (default; Qwen2's regex, digits one at a time: "
                   "llama.cpp's `qwen2` and Ollama give the same ids) or gpt2 (GPT-2's regex, llama.cpp's `gpt-2`)")
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
