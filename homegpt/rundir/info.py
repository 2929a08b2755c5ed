"""A run directory's run.json: what the run is. One builder, so that every way a run comes to exist records it
the same way, and the readers that training, sampling, serving and the sweeps rely on.

Training (train/session.py), `homegpt import` (share/export.py) and `homegpt sft` (chat/sft.py) each write
one run.json; run_info builds all three, each with the keys it knows: an imported run has no optimizer,
schedule or devices of its own, an SFT run adds its chat template and where it came from. In this order:

    homegpt_version, created, model, params      homegpt's version, when, the model's shape and sizes
    optimizer, schedule                          the training recipe (runs that were trained here)
    data_dir, data_source, tokenizer_sha256      the data and the tokenizer (its hash names it)
    dtype, eot                                   the precision asked for, the end-of-text token
    world_size, device                           where it trained (runs that were trained here)
    ...                                          what the caller adds (imported_from, chat_template, sft)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from homegpt import __version__
from homegpt.data.tokenizer import EOT
from homegpt.errors import UserError
from homegpt.model.gpt import GPTConfig, count_params

RUN_INFO = "run.json"


def run_info(
    model: GPTConfig,
    data_dir: str,
    data_source: str,
    tokenizer_sha256: str,
    dtype: str,
    *,
    optimizer: str | None = None,
    schedule: str | None = None,
    world_size: int | None = None,
    device: str | None = None,
    extra: dict | None = None,
) -> dict:
    """run.json's content; the keyword settings left None stay out of it, `extra` goes at the end."""
    info = {
        "homegpt_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": model.to_dict(),
        "params": count_params(model),
    }
    if optimizer is not None:
        info["optimizer"] = optimizer
    if schedule is not None:
        info["schedule"] = schedule
    info.update(data_dir=data_dir, data_source=data_source, tokenizer_sha256=tokenizer_sha256, dtype=dtype, eot=EOT)
    if world_size is not None:
        info["world_size"] = world_size
    if device is not None:
        info["device"] = device
    info.update(extra or {})
    return info


def device_name(setting: str) -> str:
    """What run.json records as the device a run trains on, given the config's `device` setting."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() and setting != "cpu" else "cpu"


def write_run_info(run_dir: Path, info: dict, ensure_ascii: bool = True) -> None:
    """RUN/run.json (indented JSON; ensure_ascii=False keeps non-ASCII text as it is, as an import writes it)."""
    (run_dir / RUN_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=ensure_ascii) + "\n", encoding="utf-8")


def read_run_info(run_dir: str | Path) -> dict:
    """A run's run.json, or a UserError saying why the folder is not a readable run."""
    path = Path(run_dir)
    if not path.exists():
        raise UserError(f"run {path} does not exist")
    if not (path / RUN_INFO).is_file():
        raise UserError(f"{path} is not a homegpt run directory (no run.json)")
    try:
        return json.loads((path / RUN_INFO).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}/run.json is damaged") from None


def previous_arch(run_dir: Path) -> str | None:
    """The architecture of a run (to resume it, or of a sweep's row), None without a readable run.json; runs from
    before `arch` existed are GPT-2."""
    try:
        model = json.loads((run_dir / RUN_INFO).read_text(encoding="utf-8"))["model"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
    return model.get("arch", "gpt2") if isinstance(model, dict) else None


def recorded_model(info: dict) -> dict | None:
    """run.json's model with every setting spelled out (older runs recorded fewer), None if it is not one."""
    try:
        return GPTConfig.from_dict(info.get("model") or {}).to_dict()
    except (UserError, TypeError):
        return None
