"""The `plan`, `sweep` and `fit` subcommands: register(subparsers) adds them to the main CLI.

Each handler returns an exit code; bad input raises UserError, which the main CLI prints as one line
(exit 2). With --json the last line on stdout is one JSON object.
"""

from __future__ import annotations

import json
from pathlib import Path

from homegpt.cli.common import emit
from homegpt.data.sources import add_source_flags, source_spec
from homegpt.errors import UserError, plural


def register(sub) -> None:
    p = sub.add_parser("plan", help="choose model size, tokens, batch and lr for a compute or dollar budget",
                       description="Budget -> compute-optimal N and D under a scaling law -> a homegpt shape, "
                                   "the recipe that trains it (optimizer, schedule, batch, learning rates), "
                                   "hours, cost and the text you need. See docs/planning.md.")
    budget = p.add_argument_group("budget (give one)")
    budget.add_argument("--flops", type=float, help="training compute C = 6ND, e.g. 3.2e17")
    budget.add_argument("--budget-usd", type=float, help="dollars to spend (needs --gpu or --price)")
    budget.add_argument("--gpu-hours", type=float, help="GPU-hours to spend (needs --gpu or --peak-tflops)")
    hw = p.add_argument_group("hardware")
    hw.add_argument("--gpu", help="GPU from the built-in table (h100, a100, rtx4090, v100, ...)")
    hw.add_argument("--num-gpus", type=int, default=1)
    hw.add_argument("--mfu", type=float, help="fraction of peak FLOP/s you sustain (default per GPU class)")
    hw.add_argument("--price", type=float, help="USD per GPU-hour (overrides the table)")
    hw.add_argument("--peak-tflops", type=float, help="dense bf16/fp16 peak per GPU (overrides the table)")
    hw.add_argument("--measure", action="store_true",
                    help="time real training steps of the planned shape on this machine instead of peak x MFU")
    hw.add_argument("--measure-steps", type=int, default=3)
    hw.add_argument("--device", default="auto", help="device for --measure (auto, cpu, cuda, mps)")
    model = p.add_argument_group("law, model and data")
    model.add_argument("--law", default="epoch",
                       help="epoch (default), hoffmann, hoffmann-rounded, muennighoff, or a LAW.json from fit")
    model.add_argument("--vocab-size", type=int, help="model vocabulary (default 50304, or the tokenizer's)")
    model.add_argument("--block-size", type=int, default=1024, help="context length (default 1024)")
    add_arch_flags(model, variants=True)
    model.add_argument("--bytes-per-token", type=float, help="text bytes per token (default 4.2, GPT-2-like BPE)")
    model.add_argument("--tokenizer", help="tokenizer.json (or folder): its vocabulary, and exact counts for --data")
    model.add_argument("--unique-tokens", type=float, help="distinct training tokens you have (data-constrained)")
    model.add_argument("--data", help="count the unique tokens of a source (builtin, file:PATH) or prepared folder")
    add_source_flags(model)
    model.add_argument("--data-dir", help="prepared data for the written config (its tokens are counted too)")
    out = p.add_argument_group("output")
    out.add_argument("--plot", help="write IsoFLOP curves to this .png")
    out.add_argument("--write-config", help="write a training config (TOML) for homegpt train")
    out.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    p.set_defaults(func=cmd_plan)

    f = sub.add_parser("fit", help="fit L(N, D) = E + A/N^alpha + B/D^beta to your runs (Approach 3, and 2)")
    f.add_argument("results", help="CSV or JSON with params, loss, and tokens or flops per run")
    f.add_argument("--drop-highest", type=int, default=0, help="leave out the K highest-loss runs")
    f.add_argument("--bootstrap", type=int, default=0, help="resamples for standard errors and 95%% intervals")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--at-flops", type=float, help="compute for the reported tokens/param (default: the runs')")
    f.add_argument("--plot", help="write the runs and fitted curves to this .png")
    f.add_argument("--out", help="write the fitted law as JSON, usable as plan --law FILE")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_fit)

    s = sub.add_parser("sweep", help="IsoFLOP sweep on your data with the real trainer; results for homegpt fit")
    s.add_argument("--data", required=True, help="source (builtin, file:PATH) or a prepared data folder")
    add_source_flags(s)
    s.add_argument("--budgets", required=True, help="comma-separated FLOP budgets, e.g. 3e13,1e14,3e14")
    s.add_argument("--sizes-per-budget", type=int, default=5, help="model sizes per budget (default 5)")
    s.add_argument("--out", default="runs/sweep", help="sweep folder: data, runs and results.csv")
    s.add_argument("--vocab-size", type=int, default=2048, help="tokenizer vocabulary when training one")
    s.add_argument("--tokenizer", help="an existing tokenizer.json instead of training one")
    s.add_argument("--block-size", type=int, default=128)
    add_arch_flags(s)
    s.add_argument("--spread", type=float, default=4.0, help="largest / smallest size per budget (default 4)")
    s.add_argument("--law", default="epoch", help="law that centres each budget's sizes")
    s.add_argument("--lr", type=float, help="peak lr of the matrices for every run (default: the recipe's: "
                                            "DeepSeek's rule per budget for gpt2, Muon's tuned lr for modern)")
    s.add_argument("--batch-tokens", type=int, help="tokens per step (default: the planner's rule per budget)")
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, help="CPU threads (default: 1 for toy shapes on CPU, else torch's)")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sweep)


def add_arch_flags(p, variants: bool = False) -> None:
    """--arch (and with variants --mlp, --tied/--untied): the architecture to count parameters for, and its
    recipe."""
    from homegpt.choices import ARCHS, DEFAULT_ARCH, MLPS

    p.add_argument("--arch", default=DEFAULT_ARCH, choices=ARCHS,
                   help=f"gpt2 (AdamW, cosine, DeepSeek's lr rule) or modern (Muon + AdamW, WSD, train/config.py's "
                        f"tuned lrs); default {DEFAULT_ARCH}")
    if variants:
        p.add_argument("--mlp", choices=sorted({m for ms in MLPS.values() for m in ms}),
                       help="modern: swiglu (default) or relu2; gpt2: gelu")
        head = p.add_mutually_exclusive_group()
        head.add_argument("--untied", dest="tie", action="store_false", default=None,
                          help="an output head of its own, + V x d parameters (modern's default)")
        head.add_argument("--tied", dest="tie", action="store_true", default=None,
                          help="the head reads the token embedding (gpt2 always does)")


# ---- plan ----------------------------------------------------------------------------------------------


def _plan_inputs(args) -> tuple[dict, list[str]]:
    """Keyword arguments for plan() from the flags, with data/tokenizer facts filled in; and notes."""
    from homegpt.plan.budget import DEFAULT_BYTES_PER_TOKEN, DEFAULT_VOCAB, count_data

    notes = []
    vocab, bpt, unique = args.vocab_size, args.bytes_per_token, args.unique_tokens
    for flag, value in (("--unique-tokens", unique), ("--vocab-size", vocab), ("--bytes-per-token", bpt)):
        if value is not None and not value > 0:
            raise UserError(f"{flag} must be positive, got {value:g}")
    spec = data_arg(args)
    if args.data_dir and not (Path(args.data_dir) / "manifest.json").is_file():
        what = "holds no prepared data" if Path(args.data_dir).is_dir() else "does not exist"
        notes.append(f"--data-dir {args.data_dir} {what} yet: homegpt prepare --out {args.data_dir} before training")
    elif spec is None and args.data_dir:
        spec = args.data_dir
    if spec is not None:
        info = count_data(spec, args.tokenizer, bpt or DEFAULT_BYTES_PER_TOKEN)
        notes.append(f"your data: {info['tokens']:,} unique tokens ({info['how']})")
        unique = unique if unique is not None else float(info["tokens"])
        vocab = vocab if vocab is not None else info["vocab_size"]
        bpt = bpt if bpt is not None else info["bytes_per_token"]
    elif args.tokenizer and vocab is None:
        from homegpt.data.tokenizer import load_tokenizer, round_vocab

        vocab = round_vocab(load_tokenizer(args.tokenizer).get_vocab_size())
    kwargs = dict(flops=args.flops, budget_usd=args.budget_usd, gpu_hours=args.gpu_hours, gpu=args.gpu,
                  num_gpus=args.num_gpus, mfu=args.mfu, price=args.price, peak_tflops=args.peak_tflops,
                  law=args.law, vocab_size=DEFAULT_VOCAB if vocab is None else vocab, block_size=args.block_size,
                  bytes_per_token=DEFAULT_BYTES_PER_TOKEN if bpt is None else bpt, unique_tokens=unique,
                  arch=args.arch, mlp=args.mlp or "", tie_embeddings=args.tie)
    return kwargs, notes


def cmd_plan(args) -> int:
    from homegpt.plan.budget import measure_plan, plan, write_config
    from homegpt.plan.plots import plot_isoflop
    from homegpt.plan.scaling import load_law

    kwargs, notes = _plan_inputs(args)
    if args.measure:
        if args.measure_steps < 1:
            raise UserError(f"--measure-steps must be >= 1, got {args.measure_steps}")
        result = measure_plan(steps=args.measure_steps, device=args.device, **kwargs)
    else:
        result = plan(**kwargs)
    result["notes"] = notes
    if args.plot:
        unique = result["data"]["unique_tokens"]
        result["plot"] = str(plot_isoflop(load_law(args.law), result["flops"], args.plot,
                                          chosen=(result["model"]["params"], result["train_tokens"]), unique=unique))
    if args.write_config:
        result["config"] = str(write_config(result, args.write_config, args.data_dir))
    emit(result, args.json, plan_table(result))
    return 0


def _si(x: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def plan_table(r: dict) -> list[str]:
    from homegpt.plan.budget import recipe_text

    m, d, hw = r["model"], r["data"], r["hardware"]
    rows = [
        ("law", f"{r['law']['name']} ({r['law']['source']})"),
        ("compute", f"{r['flops']:.3g} FLOPs as 6ND; {r['hardware_flops']:.3g} with attention and the head"),
        ("compute-optimal", f"N = {_si(r['n_opt'])} parameters, D = {_si(r['d_opt'])} tokens "
                            f"({r['tokens_per_param']:.1f} tokens/parameter)"),
        ("model", f"{m['arch']}: {plural(m['n_layer'], 'layer')} x {m['n_embd']} wide, "
                  f"{plural(m['n_head'], 'head')} of "
                  f"{m['n_embd'] // m['n_head']}, context {m['block_size']}, "
                  f"vocabulary {m['vocab_size']:,} = {m['params']:,} parameters"),
        ("training", f"{r['train_tokens']:,} tokens = {r['steps']:,} steps of {r['batch_tokens']:,} tokens "
                     f"(micro-batch {r['micro_batch']})"),
        ("recipe", recipe_text(r)),
    ]
    if hw:
        how = (f"measured on this machine ({hw.get('device')})" if hw["measured"]
               else f"peak {hw['peak_tflops']:g} TFLOP/s x MFU {hw['mfu']:g}")
        rows.append(("hardware", f"{hw['num_gpus']} x {hw['gpu'] or 'device'}: {hw['flops_per_s_per_gpu'] / 1e12:.3g} "
                                 f"TFLOP/s each ({how})"))
    if r["hours"] is not None:
        cost = f", ${r['cost_usd']:,.2f}" if r["cost_usd"] is not None else " (give --price for a cost)"
        rows.append(("time and cost", f"{r['hours']:,.1f} hours{cost}"))
    text = f"{d['text_tokens']:,} tokens = {d['text_gb']:.3g} GB of text at {d['bytes_per_token']:.3g} bytes/token"
    if d["unique_tokens"] is not None:
        text += f"; {d['epochs']:.2f} epochs over your {d['unique_tokens']:,.0f} unique tokens"
        if d["constrained"]:
            text += " (data-constrained: Muennighoff et al.)"
    rows.append(("text", text))
    rows.append(("predicted loss", f"{r['predicted_loss']:.3f} — {r['predicted_loss_note']}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"note: {n}" for n in r.get("notes", [])] + [f"warning: {w}" for w in r["warnings"]]
    lines += ["assumes C = 6ND, the MFU shown, and today's prices; see docs/planning.md"]
    lines += [f"wrote {r[k]}" for k in ("plot", "config") if r.get(k)]
    return lines


# ---- fit -----------------------------------------------------------------------------------------------


def cmd_fit(args) -> int:
    import numpy as np

    from homegpt.plan.fit import bootstrap, fit_approach2, fit_approach3, implausible, read_results
    from homegpt.plan.plots import plot_fit
    runs = read_results(args.results).drop_highest(args.drop_highest)
    fit = fit_approach3(runs.params, runs.tokens, runs.loss)
    if args.bootstrap:
        bootstrap(fit, runs.params, runs.tokens, runs.loss, args.bootstrap, seed=args.seed)
    if args.at_flops is not None and not args.at_flops > 0:
        raise UserError(f"--at-flops must be positive, got {args.at_flops:g}")
    at = args.at_flops or float(np.exp(np.mean(np.log(runs.flops))))
    law = fit.law(Path(args.results).stem, f"the runs in {Path(args.results).name} (their data and tokenizer)")
    # The closed-form optimum needs loss to fall with both N and D; a fit without that has no optimum.
    usable = fit.alpha > 0 and fit.beta > 0 and fit.A > 0 and fit.B > 0
    warnings = implausible(fit) if usable else [
        f"alpha = {fit.alpha:.3g}, beta = {fit.beta:.3g}: both must be positive for a compute-optimal "
        f"allocation, so these runs do not pin one down (at fixed compute the loss keeps falling towards one "
        f"end of the sizes tried): add sizes beyond that end, or larger budgets"]
    result = {
        "E": fit.E, "A": fit.A, "B": fit.B, "alpha": fit.alpha, "beta": fit.beta,
        "n_exponent": law.n_exponent if usable else None, "d_exponent": 1 - law.n_exponent if usable else None,
        "tokens_per_param": law.tokens_per_param(at) if usable else None, "tokens_per_param_flops": at,
        "objective": fit.objective, "runs": fit.n_points, "dropped": args.drop_highest, "skipped": runs.skipped,
        "starts": fit.starts, "seconds": round(fit.seconds, 2), "intervals": fit.intervals,
        "approach2": fit_approach2(runs.params, runs.flops, runs.loss, runs.budget), "warnings": warnings,
    }
    if args.out and not usable:
        warnings.append(f"no law written to {args.out}: plan cannot use a law without positive exponents")
    elif args.out:
        out = Path(args.out)
        if not out.parent.exists():
            raise UserError(f"folder {out.parent} does not exist: create it or choose another --out")
        law_json = {**law.to_dict(), "source": f"homegpt fit of {args.results} ({fit.n_points} runs)"}
        out.write_text(json.dumps(law_json, indent=2) + "\n", encoding="utf-8")
        result["law_file"] = str(out)
    if args.plot:
        result["plot"] = str(plot_fit(runs.params, runs.flops, runs.loss, law, args.plot))
    emit(result, args.json, fit_table(result))
    return 0


def fit_table(r: dict) -> list[str]:
    lines = [f"Approach 3 fit of {r['runs']} runs ({r['dropped']} highest-loss dropped, {r['skipped']} unusable "
             f"skipped) from {r['starts']:,} starts in {r['seconds']:.1f} s"]
    for k in ("E", "A", "B", "alpha", "beta"):
        ci = r["intervals"].get(k)
        extra = f"  ± {ci['se']:.4g}  (95%: {ci['lo']:.4g} .. {ci['hi']:.4g})" if ci else ""
        lines.append(f"  {k:<6} {r[k]:.4g}{extra}")
    if r["n_exponent"] is not None:
        lines.append(f"  compute-optimal: N_opt ∝ C^{r['n_exponent']:.3f}, D_opt ∝ C^{r['d_exponent']:.3f}; "
                     f"{r['tokens_per_param']:.1f} tokens/parameter at C = {r['tokens_per_param_flops']:.3g}")
    a2 = r["approach2"]
    if "a" in a2:
        lines.append(f"Approach 2 ({a2['usable_budgets']} budgets): N_opt = {a2['k']:.3g} C^{a2['a']:.3f}")
    else:
        lines.append(f"Approach 2: not applicable ({a2['note']})")
    lines += [f"warning: {w}" for w in r["warnings"]]
    lines += [f"wrote {r[k]}" for k in ("law_file", "plot") if r.get(k)]
    return lines


# ---- sweep ---------------------------------------------------------------------------------------------


def data_arg(args) -> str | None:
    """--data refined by --hf-config / --split / --text-column / --revision (a prepared folder stays as is)."""
    flags = (args.hf_config, args.split, args.text_column, args.revision)
    if args.data is None or not any(flags):
        return args.data
    return source_spec(args.data, *flags)


def cmd_sweep(args) -> int:
    from homegpt.plan.sweep import parse_budgets, run_sweep

    result = run_sweep(data_arg(args), parse_budgets(args.budgets), args.sizes_per_budget, args.out,
                       vocab_size=args.vocab_size, tokenizer=args.tokenizer, block_size=args.block_size,
                       arch=args.arch,
                       spread=args.spread, law=args.law, device=args.device, lr=args.lr,
                       batch_tokens=args.batch_tokens, threads=args.threads, progress=not args.no_progress)
    lines = [f"{result['ran']} runs trained, {result['skipped']} already done ({result['recipe']}); "
             f"results in {result['results']}"]
    lines += [f"  C={float(row['budget']):.3g}  N={int(row['params']):>12,}  D={int(row['tokens']):>12,}  "
              f"loss {float(row['loss']):.4f}" for row in result["rows"]]
    lines.append(f"next: homegpt fit {result['results']}")
    emit(result, args.json, lines)
    return 0
