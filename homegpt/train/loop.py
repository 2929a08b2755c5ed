"""The training loop: train(cfg, out_dir) does a whole run into a run directory and returns the final
held-out metrics. It reads top to bottom: set up (session.py), then per step: re-plan a time budget,
take the optimizer step (step.py), evaluate (heldout.py), log, checkpoint and maybe stop; then finish.

Resuming restores weights, optimizer moments, the schedule position, every RNG and the data loader's
generator, so a resumed run continues the identical trajectory.

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
import signal
import sys
import time
from pathlib import Path

import torch

from homegpt.model.gpt import GPT, count_params, flops_per_token
from homegpt.progress import progress_bar
from homegpt.rundir.checkpoint import unwrap
from homegpt.runtime.device import autocast_for, pick_device, tune_cpu_allocator
from homegpt.runtime.distributed import agree
from homegpt.train.config import TrainConfig
from homegpt.train.heldout import evaluate_held_out, evaluate_in_training
from homegpt.train.optim import apply_schedule, make_optimizer
from homegpt.train.session import Session, open_session, save_state
from homegpt.train.step import BadSteps, train_step
from homegpt.train.timebudget import TimeBudget

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "stopped on a signal, checkpoint written; rerun with --resume"


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
    # --- setup: devices, config, run directory, model, optimizer, data; a resumed run's state (session.py)
    s = open_session(cfg, Path(out_dir), resume, force, log or (lambda msg: print(msg, file=sys.stderr)))
    cfg = s.cfg  # resolved
    bar = progress_bar(total=s.total_steps, initial=s.step, disable=not (progress and s.main_rank), unit="step",
                       desc="train")
    steps_this_call, bad_steps, final = 0, BadSteps(cfg.lr, s.log, s.main_rank), None
    s.model.train()
    with _Preemption() as preempt:
        t_last = time.perf_counter()
        budget = TimeBudget(cfg, s.wall_before, final_evals=len(s.val_tokens) / max(1, cfg.eval_tokens))
        while s.step < s.total_steps:
            # --- a time budget re-plans the run's length from the speed measured so far
            if cfg.max_seconds > 0:
                s.total_steps = budget.replan(s.step, s.total_steps, s.meter.tokens_per_s, s.batch_tokens, s.world,
                                              s.device)
                s.meter.total_steps = bar.total = s.total_steps
            # --- one optimizer step (a non-finite one is skipped)
            lr = apply_schedule(s.optimizer, s.step, cfg, s.total_steps)
            train_loss, finite = train_step(s.run_model, s.model, s.optimizer, s.scaler, s.loader, s.autocast,
                                            cfg.grad_clip, s.world, s.fsdp)
            bad_steps.count(finite, s.step)
            s.step += 1
            steps_this_call += 1
            now = time.perf_counter()
            s.meter.step(s.batch_tokens, now - t_last)
            last = s.step == s.total_steps
            # --- evaluate: the first eval_tokens held-out tokens, the whole split at the last step
            ev = step_val = None  # step_val: this step's loss on the periodic tokens, which ranks the checkpoints
            if s.evaluating_rank and (s.step % cfg.eval_interval == 0 or last):
                ev, step_val = evaluate_in_training(s.model, s.val_tokens, s.token_bytes, s.eval_batch,
                                                    cfg.eval_tokens, s.autocast, last)
                final, s.best_val = ev, min(s.best_val, step_val)
            # --- log: metrics.csv (TensorBoard, W&B), the progress bar; a line and a sample per evaluation
            if s.main_rank:
                _report(s, bar, progress, lr, train_loss, ev)
            # --- checkpoint: every checkpoint_interval steps, at the end, and before stopping
            stopping = agree(preempt.requested or (stop_after is not None and steps_this_call >= stop_after),
                             s.world, s.device)
            if s.step % (cfg.checkpoint_interval or cfg.eval_interval) == 0 or last or stopping:
                save_state(s, step_val, budget)
            if stopping and not last:  # a signal, or stop_after
                bar.close()
                s.loggers.close()
                if s.main_rank:
                    s.log(f"stopped at step {s.step}, checkpoint written: continue with homegpt train {s.out} --resume")
                return {"step": s.step, "finished": False, "preempted": preempt.requested, "run_dir": str(s.out)}
            t_last = time.perf_counter()  # evaluation and checkpoint time isn't training time
            budget.bookkeeping(t_last - now, evaluated=step_val is not None)
    # --- finish: the final metrics in eval.json, the loss curve
    bar.close()
    s.loggers.close()
    return _finish(s, final, steps_this_call)


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


def _report(s: Session, bar, progress: bool, lr: float, train_loss: float, ev: dict | None) -> None:
    """Rank 0's account of a step: its metrics row, the progress bar, and after an evaluation (ev) a line of
    text and a sample."""
    cfg, meter = s.cfg, s.meter
    spent, projected = meter.cost(s.step)
    row = {"step": s.step, "tokens": s.step * s.batch_tokens, "elapsed_s": round(meter.elapsed, 3), "lr": lr,
           "train_loss": train_loss, "tokens_per_s": round(meter.tokens_per_s, 1),
           "mfu": round(meter.mfu, 4), "cost_usd": round(spent, 6) if cfg.price else ""}
    if ev is not None:
        row.update(val_loss=ev["loss"], val_bpb=ev["bpb"])
        msg = (f"step {s.step}/{s.total_steps}  train {train_loss:.4f}  val {ev['loss']:.4f}  "
               f"bpb {ev['bpb']:.3f}  {meter.tokens_per_s:,.0f} tok/s  MFU {meter.mfu:.1%}"
               + (f"  ${spent:.2f} of ~${projected:.2f}" if cfg.price else ""))
        bar.write(msg, file=sys.stderr) if progress else s.log(msg)
        if cfg.sample_tokens > 0 and not s.fsdp:
            _write_sample(s, s.step)
    s.loggers.write(row)
    bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{meter.tokens_per_s:,.0f}", mfu=f"{meter.mfu:.1%}")
    bar.update(1)


def _write_sample(s: Session, step: int) -> None:
    """A short sample from a fixed seed, so samples at different steps are comparable."""
    from homegpt.generate.sample import generate_text

    cfg = s.cfg
    n = min(cfg.sample_tokens, s.mcfg.block_size - 8)
    # The sample uses its own generator, so the training RNG stream (and exact resume) is untouched.
    text = generate_text(unwrap(s.model), s.tok, cfg.sample_prompt, n, temperature=0.8, top_k=50, seed=cfg.seed)
    with open(s.out / "samples.txt", "a", encoding="utf-8") as f:
        f.write(f"--- step {step}\n{cfg.sample_prompt}{text}\n")
    s.model.train()


def _finish(s: Session, final: dict | None, steps_this_call: int) -> dict:
    """The run's final metrics (rank 0; other ranks: {}), in eval.json too, and its loss curve."""
    if final is None or steps_this_call == 0:  # resumed a finished run: evaluate anyway
        if s.evaluating_rank:
            final = evaluate_held_out(s.model, s.val_tokens, s.token_bytes, s.eval_batch, None, s.autocast)
    if not s.main_rank:
        return {}
    tokens, seconds = s.step * s.batch_tokens, s.meter.elapsed
    result = {
        "run_dir": str(s.out),
        "finished": True,
        "step": s.step,
        "val_loss": final["loss"],
        "val_perplexity": final["perplexity"],
        "val_bpb": final["bpb"],
        "val_tokens": final["tokens"],
        "params": s.params["total"],
        "params_non_embedding": s.params["non_embedding"],
        "tokens_trained": tokens,
        "train_seconds": round(seconds, 2),
        "train_tokens_per_s": round(tokens / max(1e-9, seconds), 1),
        "epochs": round(tokens / s.manifest["splits"]["train"]["tokens"], 3),
        "world_size": s.world,
    }
    (s.out / "eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    from homegpt.train.plot import plot_loss_curve

    plot_loss_curve(s.out / "metrics.csv", s.out / "loss.png")
    return result


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
