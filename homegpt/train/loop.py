"""The training loop: accumulation to a token batch, the schedule, evaluation, checkpoints, a time budget.

One call, `train(cfg, out_dir)`, does a whole run into a run directory (see checkpoint.py for its layout)
and returns the final held-out metrics. Resuming restores weights, optimizer moments, the schedule
position, every RNG and the data loader's generator, so a resumed run continues the identical trajectory.

The same code runs as one process or as many under `torchrun` (DistributedDataParallel, or FSDP2 with
`parallel = "fsdp"`; NCCL on GPUs, gloo on CPU). Every step draws the same set of windows whatever the
number of processes and splits them between the ranks, so the tokens per step and the results do not
depend on how many ranks there are.
SIGTERM / SIGINT finish the current step, write a checkpoint and stop (exit code EXIT_PREEMPTED).

It trains on what `data_dir` holds: `homegpt prepare`'s token shards, or the packed conversations of
`homegpt sft` (packed.py), whose targets outside the assistant's turns carry no loss; an SFT run is this
same loop, started from its base run's weights (sft.py).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from homegpt import __version__
from homegpt.data.loader import TokenLoader
from homegpt.data.packed import check_data, training_loader
from homegpt.data.prepare import read_manifest
from homegpt.data.tokenizer import EOT, load_tokenizer, token_byte_lengths
from homegpt.errors import UserError
from homegpt.model.gpt import GPT, GPTConfig, count_params, flops_per_token
from homegpt.rundir.checkpoint import (
    checkpoint_dirs,
    load_weights,
    model_state,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
    unwrap,
)
from homegpt.runtime.device import (
    autocast_for,
    enable_fast_matmul,
    find_micro_batch,
    is_out_of_memory,
    make_scaler,
    pick_device,
    resolve_dtype,
    tune_cpu_allocator,
)
from homegpt.runtime.distributed import agree, broadcast_object, full_tensor, init_distributed, min_int, shard_model
from homegpt.train.config import TrainConfig, dump_toml
from homegpt.train.heldout import evaluate_held_out, open_held_out
from homegpt.train.logs import RunLoggers, truncate_metrics
from homegpt.train.meter import Meter, peak_flops
from homegpt.train.optim import apply_schedule, load_optimizer_tensors, make_optimizer, optimizer_tensors, parts
from homegpt.train.timebudget import TimeBudget

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "stopped on a signal, checkpoint written; rerun with --resume"
MAX_BAD_STEPS = 5


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
        for name in ("checkpoints", "metrics.csv", "samples.txt", "loss.png", "eval.json", "tensorboard"):
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


class _Preemption:
    """Turns SIGTERM/SIGINT into a flag checked once per step, so the step in flight completes."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    log=None,
    stop_after: int | None = None,
) -> dict:
    """Train into out_dir; returns final held-out metrics and run facts (on rank 0; other ranks: {}).

    stop_after ends the call after that many optimizer steps (checkpointing first), as an interruption
    would, without changing the schedule: used to test and demonstrate exact resume.
    """
    rank, world, device = init_distributed(cfg.device)
    main_rank = rank == 0
    if device.type == "cpu":
        tune_cpu_allocator()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out_dir)
    cfg = cfg.resolved(arch=_previous_arch(out) if resume else None)  # every "auto" made concrete
    manifest, mcfg = resolve(cfg)
    checked = check_data(cfg.data_dir, manifest)  # every shard, before anything of the run is written
    resume_from = _prepare_run_dir(out, resume, force) if main_rank else None
    if resume_from is not None and _model_of(_read_run_info(out)) != mcfg.to_dict():
        raise UserError(f"{out} was trained with another model shape or tokenizer: "
                        f"resume with its own config (homegpt train {out} --resume)")
    chosen = broadcast_object(str(resume_from) if resume_from else "", world)  # every rank resumes rank 0's pick
    resume_from = Path(chosen) if chosen else None
    enable_fast_matmul(device)
    autocast = autocast_for(device, cfg.dtype)
    scaler = make_scaler(device, cfg.dtype)
    fsdp = world > 1 and cfg.parallel == "fsdp"
    if fsdp:
        check_fsdp(cfg, device)
    # With FSDP the weights are sharded: every rank takes part in evaluating and in gathering checkpoints.
    evaluating_rank = main_rank or fsdp
    tok = load_tokenizer(Path(cfg.data_dir) / "tokenizer.json")
    _seed_everything(cfg.seed)
    model = GPT(mcfg).to(device)
    ckpt = read_checkpoint(resume_from) if resume_from is not None else None
    if ckpt is not None:  # whole weights go in before any sharding
        load_weights(model, ckpt[0], resume_from)
    micro = cfg.micro_batch or (ckpt[3].get("micro_batch", 0) if ckpt else 0)
    # With FSDP the probe runs on the whole model, before sharding: a safe, conservative choice.
    micro = micro or auto_micro_batch(model, cfg, mcfg, device, autocast, world)
    if fsdp:
        shard_model(model, compile_blocks=cfg.compile_enabled(device))
    optimizer = make_optimizer(model, cfg, device)  # after sharding: it must hold the sharded parameters
    if main_rank and not cfg.micro_batch:
        log(f"micro_batch = {micro} (chosen automatically for {device})")
    if main_rank:
        log(f"data: {checked['shards']} shards, {checked['bytes'] / 1e9:.2f} GB checked (sizes, token ids, SHA-256) "
            f"in {checked['seconds']:.1f} s")
    eval_batch = max(micro, 8)  # no gradients to hold: evaluation can batch wider than training
    tokens_per_micro = micro * mcfg.block_size
    accum = max(1, round(cfg.batch_tokens / (tokens_per_micro * world)))
    batch_tokens = accum * tokens_per_micro * world  # what a step really holds (whole windows)
    total_steps = cfg.total_steps()
    # token shards (prepare) or packed conversations (sft, with their loss mask): packed.py
    loader = training_loader(cfg.data_dir, manifest, mcfg.block_size, micro, accum, cfg.seed, device, rank, world,
                             cfg.data_order)
    val_tokens = open_held_out(cfg.data_dir, manifest)
    token_bytes = torch.tensor(token_byte_lengths(tok, mcfg.vocab_size), dtype=torch.long)
    params = count_params(mcfg)

    step, elapsed, best_val, wall = 0, 0.0, float("inf"), 0.0
    if ckpt is not None:
        _, optim, rng, state = ckpt
        load_optimizer_tensors(model, optimizer, optim)
        restore_rng(state, rng)
        loader.load_state_dict(state.get("loader", rng["loader"]))
        if scaler is not None and "grad_scaler" in state:
            scaler.load_state_dict(state["grad_scaler"])
        step, elapsed, best_val = state["step"], state["elapsed_s"], state.get("best_val_loss", float("inf"))
        wall = state.get("wall_s", elapsed)
        if cfg.max_seconds > 0:  # a time-budgeted run keeps the length it had planned
            total_steps = int(state.get("total_steps", total_steps))
        if main_rank:
            (out / "config.toml").write_text(dump_toml(cfg.to_dict()), encoding="utf-8")  # overrides now apply
            truncate_metrics(out / "metrics.csv", step)  # rows past the checkpoint are being redone
            log(f"resuming {out} from step {step}")
    elif main_rank:
        out.mkdir(parents=True, exist_ok=True)
        _write_run_files(out, cfg, mcfg, manifest, params, world)

    run_model = torch.compile(model) if cfg.compile_enabled(device) and not fsdp else model
    if world > 1 and not fsdp:
        run_model = torch.nn.parallel.DistributedDataParallel(
            run_model, device_ids=[device.index] if device.type == "cuda" else None)
    peak, peak_source = peak_flops(device, cfg.peak_tflops or None)
    meter = Meter(flops_per_token(mcfg), peak * world, total_steps, cfg.price, elapsed)
    loggers = RunLoggers(out, cfg, main_rank)
    if main_rank:
        log(f"{params['total']:,} parameters ({params['non_embedding']:,} non-embedding), {batch_tokens:,} tokens "
            f"per step on {world} x {device}{' (FSDP)' if fsdp else ''}; MFU against {peak / 1e12:.2f} TFLOP/s "
            f"({peak_source})")
        if fsdp and cfg.sample_tokens > 0:
            log("samples during training are off under FSDP (the weights are sharded): homegpt sample RUN after")
    bar = tqdm(total=total_steps, initial=step, disable=not (progress and main_rank), file=sys.stderr,
               unit="step", dynamic_ncols=True)
    steps_this_call, bad_steps, final = 0, 0, None
    model.train()
    with _Preemption() as preempt:
        t_last = time.perf_counter()
        budget = TimeBudget(cfg, wall)
        while step < total_steps:
            if cfg.max_seconds > 0:
                total_steps = budget.replan(step, total_steps, meter.tokens_per_s, batch_tokens, world, device)
                meter.total_steps = bar.total = total_steps
            lr = apply_schedule(optimizer, step, cfg, total_steps)
            train_loss, finite = _train_step(run_model, model, optimizer, scaler, loader, autocast, cfg.grad_clip,
                                             world, fsdp)
            if not finite:
                bad_steps += 1
                if bad_steps >= MAX_BAD_STEPS:
                    raise UserError(f"loss or gradients were not finite for {bad_steps} steps in a row at step "
                                    f"{step}: lower lr (now {cfg.lr}) or use dtype = \"fp32\"")
                if main_rank:
                    log(f"step {step}: non-finite loss or gradient, update skipped")
            else:
                bad_steps = 0
            step += 1
            steps_this_call += 1
            now = time.perf_counter()
            meter.step(batch_tokens, now - t_last)
            spent, projected = meter.cost(step)
            row = {"step": step, "tokens": step * batch_tokens, "elapsed_s": round(meter.elapsed, 3), "lr": lr,
                   "train_loss": train_loss, "tokens_per_s": round(meter.tokens_per_s, 1),
                   "mfu": round(meter.mfu, 4), "cost_usd": round(spent, 6) if cfg.price else ""}
            last = step == total_steps
            step_val = None  # this step's held-out loss on the periodic tokens: ranks the checkpoints
            if evaluating_rank and (step % cfg.eval_interval == 0 or last):
                ev, step_val = _evaluate(model, val_tokens, token_bytes, eval_batch, cfg, autocast, last)
                row.update(val_loss=ev["loss"], val_bpb=ev["bpb"])
                final, best_val = ev, min(best_val, step_val)
            if main_rank and step_val is not None:
                msg = (f"step {step}/{total_steps}  train {train_loss:.4f}  val {ev['loss']:.4f}  "
                       f"bpb {ev['bpb']:.3f}  {meter.tokens_per_s:,.0f} tok/s  MFU {meter.mfu:.1%}"
                       + (f"  ${spent:.2f} of ~${projected:.2f}" if cfg.price else ""))
                bar.write(msg, file=sys.stderr) if progress else log(msg)
                if cfg.sample_tokens > 0 and not fsdp:
                    _write_sample(out, model, tok, step, cfg, mcfg)
            if main_rank:
                loggers.write(row)
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{meter.tokens_per_s:,.0f}", mfu=f"{meter.mfu:.1%}")
                bar.update(1)
            stopping = agree(preempt.requested or (stop_after is not None and steps_this_call >= stop_after),
                             world, device)
            if step % (cfg.checkpoint_interval or cfg.eval_interval) == 0 or last or stopping:
                if evaluating_rank:
                    weights, optim = model_state(model), optimizer_tensors(model, optimizer)
                if main_rank:
                    state = {"tokens": step * batch_tokens, "elapsed_s": meter.elapsed, "best_val_loss": best_val,
                             "wall_s": budget.wall(),
                             "total_steps": total_steps, "world_size": world, "micro_batch": micro,
                             "loader": loader.state_dict()}
                    if step_val is not None:
                        state["val_loss"] = step_val
                    if scaler is not None:
                        state["grad_scaler"] = scaler.state_dict()
                    save_checkpoint(out, step, weights, optim, loader.gen.get_state(), state, cfg.keep_checkpoints)
                if world > 1:
                    dist.barrier()
            if stopping and not last:
                bar.close()
                loggers.close()
                if main_rank:
                    log(f"stopped at step {step}, checkpoint written: continue with homegpt train {out} --resume")
                return {"step": step, "finished": False, "preempted": preempt.requested, "run_dir": str(out)}
            t_last = time.perf_counter()  # evaluation and checkpoint time isn't training time
            budget.bookkeeping(t_last - now, evaluated=step_val is not None)
    bar.close()
    loggers.close()
    if final is None or steps_this_call == 0:  # resumed a finished run: evaluate anyway
        if evaluating_rank:
            final = evaluate_held_out(model, val_tokens, token_bytes, eval_batch, None, autocast)
    if not main_rank:
        return {}
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
        "train_seconds": round(meter.elapsed, 2),
        "train_tokens_per_s": round(step * batch_tokens / max(1e-9, meter.elapsed), 1),
        "epochs": round(step * batch_tokens / manifest["splits"]["train"]["tokens"], 3),
        "world_size": world,
    }
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    from homegpt.train.plot import plot_loss_curve

    plot_loss_curve(out / "metrics.csv", out / "loss.png")
    return result


def check_fsdp(cfg: TrainConfig, device: torch.device) -> None:
    """What FSDP training here does not support (yet), as a UserError before anything is written."""
    if resolve_dtype(device, cfg.dtype) == "fp16":  # a GradScaler does not handle sharded gradients
        raise UserError('parallel = "fsdp" trains in bf16 or fp32, not fp16: set dtype = "bf16" or "fp32"')
    if cfg.optimizer == "muon":  # torch.optim.Muon would orthogonalise each rank's slice, not the matrix
        raise UserError('optimizer = "muon" needs whole matrices, and parallel = "fsdp" shards them: use '
                        'parallel = "ddp" or optimizer = "adamw"')


def _evaluate(model, val_tokens, token_bytes, batch: int, cfg: TrainConfig, autocast,
              final: bool) -> tuple[dict, float]:
    """(metrics to report, the loss that ranks checkpoints for `best`).

    During training: the first eval_tokens held-out tokens, the same ones each time. At the end: the whole
    split, and, when the split is longer, those first eval_tokens again so the last checkpoint ranks fairly.
    """
    ev = evaluate_held_out(model, val_tokens, token_bytes, batch, None if final else cfg.eval_tokens, autocast)
    if final and len(val_tokens) > cfg.eval_tokens + 1:
        return ev, evaluate_held_out(model, val_tokens, token_bytes, batch, cfg.eval_tokens, autocast)["loss"]
    return ev, ev["loss"]


def _train_step(run_model, model, optimizer, scaler, loader: TokenLoader, autocast, grad_clip: float, world: int,
                fsdp: bool = False):
    """One optimizer step over this rank's micro-batches; returns (mean loss over all ranks, finite?)."""
    batches = loader.next_step()
    loss_sum = torch.zeros((), device=next(model.parameters()).device)
    for i, (x, y) in enumerate(batches):
        # DDP: all-reduce gradients only on the last micro-batch of the step. FSDP reduce-scatters every
        # micro-batch's gradients, so that no rank ever holds a whole unsharded gradient.
        sync = world == 1 or fsdp or i == len(batches) - 1
        with (nullcontext() if sync else run_model.no_sync()), autocast:
            _, loss = run_model(x, y)
        scaled = loss / len(batches)
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += loss.detach()
    if world > 1:
        dist.all_reduce(loss_sum)
    train_loss = float(loss_sum) / (len(batches) * world)
    if scaler is not None:
        for opt in parts(optimizer):
            scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    norm = full_tensor(norm)  # FSDP: a DTensor holding the global norm
    if scaler is not None:
        # fp16: the scaler skips steps with inf/nan gradients itself and lowers the scale, which is routine
        # while it calibrates; only a non-finite loss counts as a bad step.
        for opt in parts(optimizer):
            scaler.step(opt)
        scaler.update()
        finite = math.isfinite(train_loss)
    else:
        finite = math.isfinite(train_loss) and math.isfinite(float(norm))
        if finite:  # a non-finite loss or gradient would poison the weights: skip the update
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return train_loss, finite


def auto_micro_batch(model: GPT, cfg: TrainConfig, mcfg: GPTConfig, device: torch.device, autocast,
                     world: int) -> int:
    """The largest micro-batch that fits: probed with real forward/backward passes on a GPU.

    Never more than one step's worth of sequences per rank; on CPU and MPS (no out-of-memory signal worth
    probing: they swap) at most 16. Probing runs in eval mode on a private generator, so it draws nothing
    from the RNGs the run depends on. All ranks take the smallest choice.
    """
    largest = max(1, cfg.batch_tokens // (mcfg.block_size * world))
    if device.type != "cuda":
        chosen = find_micro_batch(lambda n: True, min(16, largest))
    else:
        gen = torch.Generator(device=device).manual_seed(0)

        n_params = sum(p.numel() for p in model.parameters())

        def fits(n: int) -> bool:
            x = torch.randint(0, mcfg.vocab_size, (n, mcfg.block_size), device=device, generator=gen)
            model.eval()
            try:
                # AdamW's two moments don't exist until the first step: hold their memory during the probe.
                moments = torch.empty(2 * n_params, device=device)  # noqa: F841
                with autocast:
                    _, loss = model(x, x)
                loss.backward()
                return True
            except RuntimeError as e:
                if not is_out_of_memory(e):
                    raise
                return False
            finally:
                model.zero_grad(set_to_none=True)
                model.train()
                torch.cuda.empty_cache()

        chosen = find_micro_batch(fits, largest)
    return min_int(chosen, world, device)


def _previous_arch(out: Path) -> str | None:
    """The architecture of the run being resumed (runs from before `arch` existed are GPT-2)."""
    try:
        model = json.loads((out / "run.json").read_text(encoding="utf-8"))["model"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
    return model.get("arch", "gpt2") if isinstance(model, dict) else None


def _model_of(info: dict) -> dict | None:
    """run.json's model with every setting spelled out (older runs recorded fewer)."""
    try:
        return GPTConfig.from_dict(info.get("model") or {}).to_dict()
    except (UserError, TypeError):
        return None


def _read_run_info(out: Path) -> dict:
    try:
        return json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{out}/run.json is missing or damaged: cannot resume") from None


def _write_run_files(out: Path, cfg: TrainConfig, mcfg: GPTConfig, manifest: dict, params: dict, world: int) -> None:
    shutil.copyfile(Path(cfg.data_dir) / "tokenizer.json", out / "tokenizer.json")
    (out / "config.toml").write_text(dump_toml(cfg.to_dict()), encoding="utf-8")
    info = {
        "homegpt_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": mcfg.to_dict(),
        "params": params,
        "optimizer": cfg.optimizer,
        "schedule": cfg.schedule,
        "data_dir": str(Path(cfg.data_dir).resolve()),
        "data_source": manifest.get("source", ""),
        "tokenizer_sha256": manifest["tokenizer_sha256"],
        "dtype": cfg.dtype,
        "eot": EOT,
        "world_size": world,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and cfg.device != "cpu" else "cpu",
    }
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _write_sample(out: Path, model: GPT, tok, step: int, cfg: TrainConfig, mcfg: GPTConfig) -> None:
    """A short sample from a fixed seed, so samples at different steps are comparable."""
    from homegpt.generate.sample import generate_text

    n = min(cfg.sample_tokens, mcfg.block_size - 8)
    # The sample uses its own generator, so the training RNG stream (and exact resume) is untouched.
    text = generate_text(unwrap(model), tok, cfg.sample_prompt, n, temperature=0.8, top_k=50, seed=cfg.seed)
    with open(out / "samples.txt", "a", encoding="utf-8") as f:
        f.write(f"--- step {step}\n{cfg.sample_prompt}{text}\n")
    model.train()


def measure_throughput(cfg: TrainConfig, vocab_size: int, steps: int = 3, device: str | None = None) -> dict:
    """Time real forward/backward/optimizer steps of cfg's model on random tokens: tokens/s and FLOP/s."""
    cfg = cfg.resolved()
    mcfg = cfg.model_config(vocab_size)
    dev = pick_device(device or cfg.device)
    if dev.type == "cpu":
        tune_cpu_allocator()
    autocast = autocast_for(dev, cfg.dtype)
    model = GPT(mcfg).to(dev)
    optimizer = make_optimizer(model, cfg, dev)
    micro = cfg.micro_batch or 16
    x = torch.randint(0, vocab_size, (micro, mcfg.block_size), device=dev)
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
    tps = micro * mcfg.block_size / min(times)  # the best step: a busy machine only ever slows a step down
    return {"tokens_per_s": tps, "flops_per_s": tps * flops_per_token(mcfg), "device": str(dev),
            "params": count_params(mcfg)["total"]}
