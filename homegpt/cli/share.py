"""CLI for using and sharing a trained model: `homegpt sample`, `export`, `import` and `push`."""

from __future__ import annotations

import sys
from pathlib import Path

from homegpt.cli.common import STEP_HELP, emit, stdin_lines, step_arg, write
from homegpt.errors import UserError, check_text


def _prompts(args) -> list[str]:
    """--prompt (repeatable) and --prompts-file (one prompt per line; blank lines are prompts too)."""
    prompts = list(args.prompt or [])
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise UserError(f"prompts file {path} does not exist")
        try:
            prompts += path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UserError(f"prompts file {path} is not UTF-8 text") from None
    for i, prompt in enumerate(args.prompt or []):
        check_text(prompt, "--prompt" if len(args.prompt) == 1 else f"--prompt number {i + 1}")
    return prompts or [""]


def _options(args):
    from homegpt.generate.sample import SampleOptions

    opts = SampleOptions(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.repetition_penalty,
                         tuple(args.stop or ()), args.seed)
    opts.validate()
    if args.num_samples <= 0:
        raise UserError(f"--num-samples must be positive, got {args.num_samples}")
    return opts


def cmd_sample(args) -> int:
    from homegpt.generate.sample import encode_prompt, generate, generate_many
    from homegpt.rundir.checkpoint import load_run

    opts = _options(args)
    if args.chat and (args.interactive or args.prompt or args.prompts_file):
        raise UserError("--chat reads the conversation from stdin: leave out --prompt, --prompts-file and "
                        "--interactive")
    if args.system is not None and not args.chat:
        raise UserError("--system goes with --chat")
    if args.system is not None:
        check_text(args.system, "--system")
    prompts = [] if args.interactive or args.chat else _prompts(args)
    run = load_run(args.run, device=args.device, step=args.step)
    if args.chat:
        from homegpt.cli.chat import chat_session

        return chat_session(run, opts, args.system, args.json)
    for p in prompts:  # every prompt is checked before anything is printed
        encode_prompt(run.tokenizer, p, run.model.config.block_size, opts.max_new_tokens)
    if args.interactive:
        return _interactive(run, opts, args)
    if not args.json and len(prompts) == 1 and args.num_samples == 1:  # streamed as it is produced
        write(prompts[0])
        with run.autocast:
            generate(run.model, run.tokenizer, prompts, opts, on_text=write)
        write("\n")
        return 0
    with run.autocast:
        done = generate_many(run.model, run.tokenizer, prompts, opts, args.num_samples, args.batch_size)
    result = {"results": [c.to_dict() for c in done]}
    if len(prompts) == 1:  # the single-prompt shape earlier versions printed
        result.update(prompt=prompts[0], samples=[c.text for c in done])
    emit(result, args.json, ["\n\n".join(f"{c.prompt}{c.text}" for c in done)], ensure_ascii=False)
    return 0


def _interactive(run, opts, args) -> int:
    """One prompt per stdin line until EOF; each answer streamed (or one JSON line each with --json)."""
    from homegpt.generate.sample import encode_prompt, generate

    n = 0
    for prompt in stdin_lines("> "):
        try:
            encode_prompt(run.tokenizer, prompt, run.model.config.block_size, opts.max_new_tokens)
        except UserError as e:  # one bad prompt does not end the session
            print(f"homegpt: error: {e}", file=sys.stderr)
            continue
        seeds = [opts.seed + n]  # a new seed per prompt, so repeating a prompt gives another sample
        n += 1
        with run.autocast:
            if args.json:
                c = generate(run.model, run.tokenizer, [prompt], opts, seeds=seeds)[0]
                emit(c.to_dict(), True, [], ensure_ascii=False)
            else:
                write(prompt)
                generate(run.model, run.tokenizer, [prompt], opts, seeds=seeds, on_text=write)
                write("\n")
    return 0


def _card_options(args) -> dict:
    return {"license": args.license, "language": args.language, "hardware": args.hardware,
            "cost_usd": args.cost_usd, "model_name": args.name}


def cmd_export(args) -> int:
    if args.format == "gguf":
        return _export_gguf(args)
    if args.quant is not None:
        raise UserError("--quant goes with --format gguf (a transformers export is always fp32)")
    from homegpt.share.export import export_run

    r = export_run(args.run, args.out_dir, force=args.force, step=args.step, card_options=_card_options(args))
    emit(r, args.json, [f"wrote {r['out_dir']}: {r['architecture']}, {r['params']:,} parameters, step {r['step']}, "
                        f"{len(r['files'])} files ({', '.join(r['files'])})"])
    return 0


def _export_gguf(args) -> int:
    from homegpt.share.gguf import DEFAULT_QUANT, export_gguf

    r = export_gguf(args.run, args.out_dir, quant=args.quant or DEFAULT_QUANT, force=args.force, step=args.step,
                    name=args.name)
    emit(r, args.json, [f"wrote {r['gguf']} ({r['architecture']}, {r['quant']}, {r['params']:,} parameters, step "
                        f"{r['step']}, {r['bytes']:,} bytes) and {r['modelfile']}",
                        f"llama.cpp: llama-cli -m {r['gguf']}   Ollama: cd {r['out_dir']} && ollama create NAME -f "
                        f"Modelfile && ollama run NAME"])
    return 0


def cmd_import(args) -> int:
    from homegpt.share.export import import_hf

    r = import_hf(args.hf_dir, args.out, force=args.force)
    hint = "" if r["data_dir"] else " --data-dir PREPARED_DATA"
    emit(r, args.json, [f"wrote run {r['run_dir']} ({r['params']:,} parameters, step {r['step']}): "
                        f"homegpt sample {r['run_dir']} | homegpt train {r['run_dir']} --resume{hint} --max-steps N"])
    return 0


def cmd_push(args) -> int:
    from homegpt.share.hub import push_run

    r = push_run(args.run, args.repo_id, private=args.private, dry_run=args.dry_run, step=args.step,
                 card_options=_card_options(args), gguf=args.gguf)
    if args.json:
        emit(r, True, [])
        return 0
    if args.dry_run:
        print(f"dry run: would upload to {r['url']} ({'private' if r['private'] else 'public'}):")
        for f in r["files"]:
            print(f"  {f['path']:<26} {f['bytes']:>12,} bytes")
        print("(a real push needs a write token: `hf auth login` or HF_TOKEN)")
    else:
        print(f"pushed {len(r['files'])} files to {r['url']}")
    return 0


def _add_card_flags(p) -> None:
    p.add_argument("--step", type=step_arg, default=None, help=STEP_HELP)
    p.add_argument("--name", default=None, help="model name in the card (default: the repo or folder name)")
    p.add_argument("--license", default="mit", help="license in the card's metadata (default mit)")
    p.add_argument("--language", default="en", help="language code in the card's metadata (default en)")
    p.add_argument("--hardware", default=None, help="what it was trained on, for the card (e.g. '2-core CPU')")
    p.add_argument("--cost-usd", type=float, default=None, help="training cost in US dollars, for the card")
    p.add_argument("--json", action="store_true")


def register(sub) -> None:
    s = sub.add_parser("sample", help="generate text from a run (batched prompts, stop strings, streamed)")
    s.add_argument("run")
    s.add_argument("--prompt", action="append", help="a prompt; repeat for several (batched)")
    s.add_argument("--prompts-file", help="a file with one prompt per line")
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=50)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (1 = off)")
    s.add_argument("--stop", action="append", help="end the output before this string; repeatable")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-samples", type=int, default=1)
    s.add_argument("--batch-size", type=int, default=16, help="rows per batch when sampling many prompts")
    s.add_argument("--interactive", action="store_true",
                   help="read prompts from stdin, one per line, until EOF (line k samples with seed --seed + k)")
    s.add_argument("--chat", action="store_true", help="a chat that keeps the conversation: one message per stdin "
                   "line, in the run's chat template (homegpt sft writes one)")
    s.add_argument("--system", help="--chat: a system message to start the conversation with")
    s.add_argument("--step", type=step_arg, default=None, help=STEP_HELP)
    s.add_argument("--device", default="auto")
    s.add_argument("--json", action="store_true", help="JSON output (one object per prompt with --interactive)")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("export", help="write a run as a Hugging Face transformers folder with a model card, or "
                       "as one GGUF file for llama.cpp, Ollama and LM Studio")
    e.add_argument("run")
    e.add_argument("out_dir")
    e.add_argument("--format", choices=("transformers", "gguf"), default="transformers",
                   help="transformers (default): config, safetensors, tokenizer, card; gguf: one .gguf file and an "
                   "Ollama Modelfile (modern SwiGLU runs as qwen3, GPT-2 runs as gpt2)")
    e.add_argument("--quant", default=None, help="--format gguf: the matrices' type, f32, f16 (default), bf16 or "
                   "q8_0 (norms stay f32)")
    e.add_argument("--force", action="store_true", help="replace an export already in OUT_DIR")
    _add_card_flags(e)
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("import", help="turn a transformers GPT-2 or Qwen3 folder into a homegpt run")
    i.add_argument("hf_dir")
    i.add_argument("--out", required=True, help="run directory to create")
    i.add_argument("--force", action="store_true", help="replace a run already in --out")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_import)

    p = sub.add_parser("push", help="export a run and upload it to the Hugging Face Hub")
    p.add_argument("run")
    p.add_argument("repo_id", help="OWNER/NAME on the Hub")
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded; no network, no token")
    p.add_argument("--gguf", nargs="?", const="f16", default=None, metavar="QUANT",
                   help="also upload the model as one GGUF file (f32, f16 = the default, bf16 or q8_0) with an "
                   "Ollama Modelfile, for llama.cpp, Ollama and LM Studio")
    _add_card_flags(p)
    p.set_defaults(func=cmd_push)
