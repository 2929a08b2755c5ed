"""CLI for chat: `homegpt sft` (fine-tune a run on conversations) and `homegpt sample RUN --chat`.

`homegpt sample RUN --chat` is a terminal chat that keeps the conversation: one user message per stdin
line, the answer streamed as it is generated. The prompt is the run's chat format (data/chatml.py: its
chat_template.jinja, which `homegpt sft` writes, else the plain-text one a base model gets from `homegpt
serve`); the answer ends at <|im_end|> (or the template's eos_token, <|endoftext|>, a stop string) or after
--max-new-tokens. When the conversation outgrows the context, its oldest turns are left out of the prompt
(the system message stays), and stderr says so.
"""

from __future__ import annotations

import sys

from homegpt.cli.common import CONFIG_FLAGS_HELP, STEP_HELP, emit, stdin_lines, step_arg, write
from homegpt.errors import UserError, check_text


def cmd_sft(args, overrides: list[str]) -> int:
    from homegpt.chat.sft import sft
    from homegpt.data.sources import source_spec
    from homegpt.train.config import parse_overrides
    from homegpt.train.loop import EXIT_PREEMPTED

    data = source_spec(args.data, args.hf_config, args.split, args.text_column, args.revision)
    result = sft(args.run, data, args.out, parse_overrides(overrides), step=args.step, epochs=args.epochs,
                 too_long=args.too_long, resume=args.resume, force=args.force, prepare_only=args.prepare_only,
                 progress=not args.no_progress)
    if not result:  # a non-zero rank under torchrun
        return 0
    out = result.get("run_dir")
    if args.prepare_only:
        result = {k: v for k, v in result.items() if k != "manifest"}
        lines = [f"wrote {out}: train it with homegpt train {out} --resume (or under torchrun)"]
    elif not result.get("finished", True):
        lines = [f"stopped at step {result['step']}: continue with homegpt sft {args.run} --out {out} --resume"]
    else:
        lines = [f"run directory: {out}",
                 f"held-out conversations: loss {result['val_loss']:.4f} nats per assistant token | perplexity "
                 f"{result['val_perplexity']:.2f} | {result['val_bpb']:.3f} bits/byte",
                 f"chat with it: homegpt sample {out} --chat"]
    emit(result, args.json, lines)
    return EXIT_PREEMPTED if result.get("preempted") else 0


def register(sub) -> None:
    from homegpt.data.sources import add_source_flags

    s = sub.add_parser("sft", help="chat fine-tuning: train a run on conversations (loss on the assistant's turns); "
                                   "any config key can be given as --key value",
                       epilog=CONFIG_FLAGS_HELP)
    s.add_argument("run", help="the base run (a pretraining run, or an SFT run to continue from)")
    s.add_argument("--data", default="builtin", help="conversations: file:PATH (.jsonl / .json / .parquet with a "
                   "messages list, or prompt and completion), hf:NAME, or builtin (the synthetic Bible task)")
    add_source_flags(s)
    s.add_argument("--out", help="the SFT run directory (default RUN-sft)")
    s.add_argument("--step", type=step_arg, default=None, help="the base's " + STEP_HELP)
    s.add_argument("--epochs", type=float, default=1.0, help="passes over the training conversations (default 1; "
                   "--max-steps or --max-tokens instead set the length)")
    s.add_argument("--too-long", choices=("drop", "cut"), default="drop",
                   help="a conversation longer than the context: drop it (default) or cut it to the context")
    s.add_argument("--resume", action="store_true", help="continue the SFT run in --out (or start it)")
    s.add_argument("--force", action="store_true", help="replace a run already in --out")
    s.add_argument("--prepare-only", action="store_true", help="write the SFT run without training it (then "
                   "homegpt train RUN2 --resume, e.g. under torchrun)")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sft, takes_overrides=True)


# --------------------------------------------------------------------------------------------- chat


def chat_session(run, opts, system: str | None = None, as_json: bool = False) -> int:
    """The terminal chat of `homegpt sample RUN --chat` (see the module doc)."""
    from homegpt.chat.session import answer, fit_prompt
    from homegpt.data.chatml import load_chat_format

    fmt = load_chat_format(run.path)
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    turn = 0
    if sys.stdin.isatty():
        kind = "its chat template" if fmt.kind == "template" else "the plain User:/Assistant: format (no template)"
        print(f"chatting with {run.path} ({kind}); Ctrl-D ends", file=sys.stderr)
    for text in stdin_lines("you> "):
        if not text.strip():
            continue
        messages = history + [{"role": "user", "content": text}]
        try:
            check_text(text, "this message")
            ids, ends, stops, dropped = fit_prompt(run, fmt, messages, opts.max_new_tokens)
        except UserError as e:  # one message too long for the context: say so, keep chatting
            print(f"homegpt: error: {e}", file=sys.stderr)
            continue
        if dropped:
            print(f"(the {dropped} oldest messages no longer fit the context: left out)", file=sys.stderr)
        reply, finish, n = answer(run, ids, ends, stops, opts, opts.seed + turn, None if as_json else write)
        turn += 1
        history = messages + [{"role": "assistant", "content": reply}]
        if as_json:
            emit({"user": text, "assistant": reply, "finish_reason": finish, "new_tokens": n}, True, [],
                 ensure_ascii=False)
        else:
            write("\n")
    return 0
