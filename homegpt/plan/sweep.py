"""`homegpt sweep`: IsoFLOP curves measured on your own data with the real trainer.

For each FLOP budget C the sweep trains several model sizes N, each for D = C / 6N tokens with its
schedule spanning exactly that run, all with the same architecture and recipe (--arch: modern, Muon + WSD
at train/config.py's learning rates, by default; gpt2, AdamW + cosine at DeepSeek's lr per budget), tokenizer,
data, seed and batch, and appends one row per finished run (budget, params, tokens, flops, final held-out
loss over the whole validation split, arch, run dir) to OUT/results.csv. `homegpt fit OUT/results.csv`
then fits your own law. One folder holds one architecture's sweep: a law fitted across two would be
neither's.

Sizes are spread geometrically (largest / smallest = --spread) around the law's N_opt(C). At toy scale
N_opt can fall below the smallest model homegpt builds, so the ladder never starts below a 2-layer,
16-wide model, and shapes under 5M parameters use 16-dimensional heads and depth up to width / 4 so that
neighbouring sizes stay distinct.

Resumable: a run already in results.csv is skipped; a run stopped midway continues from its checkpoint.
"""

from __future__ import annotations

import csv
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from homegpt.errors import UserError
from homegpt.model.gpt import GPTConfig, count_params
from homegpt.plan.budget import Arch, batch_plan, recipe, search_shape
from homegpt.plan.scaling import Law, load_law
from homegpt.train.config import DEFAULT_ARCH, TrainConfig

RESULT_FIELDS = ["budget", "params", "tokens", "flops", "loss", "arch", "n_layer", "n_head", "n_embd", "block_size",
                 "vocab_size", "batch_tokens", "lr", "seconds", "run_dir"]
TOY_PARAMS = 5e6  # below this, the finer ladder of shapes


def parse_budgets(text: str) -> list[float]:
    try:
        budgets = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--budgets must be comma-separated numbers like 1e11,3e11,1e12, got {text!r}") from None
    if not budgets or any(not (math.isfinite(c) and c > 0) for c in budgets):
        raise UserError(f"--budgets must be positive FLOP counts, got {text!r}")
    return sorted(set(budgets))


def sweep_shape(target: float, vocab: int, block: int, arch: Arch | None = None) -> GPTConfig:
    if target >= TOY_PARAMS:
        return search_shape(target, vocab, block, arch=arch)
    return search_shape(target, vocab, block, rules=((16, (4, 128)),), arch=arch)


def sweep_shapes(law: Law, budget: float, sizes: int, spread: float, vocab: int, block: int,
                 arch: Arch | None = None) -> list[GPTConfig]:
    """Up to `sizes` distinct shapes of `arch` (default: the default recipe's) spread around N_opt(budget),
    smallest first, each counted exactly for that architecture."""
    arch = arch or Arch()
    floor = count_params(arch.shape(2, 1, 16, block, vocab))["total"]
    centre = max(law.optimum(budget)[0], floor * math.sqrt(spread))
    targets = centre * spread ** np.linspace(-0.5, 0.5, sizes) if sizes > 1 else [centre]
    shapes: dict[tuple[int, int], GPTConfig] = {}
    for t in targets:
        s = sweep_shape(float(t), vocab, block, arch)
        shapes.setdefault((s.n_layer, s.n_embd), s)
    return sorted(shapes.values(), key=lambda s: count_params(s)["total"])


def _prepare_data(data: str, out: Path, vocab_size: int, tokenizer: str | None, log) -> Path:
    """A prepared data folder: `data` itself if it is one, else OUT/data (tokenizer trained once, reused)."""
    from homegpt.data.prepare import prepare
    from homegpt.data.shards import read_manifest

    if (Path(data) / "manifest.json").is_file():
        read_manifest(data)
        return Path(data)
    data_dir = out / "data"
    if (data_dir / "manifest.json").is_file():
        manifest = read_manifest(data_dir)
        if manifest.get("source") != data:
            raise UserError(f"{out} holds a sweep over {manifest.get('source')!r}, not {data!r}: "
                            f"use another --out for other data")
        return data_dir
    tok = Path(tokenizer) if tokenizer else out / "tokenizer" / "tokenizer.json"
    if not tokenizer and not tok.is_file():
        from homegpt.data.tokenizer import train_tokenizer

        log(f"training a {vocab_size}-token tokenizer on {data}")
        train_tokenizer(data, vocab_size, tok.parent, force=True)
    log(f"preparing {data} into {data_dir}")
    prepare(data, tok, data_dir, force=True)
    return data_dir


def run_config(shape: GPTConfig, tokens: int, batch_tokens: int, micro_batch: int, how: dict, data_dir: Path,
               device: str) -> TrainConfig:
    """One sweep run of `shape` with the recipe `how` (plan.recipe): its optimizer, schedule and learning
    rates, the schedule spanning exactly `tokens`; a few evaluations, no samples, one checkpoint kept."""
    steps = max(1, math.ceil(tokens / batch_tokens))
    interval = max(1, steps // 4)
    return TrainConfig(data_dir=str(data_dir), preset="", n_layer=shape.n_layer, n_head=shape.n_head,
                       n_embd=shape.n_embd, block_size=shape.block_size, arch=shape.arch, mlp=shape.mlp,
                       tie_embeddings=shape.tie_embeddings, optimizer=how["optimizer"], schedule=how["schedule"],
                       lr=how["lr"], embedding_lr=how["embedding_lr"], head_lr=how["head_lr"],
                       scalar_lr=how["scalar_lr"], batch_tokens=batch_tokens, micro_batch=micro_batch,
                       max_tokens=tokens, warmup_steps=max(1, min(round(0.02 * steps), 2000)), eval_interval=interval,
                       checkpoint_interval=interval, keep_checkpoints=1, sample_tokens=0, device=device)


def read_results_rows(path: Path) -> list[dict]:
    """The rows of a results.csv, each with its arch (files from before the arch column: read from the run's
    run.json, and GPT-2 where that is gone: the only architecture there was)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if not row.get("arch"):
            row["arch"] = _recorded_arch(Path(row.get("run_dir") or "")) or "gpt2"
    return rows


def _recorded_arch(run_dir: Path) -> str | None:
    from homegpt.rundir.info import previous_arch  # run.json's architecture; runs from before `arch` are GPT-2

    return previous_arch(run_dir) if str(run_dir) else None


def append_row(path: Path, row: dict) -> None:
    """One sweep result appended to results.csv; a file from before today's columns is rewritten with them first."""
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if header != RESULT_FIELDS:  # an older file: rewrite it with today's columns, then append
            rows = read_results_rows(path)
            tmp = path.with_suffix(".csv.tmp")
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, RESULT_FIELDS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
            tmp.replace(path)
    new = not path.is_file()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, RESULT_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()


def run_sweep(data: str, budgets: list[float], sizes: int, out: str | Path, *, vocab_size: int = 2048,
              tokenizer: str | None = None, block_size: int = 128, spread: float = 4.0, law: str = "epoch",
              device: str = "auto", lr: float | None = None, batch_tokens: int | None = None,
              threads: int | None = None, progress: bool = True, log=None, arch: str = DEFAULT_ARCH) -> dict:
    """Train every (budget, size) run of `arch`'s recipe not yet in OUT/results.csv; return the rows and
    counts. lr, when given, replaces the recipe's peak lr of the matrices (AdamW's, or Muon's)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if sizes < 1:
        raise UserError(f"--sizes-per-budget must be >= 1, got {sizes}")
    if not spread >= 1:
        raise UserError(f"--spread must be >= 1 (largest / smallest size), got {spread:g}")
    if block_size < 2:
        raise UserError(f"--block-size must be >= 2, got {block_size}")
    if threads is not None and threads < 0:
        raise UserError(f"--threads must be >= 1 (or 0 for the default), got {threads}")
    if lr is not None and not lr > 0:
        raise UserError(f"--lr must be positive, got {lr:g}")
    if batch_tokens is not None and batch_tokens < block_size:
        raise UserError(f"--batch-tokens must hold at least one sequence of {block_size} tokens")
    model = Arch(arch)
    the_law = load_law(law)
    out = Path(out)
    results = out / "results.csv"
    rows = read_results_rows(results)
    others = sorted({row["arch"] for row in rows} - {model.arch})
    if others:  # checked before any tokenizer or data is made
        raise UserError(f"{out} holds a sweep of arch {', '.join(others)}, not {model.arch}: "
                        f"use another --out for --arch {model.arch} (a law fitted across both would be neither's)")
    out.mkdir(parents=True, exist_ok=True)
    from homegpt.data.shards import read_manifest

    data_dir = _prepare_data(data, out, vocab_size, tokenizer, log)
    vocab = read_manifest(data_dir)["model_vocab_size"]
    done = {Path(row["run_dir"]).name for row in rows}
    runs = []
    for budget in budgets:
        shapes = sweep_shapes(the_law, budget, sizes, spread, vocab, block_size, model)
        # One batch per budget, set by its largest model (fewest tokens), so that every run has enough steps.
        bt, micro = batch_plan(budget, block_size, budget / (6 * count_params(shapes[-1])["total"]))
        if batch_tokens:
            bt = batch_tokens // block_size * block_size
        micro = max(1, math.gcd(bt // block_size, micro))  # micro-batches must add up to the batch exactly
        how = recipe(model, budget, lr)
        runs += [(budget, shape, bt, micro, how) for shape in shapes]
    threads = threads or _default_threads(device, runs)
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        ran, skipped = _run_all(runs, out, done, results, data_dir, vocab, device, progress, log)
    finally:
        torch.set_num_threads(saved_threads)
    how = recipe(model, budgets[0], lr)
    lrs = "lr given" if lr else ("DeepSeek's lr per budget" if how["optimizer"] == "adamw" else "train/config.py's lrs")
    return {"results": str(results), "ran": ran, "skipped": skipped, "data_dir": str(data_dir),
            "threads": threads or saved_threads, "arch": model.arch,
            "recipe": f"{model.arch} recipe: {how['optimizer']}, {how['schedule']}, {lrs}",
            "rows": read_results_rows(results)}


def _default_threads(device: str, runs: list) -> int | None:
    """One CPU thread for toy shapes: under 5M parameters a second thread mostly adds synchronisation, and
    on a busy 2-core machine it made runs several times slower (see docs/planning.md)."""
    from homegpt.rundir.checkpoint import pick_device

    if pick_device(device).type == "cpu" and all(count_params(run[1])["total"] < TOY_PARAMS for run in runs):
        return 1
    return None


def _run_all(runs, out: Path, done: set, results: Path, data_dir: Path, vocab: int, device: str,
             progress: bool, log) -> tuple[int, int]:
    from homegpt.train.loop import train

    ran = skipped = 0
    for i, (budget, shape, bt, micro, how) in enumerate(runs, 1):
        params = count_params(shape)["total"]
        run_dir = out / "runs" / f"C{budget:.3g}_L{shape.n_layer}_d{shape.n_embd}_T{shape.block_size}"
        if run_dir.name in done:
            skipped += 1
            continue
        tokens = math.ceil(budget / (6 * params))
        cfg = run_config(shape, tokens, bt, micro, how, data_dir, device)
        resume = (run_dir / "run.json").is_file()
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)  # a run that died before writing anything: start it cleanly
        log(f"[{i}/{len(runs)}] C={budget:.3g}: {params:,} parameters ({shape.n_layer}x{shape.n_embd}) "
            f"on {tokens:,} tokens" + (" (resuming)" if resume else ""))
        t0 = time.perf_counter()
        result = train(cfg, run_dir, resume=resume, progress=progress, log=log)
        row = {"budget": budget, "params": result["params"], "tokens": result["tokens_trained"],
               "flops": 6 * result["params"] * result["tokens_trained"], "loss": result["val_loss"],
               "arch": shape.arch, "n_layer": shape.n_layer, "n_head": shape.n_head, "n_embd": shape.n_embd,
               "block_size": shape.block_size, "vocab_size": vocab, "batch_tokens": bt, "lr": cfg.lr,
               "seconds": round(time.perf_counter() - t0, 1), "run_dir": str(run_dir)}
        append_row(results, row)
        log(f"    held-out loss {row['loss']:.4f} in {row['seconds']:.0f} s")
        ran += 1
    return ran, skipped
