"""`homegpt sft`: chat fine-tuning (supervised fine-tuning) of a trained run on conversations.

    homegpt sft RUN --data SOURCE [--out RUN2] [--key value ...]

1. The base run's checkpoint (latest, best or --step) and its tokenizer. ChatML's <|im_start|> and
   <|im_end|> are reserved by `homegpt tokenizer`; a tokenizer from before that gets them at the end of its
   vocabulary (tokenizer.add_chat_tokens), and the embedding (and an untied head) grow to the new padded
   vocabulary. Rows initialisation: when the base run is a pretraining run (it never saw the ChatML tokens),
   the two tokens' rows and every new row of the embedding and of an untied head start as the mean of the
   base's rows of its ordinary tokens (every token before them). A mean row gives a new token an average
   token's input vector and an average logit, so the model's predictions start close to the base model's
   (Hewitt 2021, "Initializing new word embeddings"). A base that is itself an SFT run keeps its rows.
2. The conversations (conversations.py: checked, rendered in ChatML, loss on the assistant's content and
   <|im_end|> only), one in 20 held out by a seeded hash of its position (the last one of fewer than 20),
   packed into rows of the model's context + 1 without cutting any (packed.py) in RUN2/sft-data.
3. RUN2 is an ordinary run directory: run.json (with an "sft" entry: the base, the tokens added, the rows
   initialised, the conversations), config.toml, tokenizer.json, chat_template.jinja, and a first
   checkpoint at step 0 holding the base's weights, RNG states seeded from `seed`, and no optimizer state.
   So the SFT run starts its own optimizer: AdamW's moments from zero and Muon's momentum from its warmup
   (the base's moments belong to another objective, and a grown embedding to another shape).
4. train.train(RUN2, resume=True) trains from that checkpoint: the pretraining loop, its evaluation (the
   held-out conversations' loss on assistant tokens), checkpoints, signals and exact resume
   (`homegpt sft ... --resume` or `homegpt train RUN2 --resume` continue it).

SFT's own defaults (sft_overrides), each replaced by a --key value given on the command line: the base's
learning rates x LR_SCALE, decaying to 0 at the last step (min_lr_ratio 0; WSD decays over the whole run),
a short warmup, `epochs` passes over the training rows, no time budget, about 5 evaluations.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from homegpt.data.chatml import TEMPLATE_FILE
from homegpt.data.conversations import CHATML_TEMPLATE
from homegpt.data.shards import file_sha256
from homegpt.data.tokenizer import IM_END, IM_START, add_chat_tokens, round_vocab
from homegpt.errors import UserError
from homegpt.model.gpt import GPT, GPTConfig
from homegpt.rundir.info import device_name, run_info, write_run_info

LR_SCALE = 0.3  # SFT's learning rates = the base recipe's x this (BENCHMARKS.md, "Chat fine-tuning")
WARMUP_FRACTION = 0.05
EVALUATIONS = 5
DATA_DIR = "sft-data"
ROW_INIT = "mean of the base's trained token rows"


def is_sft_run(path: Path) -> bool:
    try:
        return "sft" in json.loads((path / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return False


def default_out(base: str | Path) -> Path:
    base = Path(base)
    return base.with_name(base.name + "-sft")


def sft(base: str | Path, source: str, out: str | Path | None = None, overrides: dict[str, str] | None = None, *,
        step: int | str | None = None, epochs: float = 1.0, too_long: str = "drop", resume: bool = False,
        force: bool = False, prepare_only: bool = False, progress: bool = True, log=None) -> dict:
    """Fine-tune run `base` on the conversations of `source` into `out` (see the module doc); returns
    train.train's result, or what was written with prepare_only."""
    from homegpt.train.config import load_config
    from homegpt.train.loop import train

    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out) if out is not None else default_out(base)
    overrides = dict(overrides or {})
    if not epochs > 0:
        raise UserError(f"--epochs must be positive, got {epochs}")
    if resume and is_sft_run(out):  # a relaunch: the same command continues where the run stopped
        cfg = load_config(out / "config.toml", overrides)
        return train(cfg, out, resume=True, progress=progress, log=log)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(f"under torchrun, write the SFT run first (homegpt sft {base} --data ... --out {out} "
                        f"--prepare-only, one process), then train it: torchrun ... -m homegpt train {out} --resume")
    _check_out(out, force, resume)
    made = build_run(Path(base), source, out, overrides, step, epochs, too_long, log)
    if prepare_only:
        return dict(made, finished=False, run_dir=str(out))
    cfg = load_config(out / "config.toml")
    return train(cfg, out, resume=True, progress=progress, log=log)


def _check_out(out: Path, force: bool, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    if (out / "run.json").exists() and not force:
        what = "a pretraining run" if not is_sft_run(out) else "an SFT run"
        hint = "pass --force to start over" + ("" if resume else ", --resume to continue it")
        raise UserError(f"{out} already holds {what}: choose another --out or {hint}")
    if out.is_dir() and any(out.iterdir()) and not (out / "run.json").exists() and not force:
        raise UserError(f"{out} is not empty and holds no homegpt run: choose another --out or pass --force")


def build_run(base: Path, source: str, out: Path, overrides: dict[str, str], step, epochs: float, too_long: str,
              log) -> dict:
    """Everything of the SFT run but its training, built aside and moved into `out` only when complete: bad
    data (a UserError naming the file and line) leaves `out` as it was."""
    from homegpt.data.packed import write_packed
    from homegpt.rundir.checkpoint import load_run, model_state
    from homegpt.train.config import load_config

    if out.resolve() == base.resolve():
        raise UserError(f"{out} is the base run itself: give another --out")
    run = load_run(base, device="cpu", step=step)
    base_cfg = load_config(base / "config.toml") if (base / "config.toml").is_file() else None
    if base_cfg is None:
        raise UserError(f"{base} has no config.toml: is it a homegpt run?")
    tok = run.tokenizer
    old_tokens, old_cfg = tok.get_vocab_size(), run.model.config
    added = add_chat_tokens(tok)
    vocab = max(old_cfg.vocab_size, round_vocab(tok.get_vocab_size()))
    cfg = GPTConfig.from_dict(dict(old_cfg.to_dict(), vocab_size=vocab))
    base_is_sft = "sft" in run.info
    rows = [] if base_is_sft else sorted({tok.token_to_id(IM_START), tok.token_to_id(IM_END)} |
                                         set(range(old_cfg.vocab_size, vocab)))
    chat_ids = {tok.token_to_id(IM_START), tok.token_to_id(IM_END)}
    ordinary = [i for i in range(old_tokens) if i not in chat_ids]
    weights = grow_rows(model_state(run.model), old_cfg, cfg, rows, ordinary)
    final_data = (out / DATA_DIR).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / DATA_DIR).mkdir()
        manifest = write_packed(source, tmp / "tokenizer.json", tmp / DATA_DIR, cfg.vocab_size, cfg.block_size + 1,
                                too_long, log)
        train_cfg = sft_config(base_cfg, overrides, final_data, manifest, epochs)
        cfg = _same_model(cfg, train_cfg)
        info = _run_info(run, base, cfg, train_cfg, manifest, tmp / "tokenizer.json", added, rows, too_long)
        _write_run(tmp, train_cfg, info, weights, cfg)
        _move_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    s = manifest["splits"]
    log(f"sft: {out} from {base} step {run.step}" + (f", {' and '.join(added)} added" if added else "")
        + (f", {len(rows)} rows initialised ({ROW_INIT})" if rows else "")
        + f"; {s['train']['documents']:,} conversations in {s['train']['rows']:,} rows, "
          f"{s['val']['documents']:,} held out; {train_cfg.total_steps()} steps")
    return {"added_tokens": added, "rows_initialised": len(rows), "manifest": manifest,
            "steps": train_cfg.total_steps()}


def grow_rows(weights: dict[str, torch.Tensor], old: GPTConfig, new: GPTConfig, rows: list[int],
              ordinary: list[int]) -> dict[str, torch.Tensor]:
    """The embedding (and an untied head) with new.vocab_size rows; `rows` set to the mean of the `ordinary`
    rows (the base's ordinary tokens: every token of its tokenizer but ChatML's)."""
    out = dict(weights)
    names = ["transformer.wte.weight"] + ([] if old.tie_embeddings else ["lm_head.weight"])
    for name in names:
        w = weights[name]
        grown = torch.cat([w, w.new_zeros(new.vocab_size - old.vocab_size, w.size(1))]) if new.vocab_size > w.size(0) \
            else w.clone()
        if rows:
            grown[rows] = w[ordinary].mean(dim=0)
        out[name] = grown.contiguous()
    return out


def _same_model(cfg: GPTConfig, train_cfg) -> GPTConfig:
    """The base's model with the SFT config's dropout; any other change of the model is refused."""
    cfg = GPTConfig.from_dict(dict(cfg.to_dict(), dropout=train_cfg.dropout))
    wanted = train_cfg.model_config(cfg.vocab_size).to_dict()
    changed = [k for k, v in cfg.to_dict().items() if wanted[k] != v]
    if changed:
        raise UserError(f"sft fine-tunes the base model as it is: drop the override of {', '.join(changed)}")
    return cfg


def sft_config(base_cfg, overrides: dict[str, str], data_dir: Path, manifest: dict, epochs: float):
    """The base run's config with SFT's defaults, then the command line's overrides (see sft_overrides)."""
    from homegpt.train.config import TrainConfig

    values = dict(base_cfg.resolved().to_dict(), **sft_overrides(base_cfg.resolved(), manifest, epochs, overrides))
    values.update(overrides, data_dir=str(data_dir))
    return TrainConfig.from_dict(values, where="config").resolved()


def sft_overrides(base, manifest: dict, epochs: float, given: dict[str, str]) -> dict:
    """SFT's defaults for a resolved base config: lower rates decaying to 0, `epochs` over the rows."""
    rows, block = manifest["splits"]["train"]["rows"], int(manifest["row_tokens"]) - 1
    batch = int(given.get("batch_tokens", base.batch_tokens))
    micro = int(given.get("micro_batch", base.micro_batch)) or 16
    per_step = max(1, round(batch / (micro * block))) * micro  # rows per step, as training rounds (one process)
    steps = max(1, math.ceil(epochs * rows / per_step))
    out = {"lr": base.lr * LR_SCALE, "embedding_lr": base.embedding_lr * LR_SCALE,
           "head_lr": base.head_lr * LR_SCALE, "scalar_lr": base.scalar_lr * LR_SCALE, "min_lr_ratio": 0.0,
           "decay_fraction": 1.0, "max_seconds": 0.0, "max_tokens": 0, "max_steps": steps,
           "warmup_steps": max(1, round(WARMUP_FRACTION * steps)), "eval_interval": max(1, steps // EVALUATIONS)}
    if any(k in given for k in ("max_tokens", "max_seconds")):
        out.pop("max_steps")
    return out


def _run_info(run, base: Path, cfg: GPTConfig, train_cfg, manifest: dict, tok_path: Path, added: list[str],
              rows: list[int], too_long: str) -> dict:
    s = manifest["splits"]
    sft_info = {
        "base_run": str(base.resolve()),
        "base_step": run.step,
        "base_tokenizer_sha256": run.info.get("tokenizer_sha256"),
        "base_data_source": run.info.get("data_source", ""),
        "added_tokens": added,
        "rows_initialised": rows,
        "row_init": ROW_INIT if rows else "",
        "conversations": {"train": s["train"]["documents"], "val": s["val"]["documents"],
                          **{k: manifest[k] for k in ("dropped_too_long", "cut_too_long", "dropped_special_text")}},
        "too_long": too_long,
        "loss": "assistant content and <|im_end|>",
    }
    return run_info(cfg, train_cfg.data_dir, manifest["source"], file_sha256(tok_path), train_cfg.dtype,
                    optimizer=train_cfg.optimizer, schedule=train_cfg.schedule, world_size=1,
                    device=device_name(train_cfg.device), extra={"chat_template": "chatml", "sft": sft_info})


def _write_run(tmp: Path, train_cfg, info: dict, weights: dict[str, torch.Tensor], cfg: GPTConfig) -> None:
    """run.json, config.toml, chat_template.jinja and the step-0 checkpoint the train loop resumes from."""
    from homegpt.rundir.checkpoint import load_weights, save_checkpoint
    from homegpt.train.config import dump_toml
    from homegpt.train.session import seed_everything

    load_weights(GPT(cfg), weights, tmp)  # the grown weights fit the model they claim to be
    (tmp / "config.toml").write_text(dump_toml(train_cfg.to_dict()), encoding="utf-8")
    write_run_info(tmp, info)
    (tmp / TEMPLATE_FILE).write_text(CHATML_TEMPLATE, encoding="utf-8")
    seed_everything(train_cfg.seed)  # the RNG states the run starts from: a function of its seed
    loader = torch.Generator().manual_seed(train_cfg.seed).get_state()
    state = {"tokens": 0, "elapsed_s": 0.0, "wall_s": 0.0, "loader": {"kind": "conversations", "step": 0},
             "sft_start": True}
    save_checkpoint(tmp, 0, weights, {}, loader, state, keep=1)


def _move_into(tmp: Path, out: Path) -> None:
    """Replace whatever run `out` held (only --force gets here with one) by the new one."""
    from homegpt.share.export import RUN_FILES

    out.mkdir(parents=True, exist_ok=True)
    for name in (*RUN_FILES, DATA_DIR, "tensorboard"):  # RUN_FILES has the template
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    for f in tmp.iterdir():
        f.replace(out / f.name)
