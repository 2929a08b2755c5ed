"""`homegpt eval`: held-out loss, perplexity and bits per byte of a run on text, or lm-eval tasks."""

from __future__ import annotations

from homegpt.cli.common import STEP_HELP, emit, step_arg
from homegpt.data.sources import add_source_flags
from homegpt.errors import UserError


def cmd_eval(args) -> int:
    from homegpt.data.sources import source_spec

    if args.tasks is not None:
        from homegpt.eval.harness import format_table, parse_task_names, run_tasks

        if args.data or args.scope:
            raise UserError("--tasks scores the harness's tasks: leave out --data, --whole and --held-out")
        r = run_tasks(args.run, parse_task_names(args.tasks), args.num_fewshot, args.limit, args.include_path,
                      args.batch_size, args.device, args.step)
        emit(r, args.json, [*format_table(r), f"wrote {r['path']}"])
        return 0
    from homegpt.eval.evaluate import evaluate_run

    if args.num_fewshot is not None or args.limit is not None or args.include_path is not None:
        raise UserError("--num-fewshot, --limit and --include-path go with --tasks")
    data = source_spec(args.data, args.hf_config, args.split, args.text_column, args.revision) if args.data else None
    r = evaluate_run(args.run, data, args.batch_size, args.device, args.step, args.scope, progress=True)
    lines = [r["scored"],
             f"loss {r['loss']:.4f} nats/token | perplexity {r['perplexity']:.3f} | {r['bpb']:.4f} bits/byte"]
    emit(r, args.json, lines)
    return 0


def register(sub) -> None:
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
    e.add_argument("--step", type=step_arg, default=None, help=STEP_HELP)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)
