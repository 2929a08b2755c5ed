"""What `homegpt serve` serves: a run's checkpoint, or a folder written by `homegpt export`, loaded into memory.

A run (a folder with run.json) loads as `homegpt sample` loads it (checkpoint.load_run: latest, best or a
step). A transformers folder (config.json: GPT2LMHeadModel or Qwen3ForCausalLM as `homegpt export` writes
them) is read by the same code as `homegpt import` (hf_arch.from_hf refuses whatever homegpt's model would
compute differently; safetensors only) straight into a model, without writing a run.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from homegpt.data.chatml import ChatFormat, load_chat_format
from homegpt.data.tokenizer import EOT
from homegpt.errors import UserError
from homegpt.model.gpt import GPT


@dataclass
class Served:
    name: str  # the model id clients name
    model: GPT
    tokenizer: object
    autocast: object
    chat: ChatFormat
    source: str  # "run" or the transformers class
    step: int

    @property
    def context(self) -> int:
        return self.model.config.block_size

    @property
    def eot(self) -> int:
        return self.tokenizer.token_to_id(EOT)


def load_served(path: str | Path, step: int | str | None = None, device: str = "auto",
                name: str | None = None) -> Served:
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist or is not a folder: give a run or a `homegpt export` folder")
    model_name = name or folder.resolve().name
    if (folder / "run.json").is_file():
        from homegpt.rundir.checkpoint import load_run

        run = load_run(folder, device=device, step=step)
        return Served(model_name, run.model, run.tokenizer, run.autocast, load_chat_format(folder), "run", run.step)
    if (folder / "config.json").is_file():
        if step is not None:
            raise UserError(f"{folder} is an export, which holds one checkpoint: drop --step")
        return _load_export(folder, device, model_name)
    raise UserError(f"{folder} is neither a homegpt run (no run.json) nor a transformers folder (no config.json)")


def _load_export(folder: Path, device: str, name: str) -> Served:
    from homegpt.data.tokenizer import load_tokenizer
    from homegpt.rundir.checkpoint import load_weights
    from homegpt.runtime.device import autocast_for, pick_device
    from homegpt.share.export import META_FILE, import_tokenizer, read_hf_config, read_hf_weights, read_json
    from homegpt.share.hf_arch import HF_CLASS, from_hf

    cfg, weights = from_hf(read_hf_config(folder), lambda: read_hf_weights(folder), folder)
    with tempfile.TemporaryDirectory() as tmp:  # tokenizer.json as it is, or built from vocab.json + merges.txt
        tok_path = Path(tmp) / "tokenizer.json"
        import_tokenizer(folder, tok_path)
        tokenizer = load_tokenizer(tok_path)
    if tokenizer.get_vocab_size() > cfg.vocab_size:
        raise UserError(f"{folder}'s tokenizer has {tokenizer.get_vocab_size()} tokens, the model only "
                        f"{cfg.vocab_size}")
    dev = pick_device(device)
    model = GPT(cfg)
    load_weights(model, weights, folder)
    model.to(dev).eval()
    meta = read_json(folder / META_FILE) or {}
    dtype = (meta.get("run") or {}).get("dtype", "auto")
    return Served(name, model, tokenizer, autocast_for(dev, dtype if isinstance(dtype, str) else "auto"),
                  load_chat_format(folder), HF_CLASS[cfg.arch], int(meta.get("step", 0) or 0))
