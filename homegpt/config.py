"""Training configuration: one flat TOML file, every key documented here, overridable from the CLI.

A config says where the prepared data is, the model's shape (a preset and/or explicit sizes), and how to
optimise. The vocabulary size is not a setting: it comes from the tokenizer, rounded up to a multiple of 64.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from homegpt.errors import UserError, closest
from homegpt.model import PRESETS, GPTConfig


@dataclass
class TrainConfig:
    # --- data: a directory written by `homegpt prepare` (manifest.json, tokenizer.json, train/val shards)
    data_dir: str = ""
    data_order: str = "random"  # random windows (seeded) | sequential (corpus order, no window twice an epoch)
    # --- model: a named preset; explicit sizes below override it (0 / -1 = take the preset's value)
    preset: str = "cpu-small"
    n_layer: int = 0
    n_head: int = 0
    n_embd: int = 0
    block_size: int = 0
    dropout: float = 0.0
    bias: bool = True
    # --- optimisation: AdamW, linear warmup then cosine decay to min_lr_ratio * lr
    batch_tokens: int = 16384  # tokens per optimizer step (micro-batches are accumulated to reach it)
    micro_batch: int = 16  # sequences per forward/backward pass; 0 = the largest that fits (probed on GPUs)
    max_steps: int = 200  # optimizer steps; ignored when max_tokens > 0
    max_tokens: int = 0  # train on this many tokens (steps = max_tokens / batch_tokens, rounded up)
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1  # only on matrices (>= 2-D): not on biases, LayerNorms
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # global gradient-norm clip; 0 turns it off
    # --- bookkeeping
    eval_interval: int = 50  # steps between held-out evaluations (and samples, and checkpoints)
    eval_tokens: int = 32768  # held-out tokens per periodic evaluation (the final one uses all of them)
    checkpoint_interval: int = 0  # steps between checkpoints; 0 = at every evaluation
    keep_checkpoints: int = 2  # how many recent checkpoints to keep
    sample_tokens: int = 48  # length of the samples written at each evaluation (0 = none)
    sample_prompt: str = ""  # prompt for those samples ("" = start from end-of-text)
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    # auto: CUDA bf16 where supported, else fp16 with loss scaling; CPU/MPS fp32. Or fp32 | bf16 | fp16.
    dtype: str = "auto"
    compile: str = "auto"  # torch.compile the model: auto (on for CUDA) | on | off
    # under torchrun: ddp (every rank holds the whole model) | fsdp (FSDP2: parameters, gradients and
    # optimizer moments sharded across ranks, for models whose training state doesn't fit one device)
    parallel: str = "ddp"
    # --- the live meter and loggers
    price: float = 0.0  # USD per device-hour (all devices of the run together): shows dollars spent/projected
    peak_tflops: float = 0.0  # the device's peak for MFU; 0 = GPU table, or a measured matmul rate on CPU
    tensorboard: bool = False  # also log to RUN/tensorboard (needs the tensorboard package)
    wandb_project: str = ""  # also log to Weights & Biases under this project (needs wandb, and a login)

    def model_config(self, vocab_size: int) -> GPTConfig:
        base = dict(PRESETS[self.preset]) if self.preset else {}
        for name in ("n_layer", "n_head", "n_embd", "block_size"):
            if getattr(self, name) > 0:
                base[name] = getattr(self, name)
        missing = [n for n in ("n_layer", "n_head", "n_embd", "block_size") if n not in base]
        if missing:
            raise UserError(f"no preset and no {', '.join(missing)} given: set preset or the sizes")
        base.update(vocab_size=vocab_size, dropout=self.dropout, bias=self.bias)
        return GPTConfig(**base)

    def compile_enabled(self, device) -> bool:
        return self.compile == "on" or (self.compile == "auto" and device.type == "cuda")

    def total_steps(self) -> int:
        if self.max_tokens > 0:
            return max(1, -(-self.max_tokens // self.batch_tokens))
        return self.max_steps

    def validate(self) -> None:
        if self.preset and self.preset not in PRESETS:
            raise UserError(f"unknown preset {self.preset!r}{closest(self.preset, PRESETS)}")
        positive = ("batch_tokens", "eval_interval", "eval_tokens", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_tokens <= 0 and self.max_steps <= 0:
            raise UserError("set max_steps or max_tokens to a positive number")
        if self.price < 0 or self.peak_tflops < 0:
            raise UserError("price and peak_tflops must not be negative")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.data_order not in ("random", "sequential"):
            raise UserError(f"data_order must be random or sequential, got {self.data_order!r}")
        if self.micro_batch < 0:
            raise UserError(f"micro_batch must be >= 0 (0 = automatic), got {self.micro_batch}")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise UserError(f"dtype must be auto, fp32, bf16 or fp16, got {self.dtype!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise UserError(f"parallel must be ddp or fsdp, got {self.parallel!r}")
        self.compile = {"true": "on", "false": "off"}.get(str(self.compile).lower(), str(self.compile).lower())
        if self.compile not in ("auto", "on", "off"):
            raise UserError(f"compile must be auto, on or off, got {self.compile!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> TrainConfig:
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in d.items():
            if key not in known:
                raise UserError(f"unknown {where} key {key!r}{closest(key, known)}")
            values[key] = _coerce(key, value, known[key].type)
        cfg = cls(**values)
        cfg.validate()
        return cfg


def _coerce(key: str, value, type_name: str):
    """Check and convert one value (from TOML or a --key value string) to the field's type."""
    try:
        if type_name == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if type_name == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                f = float(value)  # accept 1e6 and 1_000_000 style
                if f != int(f):
                    raise ValueError
                return int(f)
            if isinstance(value, float) and value != int(value):
                raise ValueError
            return int(value)
        if type_name == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"{key} must be {type_name}, got {value!r}") from None


def load_config(path: str | Path | None, overrides: dict[str, str] | None = None) -> TrainConfig:
    """Read a TOML config (or start from defaults when path is None) and apply --key value overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {p} does not exist")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"config file {p} is not valid TOML: {e}") from None
        for key, value in data.items():
            if isinstance(value, dict):
                raise UserError(f"config file {p}: sections are not used, put {key!r}'s keys at top level")
    data.update(overrides or {})
    return TrainConfig.from_dict(data, where="config")


def dump_toml(d: dict) -> str:
    """Flat TOML for scalars (all a TrainConfig holds)."""
    lines = []
    for key, value in d.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            lines.append(f"{key} = {value!r}")
        else:
            escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            lines.append(f'{key} = "{escaped}"')
    return "\n".join(lines) + "\n"


def parse_overrides(args: list[str]) -> dict[str, str]:
    """['--lr', '3e-4', '--n-layer=6'] -> {'lr': '3e-4', 'n_layer': '6'}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}: overrides look like --key value")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise UserError(f"override {arg} needs a value")
            value = args[i + 1]
            i += 2
        out[key.replace("-", "_")] = value
    return out
