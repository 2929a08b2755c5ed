"""The run directory and its checkpoints: safetensors for tensors, JSON for everything else, never pickle.

    RUN/
      run.json            what this run is: homegpt version, model shape, parameter counts, data (info.py)
      config.toml         the resolved training config (homegpt train --resume RUN reads it back)
      tokenizer.json      the tokenizer the model was trained with
      checkpoints/step-000200/
          model.safetensors       weights (a tied output head is stored once, as the embedding)
          optimizer.safetensors   AdamW moments and step counts, Muon momentum, keyed by parameter name
          rng.safetensors         torch RNG states (CPU, CUDA) and the data loader's generator
          state.json              step, tokens seen, elapsed time, python/numpy RNG states, best val loss
      metrics.csv, samples.txt, loss.png, eval.json

A checkpoint is written into a temporary folder, fsynced, then renamed: a crash mid-write leaves either
the previous checkpoint or the new one, never a half-written one under a real name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from homegpt.data.shards import fsync_dir
from homegpt.errors import UserError
from homegpt.model.gpt import GPT, GPTConfig
from homegpt.rundir.info import read_run_info
from homegpt.runtime.device import autocast_for, pick_device
from homegpt.runtime.distributed import full_tensor

CKPT_PREFIX = "step-"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders start with '.' and are ignored)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX))


def save_checkpoint(
    run_dir: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, torch.Tensor],
    loader_state: torch.Tensor,
    state: dict,
    keep: int,
) -> Path:
    """Write one checkpoint atomically; weights = model_state(model), optimizer_state = optimizer_tensors()."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{CKPT_PREFIX}{step:06d}"
    tmp = root / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(weights, str(tmp / "model.safetensors"))
    save_file(optimizer_state, str(tmp / "optimizer.safetensors"))
    rng = {"torch_cpu": torch.get_rng_state(), "loader": loader_state}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = s
    save_file(rng, str(tmp / "rng.safetensors"))
    state = dict(state, step=step, python_rng=python_rng_json(), numpy_rng=numpy_rng_json())
    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_dir(root)
    prune_checkpoints(run_dir, keep)
    return final


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints and the best one by held-out loss."""
    ckpts = checkpoint_dirs(run_dir)
    kept = set(ckpts[-keep:])
    best = best_checkpoint(run_dir)
    if best is not None:
        kept.add(best)
    for old in ckpts:
        if old not in kept:
            shutil.rmtree(old, ignore_errors=True)


def checkpoint_val_loss(ckpt: Path) -> float | None:
    """The held-out loss recorded with a checkpoint (None if it was written between evaluations)."""
    try:
        value = json.loads((ckpt / "state.json").read_text(encoding="utf-8")).get("val_loss")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def best_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the lowest held-out loss (the newest among equals), or None if none has one.

    Every evaluation during training measures the same first `eval_tokens` held-out tokens, so these
    losses compare across checkpoints; the final evaluation over the whole split is recorded in eval.json.
    """
    best, best_loss = None, float("inf")
    for ckpt in checkpoint_dirs(run_dir):  # oldest first, so `<=` lets the newest of equal losses win
        loss = checkpoint_val_loss(ckpt)
        if loss is not None and loss <= best_loss:
            best, best_loss = ckpt, loss
    return best


def find_checkpoint(run_dir: Path, step: int | str | None = None) -> Path:
    """A run's checkpoint: the latest (step None or 'latest'), the best by held-out loss, or a step number."""
    ckpts = checkpoint_dirs(run_dir)
    if not ckpts:
        raise UserError(f"run {run_dir} has no checkpoint yet: train it first")
    if step is None or step == "latest":
        return ckpts[-1]
    if step == "best":
        best = best_checkpoint(run_dir)
        if best is None:
            raise UserError(f"no checkpoint of {run_dir} records a held-out loss: use --step latest")
        return best
    named = [c for c in ckpts if c.name == f"{CKPT_PREFIX}{step:06d}"]
    if not named:
        have = ", ".join(str(int(c.name.removeprefix(CKPT_PREFIX))) for c in ckpts)
        raise UserError(f"run {run_dir} has no checkpoint at step {step}: it has {have}, latest and best")
    return named[0]


def model_state(model: GPT) -> dict[str, torch.Tensor]:
    """Weights as a checkpoint stores them: a tied head is left out (safetensors refuses shared storage; the
    head is the embedding), an untied head is a weight like any other.

    Sharded (FSDP) weights are gathered whole: then every rank must call this, in step.
    """
    skip = tied_head(model)
    return {k: full_tensor(v).detach().contiguous() for k, v in unwrap(model).state_dict().items() if k not in skip}


def tied_head(model: GPT) -> set[str]:
    """The state-dict names a checkpoint leaves out: the head's, when it is the token embedding."""
    return {"lm_head.weight"} if unwrap(model).config.tie_embeddings else set()


def unwrap(model):
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DistributedDataParallel


def python_rng_json(rng: random.Random | None = None) -> list:
    """The state of `rng` (default: the global generator) as JSON."""
    version, internal, gauss = (rng or random).getstate()
    return [version, list(internal), gauss]


def numpy_rng_json(rs: np.random.RandomState | None = None) -> dict:
    """The state of `rs` (default: numpy's global generator) as JSON."""
    name, keys, pos, has_gauss, cached = (rs or np.random).get_state()
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def restore_rng(state: dict, rng: dict[str, torch.Tensor]) -> None:
    v, internal, gauss = state["python_rng"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy_rng"]
    np.random.set_state((n["name"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def read_checkpoint(ckpt: Path) -> tuple[dict, dict, dict, dict]:
    """(weights, optimizer tensors, rng tensors, state) of one checkpoint, or a UserError if damaged."""
    try:
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        weights = load_file(str(ckpt / "model.safetensors"))
        optim = load_file(str(ckpt / "optimizer.safetensors")) if (ckpt / "optimizer.safetensors").exists() else {}
        rng = load_file(str(ckpt / "rng.safetensors")) if (ckpt / "rng.safetensors").exists() else {}
    except (OSError, json.JSONDecodeError, SafetensorError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"checkpoint {ckpt} is truncated or corrupted ({type(e).__name__}): "
                        f"delete it to fall back to an earlier one") from None
    return weights, optim, rng, state


def load_weights(model: GPT, weights: dict[str, torch.Tensor], where: Path) -> None:
    own = unwrap(model).state_dict()
    expected = set(own) - tied_head(model)
    if expected - set(weights) == {"lm_head.weight"}:
        raise UserError(f"{where} has no lm_head.weight, which this model's untied head needs (homegpt before "
                        f"untied heads were saved dropped it): that head is lost, train the run again")
    if set(weights) != expected:
        raise UserError(f"{where} does not match this model's layers: is it from another run?")
    for k, v in weights.items():
        if own[k].shape != v.shape:
            raise UserError(f"{where}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}: "
                            f"the tokenizer or config does not match this checkpoint")
    unwrap(model).load_state_dict(weights, strict=False)


@dataclass
class Run:
    path: Path
    info: dict
    model: GPT
    tokenizer: object
    token_bytes: torch.Tensor
    step: int
    data_dir: str
    data_source: str
    autocast: object
    state: dict  # the checkpoint's state.json: tokens seen, training seconds, held-out loss


def load_run(run_dir: str | Path, device: str = "auto", step: int | str | None = None) -> Run:
    """A run's model (latest, best or a given step's weights; eval mode) and tokenizer, to evaluate or sample."""
    from homegpt.data.shards import file_sha256
    from homegpt.data.tokenizer import load_tokenizer, token_byte_lengths

    path = Path(run_dir)
    info = read_run_info(path)
    ckpt = find_checkpoint(path, step)
    tok_path = path / "tokenizer.json"
    tokenizer = load_tokenizer(tok_path)
    if file_sha256(tok_path) != info["tokenizer_sha256"]:
        raise UserError(f"{tok_path} is not the tokenizer this run was trained with (hash differs)")
    cfg = GPTConfig.from_dict(info["model"])
    if tokenizer.get_vocab_size() > cfg.vocab_size:
        raise UserError(f"{tok_path} has {tokenizer.get_vocab_size()} tokens, the model only {cfg.vocab_size}")
    dev = pick_device(device)
    model = GPT(cfg)
    weights, _, _, state = read_checkpoint(ckpt)
    load_weights(model, weights, ckpt)
    model.to(dev).eval()
    token_bytes = torch.tensor(token_byte_lengths(tokenizer, cfg.vocab_size), dtype=torch.long)
    return Run(
        path=path,
        info=info,
        model=model,
        tokenizer=tokenizer,
        token_bytes=token_bytes,
        step=state["step"],
        data_dir=info.get("data_dir", ""),
        data_source=info.get("data_source", ""),
        autocast=autocast_for(dev, info.get("dtype", "auto")),
        state=state,
    )
