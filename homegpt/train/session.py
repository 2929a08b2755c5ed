"""A training run's state and its setup, kept apart from the loop so that train() (loop.py) reads top to bottom.

open_session does everything before the first step, in an order that matters for exact resume (the RNGs
are seeded before the model is built, restored after the loader is made):

    devices and processes      init_distributed (torchrun's ranks), the CPU allocator, fast matmuls
    config                     every "auto" made concrete; the data checked before anything is written
    run directory              a new run's files, or the checkpoint to resume (rank 0 picks it for all ranks)
    model and optimizer        seeded, whole weights loaded, the micro-batch chosen, sharded (FSDP), wrapped
    data                       the training loader, the held-out split
    resume                     optimizer moments, every RNG, the loader's position, the schedule's length
    meters                     MFU, metrics.csv / TensorBoard / W&B

The Session holds what the loop needs and what it moves on (step, best held-out loss, total steps under a
time budget). save_state writes that state as a checkpoint; resume_state reads it back.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from homegpt.data.packed import check_data, training_loader
from homegpt.data.shards import read_manifest
from homegpt.data.tokenizer import load_tokenizer, token_byte_lengths
from homegpt.errors import UserError
from homegpt.model.gpt import GPT, GPTConfig, count_params, flops_per_token
from homegpt.rundir.checkpoint import (
    checkpoint_dirs,
    load_weights,
    model_state,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
)
from homegpt.rundir.info import device_name, previous_arch, read_run_info, recorded_model, run_info, write_run_info
from homegpt.runtime.device import autocast_for, enable_fast_matmul, make_scaler, resolve_dtype, tune_cpu_allocator
from homegpt.runtime.distributed import broadcast_object, init_distributed, shard_model
from homegpt.train.config import TrainConfig, dump_toml
from homegpt.train.heldout import open_held_out
from homegpt.train.logs import RunLoggers, truncate_metrics
from homegpt.train.meter import Meter, peak_flops
from homegpt.train.optim import load_optimizer_tensors, make_optimizer, optimizer_tensors
from homegpt.train.step import auto_micro_batch
from homegpt.train.timebudget import TimeBudget


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators from one seed (a run's starting RNG states)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve(cfg: TrainConfig) -> tuple[dict, GPTConfig]:
    """Check the data and build the model config; raises UserError before anything is written."""
    if not cfg.data_dir:
        raise UserError("no data_dir in the config: point it at a `homegpt prepare` output")
    manifest = read_manifest(cfg.data_dir)
    return manifest, cfg.model_config(manifest["model_vocab_size"])


def check_fsdp(cfg: TrainConfig, device: torch.device) -> None:
    """What FSDP training here does not support (yet), as a UserError before anything is written."""
    if resolve_dtype(device, cfg.dtype) == "fp16":  # a GradScaler does not handle sharded gradients
        raise UserError('parallel = "fsdp" trains in bf16 or fp32, not fp16: set dtype = "bf16" or "fp32"')
    if cfg.optimizer == "muon":  # torch.optim.Muon would orthogonalise each rank's slice, not the matrix
        raise UserError('optimizer = "muon" needs whole matrices, and parallel = "fsdp" shards them: use '
                        'parallel = "ddp" or optimizer = "adamw"')


@dataclass
class Session:
    """One train() call's run: fixed at setup, except the progress fields the loop moves on."""

    cfg: TrainConfig  # resolved: every "auto" concrete
    out: Path
    log: object  # a callable taking one line of text
    rank: int
    world: int
    device: torch.device
    fsdp: bool
    manifest: dict
    mcfg: GPTConfig
    tok: object
    model: GPT  # the model itself (sharded under FSDP); run_model is what the steps call
    optimizer: object
    scaler: object  # a GradScaler for fp16, else None
    autocast: object
    loader: object  # data/loader.py's TokenLoader, or packed.py's PackedLoader
    val_tokens: object  # the held-out split (heldout.open_held_out)
    token_bytes: torch.Tensor
    params: dict
    micro: int
    eval_batch: int
    batch_tokens: int  # what a step really holds, over all ranks (whole windows)
    # progress: where the run stands (a resumed run starts where its checkpoint was)
    total_steps: int
    step: int = 0
    best_val: float = float("inf")
    elapsed_before: float = 0.0  # training seconds before this call
    wall_before: float = 0.0  # wall-clock seconds before this call, evaluations included
    # built once the run's state is restored
    run_model: object = None  # compiled and/or wrapped in DistributedDataParallel
    meter: Meter | None = None
    loggers: RunLoggers | None = None

    @property
    def main_rank(self) -> bool:
        return self.rank == 0

    @property
    def evaluating_rank(self) -> bool:
        """With FSDP the weights are sharded: every rank takes part in evaluating and in gathering checkpoints."""
        return self.main_rank or self.fsdp


def open_session(cfg: TrainConfig, out: Path, resume: bool, force: bool, log) -> Session:
    """Everything a run needs before its first step (see the module doc); a resumed run's state restored."""
    rank, world, device = init_distributed(cfg.device)
    main_rank = rank == 0
    if device.type == "cpu":
        tune_cpu_allocator()
    cfg = cfg.resolved(arch=previous_arch(out) if resume else None)  # every "auto" made concrete
    manifest, mcfg = resolve(cfg)
    checked = check_data(cfg.data_dir, manifest)  # every shard, before anything of the run is written
    resume_from = _resume_point(out, mcfg, resume, force, main_rank, world)
    enable_fast_matmul(device)
    autocast = autocast_for(device, cfg.dtype)
    scaler = make_scaler(device, cfg.dtype)
    fsdp = world > 1 and cfg.parallel == "fsdp"
    if fsdp:
        check_fsdp(cfg, device)
    tok = load_tokenizer(Path(cfg.data_dir) / "tokenizer.json")

    # --- the model and its optimizer
    seed_everything(cfg.seed)
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

    # --- the data
    tokens_per_micro = micro * mcfg.block_size
    accum = max(1, round(cfg.batch_tokens / (tokens_per_micro * world)))
    # token shards (prepare) or packed conversations (sft, with their loss mask): packed.py
    loader = training_loader(cfg.data_dir, manifest, mcfg.block_size, micro, accum, cfg.seed, device, rank, world,
                             cfg.data_order)
    val_tokens = open_held_out(cfg.data_dir, manifest)
    token_bytes = torch.tensor(token_byte_lengths(tok, mcfg.vocab_size), dtype=torch.long)
    s = Session(cfg=cfg, out=out, log=log, rank=rank, world=world, device=device, fsdp=fsdp, manifest=manifest,
                mcfg=mcfg, tok=tok, model=model, optimizer=optimizer, scaler=scaler, autocast=autocast,
                loader=loader, val_tokens=val_tokens, token_bytes=token_bytes, params=count_params(mcfg),
                micro=micro, eval_batch=max(micro, 8),  # no gradients to hold: evaluation can batch wider
                batch_tokens=accum * tokens_per_micro * world, total_steps=cfg.total_steps())

    if main_rank and cfg.warmup_steps >= s.total_steps and cfg.max_seconds <= 0:
        log(f"warning: warmup_steps = {cfg.warmup_steps} is not shorter than the run's {s.total_steps} steps: the "
            f"learning rate never decays to min_lr_ratio (give fewer --warmup-steps)")

    # --- a resumed run's state, or a new run's files
    if ckpt is not None:
        resume_state(s, ckpt)
    elif main_rank:
        out.mkdir(parents=True, exist_ok=True)
        _write_run_files(s)

    # --- what the steps call, and the meters
    s.run_model = torch.compile(model) if cfg.compile_enabled(device) and not fsdp else model
    if world > 1 and not fsdp:
        s.run_model = torch.nn.parallel.DistributedDataParallel(
            s.run_model, device_ids=[device.index] if device.type == "cuda" else None)
    _open_meters(s)
    return s


def _open_meters(s: Session) -> None:
    """MFU against this device's peak, metrics.csv (and TensorBoard, W&B), and the run's opening lines."""
    cfg = s.cfg
    peak, peak_source = peak_flops(s.device, cfg.peak_tflops or None)
    s.meter = Meter(flops_per_token(s.mcfg), peak * s.world, s.total_steps, cfg.price, s.elapsed_before)
    s.loggers = RunLoggers(s.out, cfg, s.main_rank)
    if s.main_rank:
        s.log(f"{s.params['total']:,} parameters ({s.params['non_embedding']:,} non-embedding), "
              f"{s.batch_tokens:,} tokens per step on {s.world} x {s.device}{' (FSDP)' if s.fsdp else ''}; "
              f"MFU against {peak / 1e12:.2f} TFLOP/s ({peak_source})")
        if s.fsdp and cfg.sample_tokens > 0:
            s.log("samples during training are off under FSDP (the weights are sharded): homegpt sample RUN after")


# ------------------------------------------------------------------------------ the run directory


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


def _resume_point(out: Path, mcfg: GPTConfig, resume: bool, force: bool, main_rank: bool, world: int) -> Path | None:
    """The checkpoint to resume from (rank 0 prepares the run directory and picks it for every rank), or None."""
    resume_from = _prepare_run_dir(out, resume, force) if main_rank else None
    if resume_from is not None:
        try:
            info = read_run_info(out)
        except (UserError, OSError):
            raise UserError(f"{out}/run.json is missing or damaged: cannot resume") from None
        if recorded_model(info) != mcfg.to_dict():
            raise UserError(f"{out} was trained with another model shape or tokenizer: "
                            f"resume with its own config (homegpt train {out} --resume)")
    chosen = broadcast_object(str(resume_from) if resume_from else "", world)  # every rank resumes rank 0's pick
    return Path(chosen) if chosen else None


def _write_run_files(s: Session) -> None:
    """A new run's tokenizer.json, config.toml and run.json (rundir/info.py)."""
    cfg = s.cfg
    shutil.copyfile(Path(cfg.data_dir) / "tokenizer.json", s.out / "tokenizer.json")
    (s.out / "config.toml").write_text(dump_toml(cfg.to_dict()), encoding="utf-8")
    info = run_info(s.mcfg, str(Path(cfg.data_dir).resolve()), s.manifest.get("source", ""),
                    s.manifest["tokenizer_sha256"], cfg.dtype, optimizer=cfg.optimizer, schedule=cfg.schedule,
                    world_size=s.world, device=device_name(cfg.device))
    write_run_info(s.out, info)


# ------------------------------------------------------------------------------ checkpoints


def resume_state(s: Session, ckpt: tuple[dict, dict, dict, dict]) -> None:
    """A checkpoint's optimizer moments, RNG states, loader position and progress into the session (its weights
    are already in the model)."""
    _, optim, rng, state = ckpt
    load_optimizer_tensors(s.model, s.optimizer, optim)
    restore_rng(state, rng)
    s.loader.load_state_dict(state.get("loader", rng["loader"]))
    if s.scaler is not None and "grad_scaler" in state:
        s.scaler.load_state_dict(state["grad_scaler"])
    s.step, s.elapsed_before, s.best_val = state["step"], state["elapsed_s"], state.get("best_val_loss", float("inf"))
    s.wall_before = state.get("wall_s", s.elapsed_before)
    if s.cfg.max_seconds > 0:  # a time-budgeted run keeps the length it had planned
        s.total_steps = int(state.get("total_steps", s.total_steps))
    if s.step > s.total_steps:  # before anything is written: the run stays as it was
        raise UserError(f"{s.out} is already at step {s.step:,}, past the {s.total_steps:,} steps asked for: give "
                        f"--max-steps (or --max-tokens) beyond step {s.step:,} to train it further")
    if s.main_rank:
        (s.out / "config.toml").write_text(dump_toml(s.cfg.to_dict()), encoding="utf-8")  # overrides now apply
        truncate_metrics(s.out / "metrics.csv", s.step)  # rows past the checkpoint are being redone
        s.log(f"resuming {s.out} from step {s.step}" + (": it is finished, nothing left to train"
                                                        if s.step == s.total_steps else ""))


def save_state(s: Session, step_val: float | None, budget: TimeBudget) -> None:
    """A checkpoint of the run as it stands; every rank calls it (FSDP gathers the weights, all ranks wait).

    step_val: this step's held-out loss on the periodic tokens, when it was evaluated (it ranks checkpoints).
    """
    if s.evaluating_rank:
        weights, optim = model_state(s.model), optimizer_tensors(s.model, s.optimizer)
    if s.main_rank:
        state = {"tokens": s.step * s.batch_tokens, "elapsed_s": s.meter.elapsed, "best_val_loss": s.best_val,
                 "wall_s": budget.wall(),
                 "total_steps": s.total_steps, "world_size": s.world, "micro_batch": s.micro,
                 "loader": s.loader.state_dict()}
        if step_val is not None:
            state["val_loss"] = step_val
        if s.scaler is not None:
            state["grad_scaler"] = s.scaler.state_dict()
        save_checkpoint(s.out, s.step, weights, optim, s.loader.gen.get_state(), state, s.cfg.keep_checkpoints)
    if s.world > 1:
        dist.barrier()
