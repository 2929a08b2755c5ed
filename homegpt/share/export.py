"""Export a run to a Hugging Face `transformers` folder, and import such a folder back into a run.

Which transformers class a model becomes, and how its weights are renamed, is hf_arch.py's business: GPT-2
runs become GPT2LMHeadModel, modern runs Qwen3ForCausalLM. This module writes and reads the folder around
them. The vocabulary keeps homegpt's padded size (the tokenizer's size rounded up to 64): the padding rows
are real, if untrained, rows of the embedding.

    OUT/
      config.json               the transformers config (every setting that changes the computation explicit)
      model.safetensors         weights under transformers' names, fp32
      generation_config.json    <|endoftext|> as bos/eos/pad, homegpt's default sampling settings
      tokenizer.json            the run's tokenizer, byte for byte (its hash is how a run knows its tokenizer)
      tokenizer_config.json, special_tokens_map.json
      chat_template.jinja       a chat run's template (ChatML, also in tokenizer_config.json), so that
                                apply_chat_template renders the ids the run was fine-tuned on
      README.md                 the model card (card.py), loss.png
      homegpt.json              where the weights came from: run.json, the training config, eval.json, step

Exporting needs neither transformers nor network access; only loading the folder does (transformers).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from homegpt import __version__
from homegpt.data.chatml import TEMPLATE_FILE
from homegpt.data.shards import file_sha256
from homegpt.data.tokenizer import EOT, IM_END, load_tokenizer
from homegpt.errors import UserError
from homegpt.model.gpt import GPT, GPTConfig, count_params
from homegpt.rundir.checkpoint import numpy_rng_json, python_rng_json
from homegpt.rundir.info import run_info, write_run_info
from homegpt.share.hf_arch import HF_CLASS, from_hf, to_hf

META_FILE = "homegpt.json"
EXPORT_FILES = (
    "config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", TEMPLATE_FILE, "README.md", "loss.png", META_FILE,
)
# What a run directory holds (checkpoint.py): replaced as a whole by `import --force`.
RUN_FILES = ("run.json", "config.toml", "tokenizer.json", "checkpoints", "metrics.csv", "samples.txt", "loss.png",
             "eval.json", TEMPLATE_FILE)


# --------------------------------------------------------------------------------------------- export


def tokenizer_files(eot_id: int, block_size: int, specials: dict[str, int] | None = None,
                    chat_template: str | None = None) -> dict[str, dict]:
    """tokenizer_config.json and special_tokens_map.json for AutoTokenizer.

    PreTrainedTokenizerFast loads tokenizer.json exactly as it is (pre-tokenizer, decoder, no added BOS),
    so transformers' ids are homegpt's ids; a class such as GPT2Tokenizer would rebuild the pipeline.
    specials: every special token's id (ChatML's, where the tokenizer has them). A chat model's config
    carries its chat_template, and its eos_token is <|im_end|>, which ends its turns (as Qwen's chat models).
    """
    def added(content: str) -> dict:
        return {"content": content, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False,
                "special": True}

    special = added(EOT)
    decoder = {str(i): added(t) for t, i in sorted((specials or {EOT: eot_id}).items(), key=lambda x: x[1])}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": IM_END if chat_template else EOT,
        "unk_token": EOT,
        "pad_token": EOT,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": block_size,
        "padding_side": "left",  # what decoder-only batched generation in transformers needs
        "added_tokens_decoder": {str(eot_id): special, **decoder},
    }
    if chat_template:
        config["chat_template"] = chat_template
    special_map = {k: dict(special) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    if chat_template:
        special_map["eos_token"] = added(IM_END)
    return {"tokenizer_config.json": config, "special_tokens_map.json": special_map}


def generation_config(eot_id: int, im_end_id: int | None = None) -> dict:
    """homegpt sample's defaults, so `model.generate(...)` and pipelines sample as homegpt does; a chat model
    also stops at <|im_end|>."""
    eos = [im_end_id, eot_id] if im_end_id is not None else eot_id
    return {"bos_token_id": eot_id, "eos_token_id": eos, "pad_token_id": eot_id,
            "do_sample": True, "temperature": 0.8, "top_k": 50}


def chat_template_of(run_dir: Path) -> str | None:
    """A run's chat template (`homegpt sft` writes chat_template.jinja into it), or None for a base model."""
    path = run_dir / TEMPLATE_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None


def read_json(path: Path) -> dict | None:
    """A JSON file's object, or None when absent or unreadable (optional run files)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def read_train_config(run_dir: Path) -> dict:
    """The run's config.toml as a dict ({} if missing): the card and import use its hyperparameters."""
    import tomllib

    try:
        return tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}


def prepare_out(out: Path, force: bool) -> None:
    """Refuse an OUT_DIR that is a file, or holds anything, unless force."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out} is not empty: choose another folder or pass --force to replace the export in it")


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    force: bool = False,
    step: int | str | None = None,
    card_options: dict | None = None,
    samples: list[dict] | None = None,
) -> dict:
    """Write a run's checkpoint (latest, 'best' or a step number) as a transformers folder; returns what was written.

    card_options go to card.render_card (license, language, hardware, cost_usd, model_name, repo_id).
    samples: {prompt, text, source} dicts for the card; by default the run's samples.txt, else generated.
    """
    from homegpt.rundir.checkpoint import load_run
    from homegpt.share.card import render_card

    run_path, out = Path(run_dir), Path(out_dir)
    prepare_out(out, force)
    run = load_run(run_path, device="cpu", step=step)
    cfg = run.model.config
    eot_id = run.tokenizer.token_to_id(EOT)
    from homegpt.rundir.checkpoint import model_state

    config, weights = to_hf(cfg, model_state(run.model), eot_id)  # refusals come before anything is written
    eval_info = checkpoint_eval(run, read_json(run_path / "eval.json"))
    train_cfg = read_train_config(run_path)
    meta = {
        "homegpt_version": __version__,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "step": run.step,
        "run": public_info(run.info),
        "train_config": {k: v for k, v in train_cfg.items() if k != "data_dir"},
        "eval": {k: v for k, v in eval_info.items() if k != "run_dir"} if eval_info else None,
    }
    if samples is None:
        samples = card_samples(run_path, run)
    options = {k: v for k, v in (card_options or {}).items() if v is not None}
    if not options.get("model_name") and not options.get("repo_id"):
        options["model_name"] = out.resolve().name  # the folder's name beats a generic title
    card = render_card(run.info, eval_info, train_cfg, step=run.step, samples=samples,
                       has_loss_curve=(run_path / "loss.png").is_file(), **options)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_model_files(tmp, config, weights, run_path / "tokenizer.json", eot_id, cfg.block_size,
                          chat_template_of(run_path))
        _write_json(tmp / META_FILE, meta)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if (run_path / "loss.png").is_file():
            shutil.copyfile(run_path / "loss.png", tmp / "loss.png")
        move_into(tmp, out, EXPORT_FILES)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(p.name for p in out.iterdir() if p.name in EXPORT_FILES)
    return {"out_dir": str(out), "step": run.step, "files": files, "params": count_params(cfg)["total"],
            "vocab_size": cfg.vocab_size, "block_size": cfg.block_size, "architecture": HF_CLASS[cfg.arch]}


def write_model_files(dest: Path, config: dict, weights: dict[str, torch.Tensor], tokenizer_json: Path, eot_id: int,
                      block_size: int, chat_template: str | None = None) -> None:
    """What `from_pretrained` reads: config, weights, generation config, the fast tokenizer's files and a chat
    model's template."""
    tok = load_tokenizer(tokenizer_json)
    specials = {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    im_end = tok.token_to_id(IM_END) if chat_template else None
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})
    _write_json(dest / "config.json", config)
    _write_json(dest / "generation_config.json", generation_config(eot_id, im_end))
    shutil.copyfile(tokenizer_json, dest / "tokenizer.json")
    for name, content in tokenizer_files(eot_id, block_size, specials, chat_template).items():
        _write_json(dest / name, content)
    if chat_template:
        (dest / TEMPLATE_FILE).write_text(chat_template, encoding="utf-8")


def write_transformers_model(run, dest: str | Path) -> Path:
    """A loaded run's weights as a bare transformers folder (no card, no provenance): what eval/harness.py evaluates."""
    from homegpt.rundir.checkpoint import model_state

    dest = Path(dest)
    eot_id = run.tokenizer.token_to_id(EOT)
    config, weights = to_hf(run.model.config, model_state(run.model), eot_id)
    dest.mkdir(parents=True, exist_ok=True)
    write_model_files(dest, config, weights, run.path / "tokenizer.json", eot_id, run.model.config.block_size,
                      chat_template_of(run.path))
    return dest


def checkpoint_eval(run, eval_info: dict | None) -> dict | None:
    """eval.json when it describes the exported checkpoint; else that checkpoint's own facts and metrics.

    eval.json holds the final step's numbers. Exporting an earlier checkpoint (--step N, --step best) must
    not borrow them: its tokens and seconds come from its state.json, and its held-out metrics are measured
    now on the run's held-out split (when the prepared data is still there).
    """
    from homegpt.data.shards import read_manifest
    from homegpt.train.heldout import evaluate_held_out, open_held_out

    if eval_info and eval_info.get("step") == run.step:
        return eval_info
    ev = {"step": run.step, "tokens_trained": run.state.get("tokens"), "train_seconds": run.state.get("elapsed_s")}
    if run.data_dir and (Path(run.data_dir) / "manifest.json").is_file():
        held = open_held_out(run.data_dir, read_manifest(run.data_dir))  # tokens, or an SFT run's conversations
        m = evaluate_held_out(run.model, held, run.token_bytes, autocast=run.autocast)
        ev.update(val_loss=m["loss"], val_perplexity=m["perplexity"], val_bpb=m["bpb"], val_tokens=m["tokens"])
    return ev


def public_info(info: dict) -> dict:
    """run.json without this machine's paths: an export may be published."""
    from homegpt.share.card import short_source

    out = {k: v for k, v in info.items() if k not in ("data_dir", "imported_from")}
    out["data_source"] = short_source(info.get("data_source", "")) if info.get("data_source", "").startswith(
        "file:") else info.get("data_source", "")
    return out


def card_samples(run_path: Path, run, n: int = 3) -> list[dict]:
    """The last training-time sample from samples.txt, then samples generated now (fixed seeds) up to n."""
    from homegpt.generate.sample import generate_text

    prompt = read_train_config(run_path).get("sample_prompt", "")
    out = []
    found = last_training_sample(run_path / "samples.txt", run.step)
    if found is not None:
        step, body = found
        text = body[len(prompt):] if body.startswith(prompt) else body
        out.append({"prompt": prompt if body.startswith(prompt) else "", "text": text,
                    "source": f"written during training at step {step} (temperature 0.8, top-k 50)"})
    budget = min(48, run.model.config.block_size - 1 - len(run.tokenizer.encode(prompt).ids))
    for seed in range(n - len(out)):
        if budget <= 0:
            break
        text = generate_text(run.model, run.tokenizer, prompt, budget, temperature=0.8, top_k=50, seed=seed)
        out.append({"prompt": prompt, "text": text,
                    "source": f"generated at export (temperature 0.8, top-k 50, seed {seed})"})
    return out


def last_training_sample(path: Path, step: int | None = None) -> tuple[str, str] | None:
    """(step, prompt + text) of the last '--- step N' block training wrote to samples.txt (the last one
    written at `step`, if given), or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    blocks = [b.partition("\n") for b in text.split("--- step ") if b.strip()]
    blocks = [(head.strip(), body.rstrip("\n")) for head, _, body in blocks if body.strip()]
    if step is not None:
        blocks = [b for b in blocks if b[0] == str(step)]
    return blocks[-1] if blocks else None


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def move_into(src: Path, out: Path, stale: Iterable[str]) -> None:
    """Put a finished export in place; with --force, files from an earlier export (the names in stale) go."""
    out.mkdir(parents=True, exist_ok=True)
    for name in stale:  # a stale loss.png or card must not survive from an earlier export
        (out / name).unlink(missing_ok=True)
    mode = 0o666 & ~_umask()  # mkstemp-style 0600 files would be unreadable to others after the move
    for f in src.iterdir():
        os.chmod(f, mode)
        os.replace(f, out / f.name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------------------------- import


def read_hf_config(hf_dir: Path) -> dict:
    """config.json as a dict; hf_arch.from_hf decides whether homegpt can compute what it describes."""
    config = read_json(hf_dir / "config.json")
    if not isinstance(config, dict) and any(hf_dir.glob("*.gguf")):
        raise UserError(f"{hf_dir} holds a GGUF file: homegpt import reads transformers folders only (import the "
                        f"run's `homegpt export RUN OUT` folder instead)")
    if not isinstance(config, dict):
        raise UserError(f"{hf_dir} has no readable config.json: is it a transformers model folder?")
    return config


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of model.safetensors (or its shards); pickled pytorch_model.bin is refused."""
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set((read_json(index) or {}).get("weight_map", {}).values()))
        files = [hf_dir / s for s in shards]
    else:
        files = [hf_dir / "model.safetensors"]
    if not all(f.is_file() for f in files) or not files:
        if (hf_dir / "pytorch_model.bin").exists():
            raise UserError(f"{hf_dir} has only pytorch_model.bin (pickle, which homegpt never loads): "
                            f"save it with safe_serialization=True first")
        raise UserError(f"{hf_dir} has no model.safetensors")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{f} is not a readable safetensors file ({type(e).__name__})") from None
    return tensors


def import_tokenizer(hf_dir: Path, dest: Path) -> None:
    """tokenizer.json as it is (byte for byte), or one built from GPT-2's vocab.json + merges.txt."""
    src = hf_dir / "tokenizer.json"
    if src.is_file():
        shutil.copyfile(src, dest)
    elif (hf_dir / "vocab.json").is_file() and (hf_dir / "merges.txt").is_file():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.BPE.from_file(str(hf_dir / "vocab.json"), str(hf_dir / "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([EOT])
        tok.save(str(dest))
    else:
        raise UserError(f"{hf_dir} has no tokenizer.json (nor vocab.json + merges.txt)")
    load_tokenizer(dest)  # a UserError unless it is a byte-level tokenizer with <|endoftext|>


def import_hf(hf_dir: str | Path, out_run_dir: str | Path, force: bool = False) -> dict:
    """Turn a transformers GPT-2 or Qwen3 folder into a homegpt run that sample, eval and `train --resume` accept.

    The run has one checkpoint with weights, fresh RNG states and no optimizer state (the optimizer restarts
    from zero moments when training resumes). A homegpt export's homegpt.json restores the step, the
    training config (dropout included: transformers' configs have no place for it) and the held-out
    metrics; any other model starts at step 0.
    """
    src, out = Path(hf_dir), Path(out_run_dir)
    if src.is_file() and src.suffix == ".gguf":
        raise UserError(f"{src} is a GGUF file: homegpt import reads transformers folders only (import the run's "
                        f"`homegpt export RUN OUT` folder instead)")
    if not src.is_dir():
        raise UserError(f"{src} does not exist or is not a folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        what = "already holds a run" if (out / "run.json").exists() else "is not empty"
        raise UserError(f"{out} {what}: choose another --out or pass --force")
    cfg, weights = from_hf(read_hf_config(src), lambda: read_hf_weights(src), src)
    meta = read_json(src / META_FILE) or {}
    dropout = (meta.get("train_config") or {}).get("dropout")
    if isinstance(dropout, (int, float)) and not isinstance(dropout, bool):
        cfg = replace(cfg, dropout=float(dropout))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:  # built aside and moved in whole: a refused import leaves --out as it was
        import_tokenizer(src, tmp / "tokenizer.json")
        info = write_run(tmp, cfg, weights, int(meta.get("step", 0)), meta, {"imported_from": str(src.resolve())})
        for name in ("loss.png", TEMPLATE_FILE):  # a chat model stays one: sample --chat, serve use its template
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        out.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"run_dir": str(out), "step": info["step"], "params": info["params"]["total"], "model": cfg.to_dict(),
            "data_dir": info["data_dir"]}


def write_run(out: Path, cfg: GPTConfig, weights: dict[str, torch.Tensor], step: int = 0, meta: dict | None = None,
              extra: dict | None = None) -> dict:
    """A run directory around given weights: run.json, config.toml, one checkpoint (+ eval.json if known).

    out/tokenizer.json must already be there. meta is an export's homegpt.json (or {}): its training
    config, held-out metrics and data source carry over. Returns run.json's content plus the step.
    """
    from homegpt.rundir.checkpoint import CKPT_PREFIX, load_weights
    from homegpt.train.config import TrainConfig, dump_toml

    meta = meta or {}
    load_weights(GPT(cfg), weights, out)  # names and shapes must be this config's
    tok = load_tokenizer(out / "tokenizer.json")
    if tok.get_vocab_size() > cfg.vocab_size:
        raise UserError(f"the tokenizer has {tok.get_vocab_size()} tokens, the model only {cfg.vocab_size}")
    train_cfg = _imported_train_config(meta.get("train_config") or {}, cfg)
    TrainConfig.from_dict(train_cfg)  # the written config.toml must load back
    (out / "config.toml").write_text(dump_toml(train_cfg), encoding="utf-8")
    old = meta.get("run") or {}
    info = run_info(cfg, train_cfg["data_dir"], old.get("data_source", ""), file_sha256(out / "tokenizer.json"),
                    old.get("dtype", "auto"), extra=extra)
    write_run_info(out, info, ensure_ascii=False)
    if isinstance(meta.get("eval"), dict):
        _write_json(out / "eval.json", meta["eval"])
    ckpt = out / "checkpoints" / f"{CKPT_PREFIX}{step:06d}"
    write_fresh_checkpoint(ckpt, weights, step, meta, seed=int(train_cfg.get("seed", 1337)))
    return dict(info, step=step)


def _imported_train_config(saved: dict, cfg: GPTConfig) -> dict:
    """The exported run's training config when known, with the model spelled out (no preset): its shape and
    architecture, so that training resumes this very model."""
    from homegpt.train.config import TrainConfig

    known = set(TrainConfig().to_dict())
    values = {k: v for k, v in saved.items() if k in known}
    if values.get("data_dir") and not Path(values["data_dir"]).is_dir():
        values["data_dir"] = ""  # another machine's path: give --data-dir when resuming
    values.update(preset="", n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                  block_size=cfg.block_size, dropout=cfg.dropout, arch=cfg.arch, mlp=cfg.mlp,
                  rope_theta=cfg.rope_theta, tie_embeddings="true" if cfg.tie_embeddings else "false",
                  bias="true" if cfg.bias else "false")
    values.setdefault("data_dir", "")
    return TrainConfig(**values).to_dict()


def write_fresh_checkpoint(ckpt: Path, weights: dict[str, torch.Tensor], step: int, meta: dict, seed: int) -> None:
    """A checkpoint `homegpt train --resume` continues from: weights, seeded RNG states, state.json; no optimizer."""
    ckpt.mkdir(parents=True)
    save_file(weights, str(ckpt / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed + step)
    save_file({"torch_cpu": gen.get_state(), "loader": gen.get_state()}, str(ckpt / "rng.safetensors"))
    old_eval = meta.get("eval") or {}
    state = {
        "step": step,
        "tokens": int(old_eval.get("tokens_trained", 0)),
        "elapsed_s": float(old_eval.get("train_seconds", 0.0)),
        "python_rng": python_rng_json(random.Random(seed + step)),
        "numpy_rng": numpy_rng_json(np.random.RandomState(seed + step)),
        "imported": True,
    }
    if "val_loss" in old_eval:
        state["best_val_loss"] = float(old_eval["val_loss"])
    (ckpt / "state.json").write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
