"""What does a recipe buy per FLOP? Three recipes on the same data at equal compute, each with its lr tuned.

    python benchmarks/recipe_efficiency.py [--data SOURCE] [--budgets 1e12,3.16e12,1e13] [--extend 3.16e13]
                                           [--homegpt-mlp swiglu,relu2] [--json] [--quick]

    (a) seed     the $50 recipe as published: GPT-2, every sentence padded to 65 tokens with the padding
                 counted in the loss, context 64, AdamW (torch's defaults) at a constant lr, no warmup, no
                 clipping (its scripts; see ../shared/reference/recipes.md). Trained by a loop here, since
                 homegpt's trainer never pads.
    (b) nanogpt  nanoGPT's recipe: GPT-2, packed documents, AdamW (0.9, 0.95) with weight decay 0.1 on
                 matrices, warmup + cosine decay to 10%, gradient clipping at 1 (`arch = "gpt2"` in homegpt).
    (c) homegpt  homegpt's modern recipe (the defaults: model/gpt.py's arch = "modern", train/optim.py's Muon + AdamW
                 on a warmup-stable-decay schedule) through the real trainer, once per MLP of --homegpt-mlp
                 (default: SwiGLU, the default MLP, and ReLU² beside it), each with its own tuned multiplier.

Same data, tokenizer (vocabulary 2,048), model shape (4 layers x 128 wide by default), batch (2,048
tokens) and held-out text for all. FLOPs are counted the same way for every recipe: training tokens x
model.flops_per_token (6N + attention, at the recipe's context; padding tokens cost compute, so they count),
plus, for Muon, its Newton-Schulz iterations (optim.muon_flops_per_step) at every step. A budget sets the
tokens, so every recipe spends the same FLOPs.

Tuning: every recipe gets the same effort at every budget: its lr over the grid below (for (c) a multiplier
of all four of its rates), extended by one more value beyond an edge when the best lr is on it (up to
--max-extend times). Reported: held-out bits per byte (the whole held-out split, every run at its own
context) for every (recipe, budget) at its best lr, and the compute multiplier: the FLOPs (b) needs to
reach (c)'s bits per byte, divided by (c)'s FLOPs, interpolating (b)'s best-lr bits per byte linearly in
log FLOPs (beyond (b)'s largest budget the last segment is extended, marked "extrapolated"); likewise (a),
and likewise each other (c) MLP against the first (what ReLU² needs to reach SwiGLU's bits per byte).
(a) and (b) also run at --extend budgets above the common ones, at their best lr of the largest common
budget, so that their curves reach (c)'s bits per byte. Every finished run is appended to OUT/runs.jsonl and
reused by the next invocation with the same settings (for (c), its MLP among them; a (c) record without one
was written when ReLU² was the only one this script ran), so the benchmark resumes where it stopped.
Also bits per byte at equal wall-clock training seconds (runs go --workers at a time, one thread each, so
their seconds compare within one run of this script; Muon's iterations cost CPU time that FLOPs understate).

The last line with --json is one object: multiplier_vs_nanogpt, multiplier_vs_seed (one entry per budget) and
wallclock for the first (c) MLP, by_mlp (the same for every (c) MLP, and its multiplier against the others),
table (every run), best (per recipe, MLP and budget), and the settings.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from homegpt.choices import MLPS  # noqa: E402  (torch-free)

RECIPES = ("seed", "nanogpt", "homegpt")
LABELS = {"seed": "(a) $50 recipe", "nanogpt": "(b) nanoGPT", "homegpt": "(c) homegpt modern"}
MLP_NAMES = {"swiglu": "SwiGLU", "relu2": "ReLU²"}
GRIDS = {  # (a) includes its published 5e-4; (b) is centred on the demo's tuned 3e-3; (c) x optim.py's rates
    "seed": (5e-4, 1.5e-3, 4.5e-3),
    "nanogpt": (1.5e-3, 3e-3, 6e-3),
    "homegpt": (0.5, 1.0, 2.0),
}
STEP_FACTOR = {"seed": 3.0, "nanogpt": 2.0, "homegpt": 2.0}  # how the grid extends past an edge
VOCAB = 2048
BATCH_TOKENS = 2048
SEED_LEN = 65  # the $50 recipe: each sentence padded (or cut) to 65 tokens; x = the first 64, y = the last 64


# --------------------------------------------------------------------------------------------- names


def mlp_of(r: dict) -> str:
    """A (c) run's MLP. Records written before runs named it have none: they were ReLU², then the default and
    the only MLP this script ran."""
    return r.get("mlp") or "relu2"


def series(r: dict) -> str:
    """What a run's row in the tables is: its recipe, and for (c) its MLP ("homegpt-swiglu")."""
    return f"homegpt-{mlp_of(r)}" if r["recipe"] == "homegpt" else r["recipe"]


def label(name: str) -> str:
    if name.startswith("homegpt-"):
        mlp = name.removeprefix("homegpt-")
        return f"(c) homegpt {MLP_NAMES.get(mlp, mlp)}"
    return LABELS[name]


# --------------------------------------------------------------------------------------------- data


def pydoc_corpus(out: Path) -> str:
    """The Python language reference that ships with CPython (pydoc_data.topics, 79 topics, 0.46 MB) as a
    JSON Lines file: a second, offline corpus of English prose of another kind than the built-in Bible."""
    import pydoc_data.topics as topics

    path = out / "pydoc.jsonl"
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for text in topics.topics.values():
                f.write(json.dumps({"text": text}) + "\n")
    return f"file:{path}"


def prepare_data(source: str, out: Path, log) -> Path:
    from homegpt.data.prepare import prepare
    from homegpt.data.tokenizer import train_tokenizer

    data = out / "data"
    if (data / "manifest.json").is_file() and json.loads((data / "manifest.json").read_text()).get("source") == source:
        return data
    log(f"tokenizer ({VOCAB} tokens) and shards for {source}")
    train_tokenizer(source, VOCAB, out / "tok", force=True)
    prepare(source, out / "tok", data, force=True)
    return data


SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'\u2019\u201d)])\s+")


def sentences(doc: str) -> list[str]:
    """A document's sentences: BookCorpus, the $50 recipe's data, has one sentence per line; other corpora
    (the built-in one has a chapter per line) are cut after . ! or ? (and a closing quote) before a space."""
    return [s for line in doc.splitlines() for s in SENTENCE_END.split(line.strip()) if s.strip()]


def seed_lines(source: str, data_dir: Path, seed: int):
    """The $50 recipe's training rows: every sentence of the training documents, tokenized, cut or padded
    to SEED_LEN with <|endoftext|> (GPT-2's tokenizer has no pad token: its eos pads), shuffled."""
    import torch

    from homegpt.data.sources import load_corpus
    from homegpt.data.tokenizer import EOT, load_tokenizer

    tok = load_tokenizer(data_dir / "tokenizer.json")
    eot = tok.token_to_id(EOT)
    lines = [s for doc in load_corpus(source).train for s in sentences(doc)]
    rows = torch.full((len(lines), SEED_LEN), eot, dtype=torch.long)
    for i, enc in enumerate(tok.encode_batch(lines)):
        ids = enc.ids[:SEED_LEN]
        rows[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    order = torch.randperm(len(lines), generator=torch.Generator().manual_seed(seed))
    real = float((rows != eot).float().mean())
    return rows[order], real


# --------------------------------------------------------------------------------------------- one run


def shape_config(shape: tuple[int, int], block: int, arch: str, mlp: str = ""):
    from homegpt.model.gpt import GPTConfig

    n_layer, n_embd = shape
    return GPTConfig(n_layer, max(1, n_embd // 32), n_embd, block, VOCAB, arch=arch, mlp=mlp)


def flops_per_token_and_step(recipe: str, shape: tuple[int, int], mlp: str = "") -> tuple[float, float]:
    """(FLOPs per training token, extra FLOPs per optimizer step) as every recipe is counted ((c): with `mlp`)."""
    from homegpt.model.gpt import GPT, flops_per_token
    from homegpt.train.optim import muon_flops_per_step

    if recipe == "seed":
        return flops_per_token(shape_config(shape, SEED_LEN - 1, "gpt2")), 0.0
    mcfg = shape_config(shape, 128, "gpt2", "") if recipe == "nanogpt" else shape_config(shape, 128, "modern", mlp)
    per_step = muon_flops_per_step(GPT(mcfg)) if recipe == "homegpt" else 0.0
    return flops_per_token(mcfg), per_step


def run_job(job: dict) -> dict:
    """Train one (recipe, budget, lr) in this process on one thread; its held-out metrics and costs."""
    import torch

    torch.set_num_threads(1)
    fpt, per_step = flops_per_token_and_step(job["recipe"], job["shape"], job.get("mlp", ""))
    tokens_per_step = BATCH_TOKENS if job["recipe"] != "seed" else (BATCH_TOKENS // (SEED_LEN - 1)) * (SEED_LEN - 1)
    steps = max(1, round(job["budget"] / (fpt * tokens_per_step + per_step)))
    t0 = time.perf_counter()
    if job["recipe"] == "seed":
        result = _train_seed(job, steps)
    else:
        result = _train_homegpt(job, steps)
    flops = result["tokens"] * fpt + steps * per_step
    return dict(job, shape=list(job["shape"]), steps=steps, flops=flops, wall_s=round(time.perf_counter() - t0, 1),
                **result)


def _train_homegpt(job: dict, steps: int) -> dict:
    from homegpt.train.config import MUON_EMBEDDING_LR, MUON_HEAD_LR, MUON_LR, MUON_SCALAR_LR, TrainConfig
    from homegpt.train.loop import train

    n_layer, n_embd = job["shape"]
    common = dict(data_dir=job["data_dir"], preset="", n_layer=n_layer, n_head=max(1, n_embd // 32), n_embd=n_embd,
                  block_size=128, batch_tokens=BATCH_TOKENS, micro_batch=16, max_steps=steps,
                  warmup_steps=max(1, min(30, steps // 10)), eval_interval=10**9, eval_tokens=10**9,
                  keep_checkpoints=1, sample_tokens=0, seed=job["seed"], device="cpu")
    if job["recipe"] == "nanogpt":
        cfg = TrainConfig(**common, arch="gpt2", optimizer="adamw", schedule="cosine", lr=job["lr"],
                          min_lr_ratio=0.1, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0)
    else:
        m = job["lr"]
        cfg = TrainConfig(**common, mlp=job["mlp"], lr=MUON_LR * m, embedding_lr=MUON_EMBEDDING_LR * m,
                          head_lr=MUON_HEAD_LR * m, scalar_lr=MUON_SCALAR_LR * m, **job.get("extra", {}))
    r = train(cfg, job["run_dir"], force=True, progress=False, log=lambda msg: None)
    return {"bpb": r["val_bpb"], "loss": r["val_loss"], "tokens": r["tokens_trained"], "train_s": r["train_seconds"]}


def _train_seed(job: dict, steps: int) -> dict:
    """The published loop: padded rows, loss over every position (padding included), AdamW at a constant lr."""
    import torch

    from homegpt.data.shards import open_split
    from homegpt.data.tokenizer import load_tokenizer, token_byte_lengths
    from homegpt.model.gpt import GPT
    from homegpt.train.heldout import evaluate_tokens

    data_dir = Path(job["data_dir"])
    rows, _ = seed_lines(job["source"], data_dir, job["seed"])
    torch.manual_seed(job["seed"])
    model = GPT(shape_config(job["shape"], SEED_LEN - 1, "gpt2"))
    opt = torch.optim.AdamW(model.parameters(), lr=job["lr"])  # torch's defaults: betas (0.9, 0.999), wd 0.01
    per_step = BATCH_TOKENS // (SEED_LEN - 1)
    model.train()
    t = time.perf_counter()
    for step in range(steps):
        idx = torch.arange(step * per_step, (step + 1) * per_step) % len(rows)  # epochs over the shuffled lines
        batch = rows[idx]
        _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    train_s = time.perf_counter() - t
    tok = load_tokenizer(data_dir / "tokenizer.json")
    token_bytes = torch.tensor(token_byte_lengths(tok, VOCAB), dtype=torch.long)
    ev = evaluate_tokens(model, open_split(data_dir, "val"), token_bytes, batch_size=16)
    return {"bpb": ev["bpb"], "loss": ev["loss"], "tokens": steps * per_step * (SEED_LEN - 1), "train_s": train_s}


# --------------------------------------------------------------------------------------------- analysis


def interpolate_needed(curve: list[tuple[float, float]], target: float) -> tuple[float | None, bool]:
    """(FLOPs at which a recipe's (flops, bpb) curve reaches `target`, extrapolated?) in log FLOPs.

    Below the curve's best point the last segment is extended (if it still descends); above its first point
    the first segment is; None when the curve never gets there (flat or rising)."""
    pts = sorted(curve)
    xs, ys = [math.log(f) for f, _ in pts], [b for _, b in pts]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True), strict=False):
        if min(y0, y1) <= target <= max(y0, y1) and y0 != y1:
            return math.exp(x0 + (target - y0) * (x1 - x0) / (y1 - y0)), False
    seg = (0, 1) if target > max(ys) else (len(xs) - 2, len(xs) - 1)
    (x0, y0), (x1, y1) = (xs[seg[0]], ys[seg[0]]), (xs[seg[1]], ys[seg[1]])
    if y1 >= y0:
        return None, True
    return math.exp(x0 + (target - y0) * (x1 - x0) / (y1 - y0)), True


def best_runs(table: list[dict]) -> dict:
    """{(series, budget): its best-lr run}."""
    best: dict = {}
    for r in table:
        key = (series(r), r["budget"])
        if key not in best or r["bpb"] < best[key]["bpb"]:
            best[key] = r
    return best


MAX_EXTRAPOLATION = 10.0  # an extrapolated need beyond 10x the baseline's largest measured run is not reported


def multipliers(best: dict, budgets: list[float], baseline: str, axis: str = "flops",
                ours_name: str = "homegpt-swiglu") -> list[dict]:
    """Per common budget: what the baseline needs (on its curve over every budget it ran) for the bpb of
    `ours_name` (a (c) series).

    multiplier: interpolated, or extrapolated from the curve's last segment (marked), or None when the curve
    has stopped falling or the extrapolation runs past MAX_EXTRAPOLATION x its largest run. at_least: a
    measured lower bound, the largest baseline run that is still worse than (c) (with every smaller run
    worse too) over (c)'s cost: the baseline needs more than that.
    """
    curve = sorted((r[axis], r["bpb"]) for (name, _), r in best.items() if name == baseline)
    out = []
    for b in budgets:
        ours = best[(ours_name, b)]
        needed, extrapolated = interpolate_needed(curve, ours["bpb"])
        if needed is not None and extrapolated and needed > MAX_EXTRAPOLATION * curve[-1][0]:
            needed = None
        worse = 0.0
        for x, bpb in curve:
            if bpb <= ours["bpb"]:
                break
            worse = x
        out.append({"budget": b, axis: ours[axis], "bpb": ours["bpb"], f"{baseline}_{axis}_needed": needed,
                    "multiplier": None if needed is None else needed / ours[axis], "extrapolated": extrapolated,
                    "at_least": worse / ours[axis] if worse else None})
    return out


def _say(m: dict) -> str:
    bound = f"at least {m['at_least']:.2f}x measured" if m["at_least"] else "no measured bound"
    if m["multiplier"] is None:
        return f"not reached on its measured curve ({bound})"
    return f"{m['multiplier']:.2f}x" + (" (extrapolated; " + bound + ")" if m["extrapolated"] else "")


def bpb_at(curve: list[tuple[float, float]], x: float) -> tuple[float, bool]:
    """A curve's bits per byte at x (linear in log x), and whether that is outside the measured range."""
    pts = sorted(curve)
    lx = math.log(x)
    xs, ys = [math.log(a) for a, _ in pts], [b for _, b in pts]
    i = 0 if lx <= xs[0] else len(xs) - 2 if lx >= xs[-1] else max(j for j in range(len(xs) - 1) if xs[j] <= lx)
    y = ys[i] + (lx - xs[i]) * (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
    return y, not xs[0] <= lx <= xs[-1]


# --------------------------------------------------------------------------------------------- driver


def _key(job: dict) -> tuple:
    """What makes two runs the same: the recipe, and for (c) its MLP, budget, lr, shape, data, seed."""
    return (series(job), float(job["budget"]), float(job["lr"]), tuple(job["shape"]), job["source"], job["seed"])


def run_all(jobs: list[dict], workers: int, log) -> list[dict]:
    """Run the jobs (reusing any already recorded in OUT/runs.jsonl: the benchmark resumes where it stopped)."""
    if not jobs:
        return []
    done_file = Path(jobs[0]["out"]) / "runs.jsonl"
    done = {}
    if done_file.is_file():
        for line in done_file.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            done[_key(r)] = r
    results = [done[_key(j)] for j in jobs if _key(j) in done]
    todo = [j for j in jobs if _key(j) not in done]
    if results:
        log(f"  reusing {len(results)} finished runs from {done_file}")

    def record(r: dict) -> None:
        results.append(r)
        with open(done_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(r) + "\n")
        log(_describe(r))

    if workers <= 1:
        for j in todo:
            record(run_job(j))
        return results
    with mp.get_context("spawn").Pool(workers) as pool:
        for r in pool.imap_unordered(run_job, todo):
            record(r)
    return results


def extend_baselines(table: list[dict], budgets: list[float], extra: list[float], base: dict, workers: int,
                     log) -> list[dict]:
    """(a) and (b) at budgets beyond the common ones, each at its best lr of the largest common budget: their
    curves then reach down to (c)'s bits per byte, so the multiplier is interpolated instead of extrapolated.
    (Their lr is not re-tuned there: if anything that understates them slightly; see BENCHMARKS.md.)"""
    best = best_runs(table)
    jobs = []
    for r in ("seed", "nanogpt"):
        if (r, budgets[-1]) not in best:
            continue
        lr = best[(r, budgets[-1])]["lr"]
        for b in extra:
            name = f"{r}_C{b:.3g}_lr{lr:.3g}"
            jobs.append(dict(base, recipe=r, budget=b, lr=lr, run_dir=str(Path(base["out"]) / "runs" / name)))
    if jobs:
        log(f"baselines at the extra budgets {', '.join(f'{b:.3g}' for b in extra)}")
    return run_all(jobs, workers, log)


def _describe(r: dict) -> str:
    return (f"  {label(series(r)):20s} C={r['budget']:.3g}  lr={r['lr']:<8g} bpb {r['bpb']:.4f}  "
            f"{r['tokens']:,} tokens  {r['train_s']:.0f} s")


def tune(recipes: list[str], budgets: list[float], base: dict, grid_size: int, max_extend: int, workers: int,
         log, mlps: tuple[str, ...] = ("swiglu",)) -> list[dict]:
    """Every recipe's grid at every budget ((c) once per MLP of `mlps`), then one more lr past an edge where
    the best sits on it."""
    def job(recipe, budget, lr, mlp=""):
        if recipe != "homegpt":
            name = f"{recipe}_C{budget:.3g}_lr{lr:.3g}"
            return dict(base, recipe=recipe, budget=budget, lr=lr, run_dir=str(Path(base["out"]) / "runs" / name))
        name = f"{recipe}-{mlp}_C{budget:.3g}_lr{lr:.3g}"
        return dict(base, recipe=recipe, mlp=mlp, budget=budget, lr=lr, run_dir=str(Path(base["out"]) / "runs" / name))

    grids = {r: list(GRIDS[r])[:grid_size] if grid_size < 3 else list(GRIDS[r]) for r in recipes}
    variants = [(r, m) for r in recipes for m in (mlps if r == "homegpt" else ("",))]
    table = run_all([job(r, b, lr, m) for r, m in variants for b in budgets for lr in grids[r]], workers, log)
    for _ in range(max_extend):
        more = []
        for r, m in variants:
            name = series(dict(recipe=r, mlp=m))
            for b in budgets:
                runs = sorted((x for x in table if series(x) == name and x["budget"] == b), key=lambda x: x["lr"])
                if len(runs) < 2:
                    continue
                best = min(runs, key=lambda x: x["bpb"])
                if best is runs[0]:
                    more.append(job(r, b, runs[0]["lr"] / STEP_FACTOR[r], m))
                elif best is runs[-1]:
                    more.append(job(r, b, runs[-1]["lr"] * STEP_FACTOR[r], m))
        if not more:
            break
        log(f"extending {len(more)} grids past an edge")
        table += run_all(more, workers, log)
    return table


def report(table: list[dict], budgets: list[float], recipes: list[str], log,
           mlps: tuple[str, ...] = ("swiglu",)) -> dict:
    """The tables: best bpb per row and budget; (c)'s multipliers (each MLP's) against (b), (a) and the other
    MLPs; bpb at equal training seconds. The top-level multipliers are the first MLP's (the defaults)."""
    best = best_runs(table)
    ours = [f"homegpt-{m}" for m in mlps] if "homegpt" in recipes else []
    rows = [r for r in recipes if r != "homegpt"] + ours
    log("\nheld-out bits per byte at the best lr (lr in brackets)")
    extra = sorted({b for (_, b) in best if b not in budgets})
    for b in extra:
        log(f"  also at C={b:.3g}: " + ", ".join(f"{label(r)} {best[(r, b)]['bpb']:.4f} (lr {best[(r, b)]['lr']:.3g})"
                                            for r in rows if (r, b) in best))
    log(f"{'budget (FLOPs)':>15s}  " + "  ".join(f"{label(r):>24s}" for r in rows))
    for b in budgets:
        log(f"{b:15.3g}  " + "  ".join(f"{best[(r, b)]['bpb']:>14.4f} ({best[(r, b)]['lr']:<7.3g})" for r in rows))
    out: dict = {"best": [best[(r, b)] for r in rows for b in budgets], "by_mlp": {}}
    for name in ours:
        mine: dict = {}
        baselines = [("nanogpt", "multiplier_vs_nanogpt"), ("seed", "multiplier_vs_seed")]
        baselines += [(o, f"multiplier_vs_{o.removeprefix('homegpt-')}") for o in ours if o != name]
        for baseline, key in baselines:
            if baseline not in recipes and baseline not in ours:
                continue
            mine[key] = multipliers(best, budgets, baseline, ours_name=name)
            mine[key.replace("multiplier", "wallclock_multiplier")] = multipliers(best, budgets, baseline, "train_s",
                                                                              ours_name=name)
            log(f"\ncompute multiplier of {label(name)} against {label(baseline)}: the FLOPs {label(baseline)} needs "
                f"for {label(name)}'s bpb / {label(name)}'s FLOPs")
            for m in mine[key]:
                log(f"  C={m['budget']:.3g}: {m['bpb']:.4f} bpb -> {_say(m)}")
        mine["wallclock"] = []
        log(f"\nbits per byte at equal training seconds (this machine, one thread per run): {label(name)}")
        for b in budgets:
            run = best[(name, b)]
            row = {"budget": b, "train_s": run["train_s"], "homegpt_bpb": run["bpb"]}
            for r in rows:
                if r != name:
                    y, outside = bpb_at([(v["train_s"], v["bpb"]) for (n, _), v in best.items() if n == r],
                                        run["train_s"])
                    row[f"{r}_bpb"], row[f"{r}_extrapolated"] = y, outside
            mine["wallclock"].append(row)
            log(f"  {run['train_s']:.0f} s: {run['bpb']:.4f}; " + "; ".join(
                f"{label(r)} {row[f'{r}_bpb']:.4f}{' (extrapolated)' if row[f'{r}_extrapolated'] else ''}"
                for r in rows if r != name))
        out["by_mlp"][name.removeprefix("homegpt-")] = mine
    if ours:
        first = out["by_mlp"][mlps[0]]
        top = ("multiplier_vs_nanogpt", "multiplier_vs_seed", "wallclock_multiplier_vs_nanogpt",
               "wallclock_multiplier_vs_seed", "wallclock")
        out.update({k: first[k] for k in top if k in first})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="builtin", help="a homegpt source, or 'pydoc' (CPython's language reference)")
    ap.add_argument("--budgets", default="1e12,3.16e12,1e13", help="comma-separated FLOP budgets")
    ap.add_argument("--shape", default="4x128", help="LAYERSxWIDTH for every recipe (heads of 32)")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--homegpt-mlp", default=",".join(MLPS["modern"]),
                    help="the MLPs (c) runs with, each its own row and tuning; the first is the one the top-level "
                    f"multipliers are of (default: {','.join(MLPS['modern'])}, the default first)")
    ap.add_argument("--workers", type=int, default=2, help="runs at a time, one thread each")
    ap.add_argument("--grid", type=int, default=3, help="lr values per recipe and budget before extension")
    ap.add_argument("--max-extend", type=int, default=2, help="extra lrs past an edge of the grid, at most")
    ap.add_argument("--extend", default="3.16e13", help="extra budgets for (a) and (b) at their best lr "
                    "('' = none): their curves then reach (c)'s bits per byte")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--out", default="runs/recipe_efficiency")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2x64, budgets 1e11..1e12, 2 lrs, no extension")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    if args.quick:
        args.budgets, args.shape, args.grid, args.max_extend = "1e11,3.16e11,1e12", "2x64", 2, 0
    budgets = [float(x) for x in args.budgets.split(",")]
    recipes = [r for r in args.recipes.split(",") if r]
    if len(budgets) < 2 or any(r not in RECIPES for r in recipes):
        raise SystemExit(f"need >= 2 budgets and recipes from {', '.join(RECIPES)}")
    mlps = tuple(m for m in args.homegpt_mlp.split(",") if m)
    if not mlps or any(m not in MLPS["modern"] for m in mlps):
        raise SystemExit(f"--homegpt-mlp: one or more of {', '.join(MLPS['modern'])}")
    out = Path(args.out)
    source = pydoc_corpus(out) if args.data == "pydoc" else args.data
    data_dir = prepare_data(source, out, log)
    shape = tuple(int(x) for x in args.shape.lower().split("x"))
    rows, real = seed_lines(source, data_dir, args.seed)
    log(f"(a) pads {len(rows):,} sentences to {SEED_LEN} tokens: {real:.1%} of its training tokens are text")
    base = {"source": source, "data_dir": str(data_dir), "shape": shape, "seed": args.seed, "out": str(out)}
    t0 = time.perf_counter()
    table = tune(recipes, budgets, base, args.grid, args.max_extend, args.workers, log, mlps)
    extra = [float(x) for x in args.extend.split(",") if x] if not args.quick else []
    table += extend_baselines(table, budgets, extra, base, args.workers, log)
    result = report(table, budgets, recipes, log, mlps)
    result.update(table=table, data=source, shape=list(shape), budgets=budgets, mlps=list(mlps), vocab_size=VOCAB,
                  batch_tokens=BATCH_TOKENS, seed_real_token_share=real, seconds=round(time.perf_counter() - t0, 1))
    log(f"\n{len(table)} runs in {result['seconds']:.0f} s")
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
