"""The training loop: AdamW, warmup + cosine schedule, accumulation to a token batch, eval, checkpoints.

One call, `train(cfg, out_dir)`, does a whole run into a run directory (see checkpoint.py for its layout)
and returns the final held-out metrics. Resuming restores weights, optimizer moments, the schedule
position, every RNG and the data loader's generator, so a resumed run continues the identical trajectory.
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from homegpt import __version__
from homegpt.checkpoint import (
    autocast_for,
    checkpoint_dirs,
    load_optimizer_tensors,
    load_weights,
    pick_device,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
)
from homegpt.config import TrainConfig, dump_toml
from homegpt.errors import UserError
from homegpt.evaluate import evaluate_tokens
from homegpt.model import GPT, GPTConfig, count_params, flops_per_token
from homegpt.prepare import open_split, read_manifest
from homegpt.tokenizer import EOT, file_sha256, load_tokenizer, token_byte_lengths

METRICS_FIELDS = ["step", "tokens", "elapsed_s", "lr", "train_loss", "val_loss", "val_bpb", "tokens_per_s"]


def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warmup to cfg.lr, then cosine decay to min_lr_ratio * lr at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Weight decay on matrices only: decaying biases and LayerNorm gains only hurts."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


class Loader:
    """Random windows of block_size + 1 tokens from a memory-mapped split, from a seeded generator.

    The generator's state is saved in every checkpoint, so a resumed run draws the same windows.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch: int, seed: int, device: torch.device):
        if len(tokens) < block_size + 2:
            raise UserError(
                f"the training split has {len(tokens)} tokens, fewer than one window of {block_size + 1}: "
                f"lower block_size or give more text"
            )
        self.tokens, self.block, self.batch, self.device = tokens, block_size, batch, device
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(self.tokens) - self.block - 1, (self.batch,), generator=self.gen)
        rows = np.stack([np.asarray(self.tokens[s : s + self.block + 1], dtype=np.int64) for s in starts.tolist()])
        batch = torch.from_numpy(rows)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        return batch[:, :-1], batch[:, 1:]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _prepare_run_dir(out: Path, resume: bool, force: bool) -> Path | None:
    """Refuse to mix runs; return the checkpoint to resume from, if any."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    has_run = (out / "run.json").exists()
    if resume:
        ckpts = checkpoint_dirs(out)
        return ckpts[-1] if ckpts else None
    if has_run and not force:
        raise UserError(f"{out} already holds a run: pass --resume to continue it, --force to start over")
    if has_run and force:
        for name in ("checkpoints", "metrics.csv", "samples.txt", "loss.png", "eval.json"):
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    elif out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out} is not empty and holds no homegpt run: choose another --out or pass --force")
    return None


def resolve(cfg: TrainConfig) -> tuple[dict, GPTConfig]:
    """Check the data and build the model config; raises UserError before anything is written."""
    if not cfg.data_dir:
        raise UserError("no data_dir in the config: point it at a `homegpt prepare` output")
    manifest = read_manifest(cfg.data_dir)
    return manifest, cfg.model_config(manifest["model_vocab_size"])


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    log=None,
    stop_after: int | None = None,
) -> dict:
    """Train into out_dir; returns final held-out metrics and run facts.

    stop_after ends the call after that many optimizer steps (checkpointing first), as an interruption
    would, without changing the schedule: used to test and demonstrate exact resume.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out_dir)
    manifest, mcfg = resolve(cfg)
    resume_from = _prepare_run_dir(out, resume, force)
    if resume_from is not None:
        saved = _read_run_config(out)
        if saved.get("model") != mcfg.to_dict():
            raise UserError(f"{out} was trained with another model shape or tokenizer: "
                            f"resume with its own config (homegpt train --resume {out})")
    device = pick_device(cfg.device)
    autocast = autocast_for(device, cfg.dtype)
    tok = load_tokenizer(Path(cfg.data_dir) / "tokenizer.json")
    _seed_everything(cfg.seed)
    model = GPT(mcfg).to(device)
    optimizer = make_optimizer(model, cfg, device)
    train_tokens = open_split(cfg.data_dir, "train", manifest)
    val_tokens = open_split(cfg.data_dir, "val", manifest)
    tokens_per_micro = cfg.micro_batch * mcfg.block_size
    accum = max(1, round(cfg.batch_tokens / tokens_per_micro))
    batch_tokens = accum * tokens_per_micro  # what a step really holds (batch_tokens rounded to whole windows)
    total_steps = cfg.total_steps()
    loader = Loader(train_tokens, mcfg.block_size, cfg.micro_batch, cfg.seed, device)
    token_bytes = torch.tensor(token_byte_lengths(tok, mcfg.vocab_size), dtype=torch.long)
    params = count_params(mcfg)

    step, elapsed, best_val = 0, 0.0, float("inf")
    if resume_from is not None:
        weights, optim, rng, state = read_checkpoint(resume_from)
        load_weights(model, weights, resume_from)
        load_optimizer_tensors(model, optimizer, optim)
        restore_rng(state, rng)
        loader.gen.set_state(rng["loader"])
        step, elapsed, best_val = state["step"], state["elapsed_s"], state.get("best_val_loss", float("inf"))
        (out / "config.toml").write_text(dump_toml(cfg.to_dict()), encoding="utf-8")  # overrides now apply
        log(f"resuming {out} from step {step}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        _write_run_files(out, cfg, mcfg, manifest, params)

    run_model = torch.compile(model) if cfg.compile else model
    fpt = flops_per_token(mcfg)
    metrics = _MetricsWriter(out / "metrics.csv")
    bar = tqdm(total=total_steps, initial=step, disable=not progress, file=sys.stderr, unit="step", dynamic_ncols=True)
    t_last, tokens_since = time.perf_counter(), 0
    steps_this_call = 0
    bad_steps = 0
    model.train()
    while step < total_steps:
        lr = lr_at(step, cfg, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for _ in range(accum):
            x, y = loader.next()
            with autocast:
                _, loss = run_model(x, y)
            (loss / accum).backward()
            loss_sum += loss.item()
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        else:
            norm = torch.tensor(0.0)
        train_loss = loss_sum / accum
        if not (math.isfinite(train_loss) and math.isfinite(float(norm))):
            # A non-finite loss or gradient would poison the weights: skip this step's update.
            optimizer.zero_grad(set_to_none=True)
            bad_steps += 1
            if bad_steps >= 5:
                raise UserError(f"loss or gradients were not finite for {bad_steps} steps in a row at step {step}: "
                                f"lower lr (now {cfg.lr}) or use dtype = \"fp32\"")
            log(f"step {step}: non-finite loss or gradient, update skipped")
        else:
            bad_steps = 0
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        step += 1
        steps_this_call += 1
        now = time.perf_counter()
        elapsed += now - t_last
        tokens_since += batch_tokens
        tps = batch_tokens / max(1e-9, now - t_last)
        t_last = now
        row = {"step": step, "tokens": step * batch_tokens, "elapsed_s": round(elapsed, 3), "lr": lr,
               "train_loss": train_loss, "tokens_per_s": round(tps, 1)}
        last = step == total_steps
        ckpt_every = cfg.checkpoint_interval or cfg.eval_interval
        if step % cfg.eval_interval == 0 or last:
            ev = evaluate_tokens(model, val_tokens, token_bytes, cfg.micro_batch,
                                 None if last else cfg.eval_tokens, autocast)
            row.update(val_loss=ev["loss"], val_bpb=ev["bpb"])
            final = ev
            best_val = min(best_val, ev["loss"])
            msg = (f"step {step}/{total_steps}  train {train_loss:.4f}  val {ev['loss']:.4f}  "
                   f"bpb {ev['bpb']:.3f}  {tps:,.0f} tok/s  {fpt * tps / 1e9:.1f} GFLOP/s")
            bar.write(msg, file=sys.stderr) if progress else log(msg)
            if cfg.sample_tokens > 0:
                _write_sample(out, model, tok, step, cfg, mcfg)
        metrics.write(row)
        bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tps:,.0f}")
        bar.update(1)
        interrupted = stop_after is not None and steps_this_call >= stop_after
        if step % ckpt_every == 0 or last or interrupted:
            state = {"tokens": step * batch_tokens, "elapsed_s": elapsed, "best_val_loss": best_val,
                     "total_steps": total_steps}
            save_checkpoint(out, step, model, optimizer, loader.gen.get_state(), state, cfg.keep_checkpoints)
            t_last = time.perf_counter()  # checkpoint time isn't training time
        if interrupted and not last:
            bar.close()
            return {"step": step, "finished": False, "run_dir": str(out)}
    bar.close()
    if steps_this_call == 0:  # resumed a finished run: nothing trained in this call, evaluate anyway
        final = evaluate_tokens(model, val_tokens, token_bytes, cfg.micro_batch, None, autocast)
    result = {
        "run_dir": str(out),
        "finished": True,
        "step": step,
        "val_loss": final["loss"],
        "val_perplexity": final["perplexity"],
        "val_bpb": final["bpb"],
        "val_tokens": final["tokens"],
        "params": params["total"],
        "params_non_embedding": params["non_embedding"],
        "tokens_trained": step * batch_tokens,
        "train_seconds": round(elapsed, 2),
        "train_tokens_per_s": round(step * batch_tokens / max(1e-9, elapsed), 1),
        "epochs": round(step * batch_tokens / manifest["splits"]["train"]["tokens"], 3),
    }
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    from homegpt.plot import plot_loss_curve

    plot_loss_curve(out / "metrics.csv", out / "loss.png")
    return result


def _read_run_config(out: Path) -> dict:
    try:
        return json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{out}/run.json is missing or damaged: cannot resume") from None


def _write_run_files(out: Path, cfg: TrainConfig, mcfg: GPTConfig, manifest: dict, params: dict) -> None:
    shutil.copyfile(Path(cfg.data_dir) / "tokenizer.json", out / "tokenizer.json")
    (out / "config.toml").write_text(dump_toml(cfg.to_dict()), encoding="utf-8")
    info = {
        "homegpt_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": mcfg.to_dict(),
        "params": params,
        "data_dir": str(Path(cfg.data_dir).resolve()),
        "data_source": manifest.get("source", ""),
        "tokenizer_sha256": manifest["tokenizer_sha256"],
        "dtype": cfg.dtype,
        "eot": EOT,
    }
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    assert file_sha256(out / "tokenizer.json") == manifest["tokenizer_sha256"]


class _MetricsWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            with open(path, "w", newline="") as f:
                csv.DictWriter(f, METRICS_FIELDS).writeheader()

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, METRICS_FIELDS).writerow(row)


def _write_sample(out: Path, model: GPT, tok, step: int, cfg: TrainConfig, mcfg: GPTConfig) -> None:
    """A short greedy-free sample (fixed seed, so samples at different steps are comparable)."""
    from homegpt.sample import generate_text

    n = min(cfg.sample_tokens, mcfg.block_size - 8)
    # The sample uses its own generator, so the training RNG stream (and exact resume) is untouched.
    text = generate_text(model, tok, cfg.sample_prompt, n, temperature=0.8, top_k=50, seed=cfg.seed)
    with open(out / "samples.txt", "a", encoding="utf-8") as f:
        f.write(f"--- step {step}\n{cfg.sample_prompt}{text}\n")
    model.train()


def measure_throughput(cfg: TrainConfig, vocab_size: int, steps: int = 3, device: str | None = None) -> dict:
    """Time real forward/backward/optimizer steps of cfg's model on random tokens: tokens/s and FLOP/s."""
    mcfg = cfg.model_config(vocab_size)
    dev = pick_device(device or cfg.device)
    autocast = autocast_for(dev, cfg.dtype)
    model = GPT(mcfg).to(dev)
    optimizer = make_optimizer(model, cfg, dev)
    x = torch.randint(0, vocab_size, (cfg.micro_batch, mcfg.block_size), device=dev)
    times = []
    for i in range(steps + 1):  # the first step warms up allocators and kernels: not timed
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with autocast:
            _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    tps = cfg.micro_batch * mcfg.block_size / (sum(times) / len(times))
    return {"tokens_per_s": tps, "flops_per_s": tps * flops_per_token(mcfg), "device": str(dev),
            "params": count_params(mcfg)["total"]}
