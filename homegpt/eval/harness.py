"""Standard benchmark tasks on a run: EleutherAI's lm-evaluation-harness, in-process, on the run's export.

    homegpt eval RUN --tasks hellaswag,lambada_openai,arc_easy,piqa [--num-fewshot K] [--limit N]
                     [--include-path DIR] [--batch-size B] [--step S] [--json]

The checkpoint is written as the transformers folder `homegpt export` writes (GPT2LMHeadModel for arch
"gpt2", Qwen3ForCausalLM for "modern"; export.write_transformers_model) into a temporary folder, and the
harness's own HF model class (lm_eval.models.huggingface.HFLM) loads it from there in fp32, without remote
code: the scores are the harness's, on the very model anyone who loads the export gets. The tasks are loaded
first, one at a time, so a task whose data can't be fetched is named before any model is built.

Results: acc / acc_norm (or perplexity, bits per byte) ± the harness's standard error, beside a published
zero-shot reference (REFERENCES: GPT-2 124M where one exists, else the 125M model the harness's results list),
written to RUN/eval-tasks.json. The harness is the optional extra homegpt[eval].
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

from homegpt.errors import UserError, closest

TASKS_FILE = "eval-tasks.json"
HINT = "--tasks needs lm-evaluation-harness: pip install 'homegpt[eval]'"
METRICS = ("acc", "acc_norm", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")
PERCENT = ("acc", "acc_norm")

# (task, metric) -> (value, model, source): zero-shot, for scale (docs/evaluation.md says how to read them).
GPT2_LM_EVAL = "lm-eval; karpathy/llm.c dev/data/hellaswag.py"
REFERENCES: dict[tuple[str, str], tuple[float, str, str]] = {
    ("hellaswag", "acc"): (0.289, "GPT-2 124M", GPT2_LM_EVAL),
    ("hellaswag", "acc_norm"): (0.311, "GPT-2 124M", GPT2_LM_EVAL),
    ("lambada_openai", "acc"): (0.326, "GPT-2 124M", "lm-eval issue #2159"),
    ("lambada_openai", "perplexity"): (40.1, "GPT-2 124M", "lm-eval issue #2159"),
    ("arc_easy", "acc"): (0.435, "OPT-125m", "lm-eval results folder"),
    ("piqa", "acc"): (0.630, "OPT-125m", "lm-eval results folder"),
    ("winogrande", "acc"): (0.503, "OPT-125m", "lm-eval results folder"),
}


def parse_task_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("--tasks needs at least one task name, e.g. --tasks hellaswag,arc_easy")
    return list(dict.fromkeys(names))


def require_harness() -> None:
    """The harness and what its HF model class needs (found, not imported: transformers takes seconds)."""
    from importlib.util import find_spec

    try:
        import lm_eval  # noqa: F401 -- light: its heavy parts load on use

        missing = [m for m in ("transformers", "accelerate") if find_spec(m) is None]
    except (ImportError, ValueError):
        missing = ["lm_eval"]
    if missing:
        raise UserError(HINT)


def task_manager(names: list[str], include_path: str | None):
    """A TaskManager that knows every name: the --include-path folder alone when it holds them all (indexing
    the harness's thousands of built-in YAML files takes ~15 s on 2 cores), else with the built-in tasks."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"--include-path {include_path} is not a folder of task YAML files")
    if include_path is not None:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(_known(n, local) for n in names):
            return local
    manager = TaskManager(include_path=include_path)
    for name in names:
        if not _known(name, manager):
            raise UserError(f"unknown task {name!r}{closest(name, manager.all_tasks)}: `lm-eval ls tasks` lists "
                            f"the harness's tasks; give your own with --include-path DIR")
    return manager


def _known(name: str, manager) -> bool:
    return name in manager.all_tasks or (name.endswith((".yaml", ".yml")) and Path(name).is_file())


def load_tasks(names: list[str], manager) -> list:
    """Each task built with its data, one at a time, so that a failure names its task."""
    lm_logger = logging.getLogger("lm_eval")
    level = lm_logger.level
    lm_logger.setLevel(logging.ERROR)  # its notes while building tasks would bury the one-line error
    _quiet_hub()
    built = []
    try:
        for name in names:
            try:
                loaded = manager.load([name])
            except Exception as e:  # datasets and the hub raise many types: all mean "no data for this task"
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise UserError(f"task {name}: its data could not be loaded ({first}): tasks need their data "
                                f"locally or a network (local YAML + files: --include-path DIR)") from None
            built.extend(loaded["groups"].values() if loaded["groups"] else loaded["tasks"].values())
    finally:
        lm_logger.setLevel(level)
    return built


def _quiet_hub() -> None:
    """The hub's retry warnings, one per attempt, would break the one-line error rule."""
    for name in ("huggingface_hub", "datasets", "fsspec"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


def run_tasks(run_dir: str | Path, names: list[str], num_fewshot: int | None = None, limit: int | None = None,
              include_path: str | None = None, batch_size: int = 8, device: str = "auto",
              step: int | str | None = None) -> dict:
    """Score a run's checkpoint on lm-eval tasks; writes RUN/eval-tasks.json and returns what it holds."""
    require_harness()
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num-fewshot must be 0 or more, got {num_fewshot}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    from homegpt.rundir.checkpoint import load_run

    run = load_run(run_dir, device="cpu", step=step)  # a bad run is refused before the harness starts
    manager = task_manager(names, include_path)
    tasks = load_tasks(names, manager)
    results = _evaluate(run, tasks, manager, num_fewshot, limit, batch_size, device)
    report = _report(run, results, names, num_fewshot, limit)
    from homegpt.data.shards import write_json_atomic

    write_json_atomic(Path(run_dir) / TASKS_FILE, report)
    report["path"] = str(Path(run_dir) / TASKS_FILE)
    return report


def _evaluate(run, tasks: list, manager, num_fewshot, limit, batch_size: int, device: str) -> dict:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from homegpt.runtime.device import pick_device
    from homegpt.share.export import write_transformers_model

    dev = pick_device(device)
    with tempfile.TemporaryDirectory(prefix="homegpt-tasks-") as tmp:
        write_transformers_model(run, tmp)
        lm = HFLM(pretrained=tmp, dtype="float32", device=str(dev), batch_size=batch_size,
                  max_length=run.model.config.block_size, trust_remote_code=False)
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                      task_manager=manager, log_samples=False)
    return out


def _report(run, out: dict, names: list[str], num_fewshot, limit) -> dict:
    import lm_eval

    from homegpt.share.hf_arch import HF_CLASS

    rows = []
    for task, metrics in out["results"].items():
        for metric in METRICS:
            value = metrics.get(f"{metric},none")
            if not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,none")
            ref = REFERENCES.get((task, metric))
            rows.append({"task": task, "metric": metric, "value": float(value),
                         "stderr": float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr)
                         else None,
                         "samples": (out.get("n-samples", {}).get(task) or {}).get("effective"),
                         "reference": {"value": ref[0], "model": ref[1], "source": ref[2]} if ref else None})
    return {"step": run.step, "tasks": names, "num_fewshot": num_fewshot, "limit": limit,
            "model_class": HF_CLASS[run.model.config.arch], "lm_eval_version": lm_eval.__version__,
            "results": rows}


def format_table(report: dict) -> list[str]:
    """The report as aligned text lines: task, metric, value ± stderr, reference."""
    lines = [f"{'task':<22} {'metric':<16} {'value':>20}   reference (zero-shot)"]
    for r in report["results"]:
        lines.append((f"{r['task']:<22} {r['metric']:<16} {_value(r['metric'], r['value'], r['stderr']):>20}   "
                      + (f"{_value(r['metric'], r['reference']['value'], None)} {r['reference']['model']}"
                         if r["reference"] else "")).rstrip())
    notes = []
    if report["limit"]:
        notes.append(f"--limit {report['limit']}: a subset, not comparable with the references")
    if report["num_fewshot"]:
        notes.append(f"{report['num_fewshot']}-shot; the references are zero-shot")
    return lines + [f"({n})" for n in notes]


def _value(metric: str, value: float, stderr: float | None) -> str:
    if metric in PERCENT:
        text = f"{100 * value:.1f}%"
        return text + (f" ± {100 * stderr:.1f}" if stderr is not None else "")
    text = f"{value:.4f}" if metric == "bits_per_byte" else f"{value:.4g}"
    return text + (f" ± {stderr:.3g}" if stderr is not None else "")
