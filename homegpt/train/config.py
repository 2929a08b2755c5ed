"""Training configuration: one flat TOML file, every key documented here, overridable from the CLI.

A config says where the prepared data is, the model's shape (a preset and/or explicit sizes), and how to
optimise. The vocabulary size is not a setting: it comes from the tokenizer, rounded up to a multiple of 64.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from homegpt.choices import DEFAULT_ARCH
from homegpt.errors import UserError, closest
from homegpt.model.gpt import PRESETS, GPTConfig

# Peak learning rates when the config leaves them at 0 (auto); `resolved()` reads them, optim.py applies them.
# AdamW: 1e-3. Muon recipe: tuned on the 4 x 128 demo model (untied head, ReLU² MLP) on the built-in corpus, one
# value at a time around nanochat's and modded-nanogpt's (BENCHMARKS.md, "Tuning the modern recipe");
# benchmarks/recipe_efficiency.py then re-tunes a common multiplier (the same best one for SwiGLU and ReLU² at
# every budget it ran: x1 at the largest).
MUON_LR = 0.03
MUON_EMBEDDING_LR = 0.2
MUON_HEAD_LR = 0.004
MUON_SCALAR_LR = 0.01
ADAMW_LR = 1e-3


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
    # the architecture (model/gpt.py): gpt2 | modern; "" = the preset's if it names one, else modern (RoPE,
    # RMSNorm, QK-norm, no biases; the recipe BENCHMARKS.md measures best)
    arch: str = ""
    mlp: str = ""  # modern: swiglu (gated SiLU, ~8/3 d) | relu2 (4d, squared ReLU); gpt2: gelu. "" = the first
    rope_theta: float = 10000.0  # modern: base of the rotary embeddings' frequencies
    tie_embeddings: str = "auto"  # the head reads the token embedding: auto (gpt2: yes; modern: no) | true | false
    bias: str = "auto"  # auto (gpt2: biases, modern: none) | true | false
    # --- optimisation (optim.py). "auto" and 0 mean: the architecture's recipe, resolved when training starts
    # and written to RUN/config.toml. gpt2: AdamW + cosine, lr 1e-3. modern: Muon + WSD (Muon lr 0.03 on the
    # blocks' matrices; AdamW at embedding_lr / head_lr / scalar_lr on the embedding, an untied head, gains).
    optimizer: str = "auto"  # auto | adamw | muon
    schedule: str = "auto"  # auto | cosine (warmup, cosine decay) | wsd (warmup, constant, linear decay)
    batch_tokens: int = 16384  # tokens per optimizer step (micro-batches are accumulated to reach it)
    micro_batch: int = 16  # sequences per forward/backward pass; 0 = the largest that fits (probed on GPUs)
    max_steps: int = 200  # optimizer steps; ignored when max_tokens > 0 or max_seconds > 0
    max_tokens: int = 0  # train on this many tokens (steps = max_tokens / batch_tokens, rounded up)
    # train for this many seconds of wall-clock (evaluations included): the step count is re-planned from the
    # measured speed while the learning rate is still flat, so the run ends on time with a whole decay
    max_seconds: float = 0.0
    lr: float = 0.0  # peak lr of the matrices' optimizer (AdamW, or Muon); 0 = auto
    embedding_lr: float = 0.0  # AdamW lr of the token (and position) embedding; 0 = auto (adamw: lr)
    head_lr: float = 0.0  # AdamW lr of an untied head; 0 = auto (adamw: lr)
    scalar_lr: float = 0.0  # AdamW lr of 1-D parameters (norm gains, biases); 0 = auto (adamw: lr)
    min_lr_ratio: float = -1.0  # the rate at the last step, x the peak; -1 = auto (cosine 0.1, wsd 0)
    warmup_steps: int = 20
    decay_fraction: float = 0.4  # wsd: the last fraction of the steps over which the rate decays
    weight_decay: float = 0.1  # AdamW, on matrices only (>= 2-D): not on biases, norm gains
    beta1: float = 0.9
    beta2: float = 0.95
    muon_momentum: float = 0.95
    muon_momentum_start: float = 0.85  # Muon's momentum rises linearly from this over muon_momentum_warmup steps
    muon_momentum_warmup: int = 300
    muon_weight_decay: float = 0.0  # decoupled weight decay of the Muon matrices (lr x wd per step)
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
        bias, tie = _auto_bool("bias", self.bias), _auto_bool("tie_embeddings", self.tie_embeddings)
        base.update(vocab_size=vocab_size, dropout=self.dropout, bias=bias, arch=self.resolved_arch(),
                    mlp=self.mlp, rope_theta=self.rope_theta, tie_embeddings=tie)
        return GPTConfig(**base)

    def resolved_arch(self) -> str:
        if self.arch:
            return self.arch
        return PRESETS.get(self.preset, {}).get("arch", DEFAULT_ARCH)

    def resolved(self, arch: str | None = None) -> TrainConfig:
        """A copy with every "auto" of the recipe made concrete (arch: the one to assume when none is set)."""
        arch = self.arch or arch or self.resolved_arch()
        optimizer = self.optimizer if self.optimizer != "auto" else ("muon" if arch == "modern" else "adamw")
        schedule = self.schedule if self.schedule != "auto" else ("wsd" if arch == "modern" else "cosine")
        if optimizer == "muon":
            lr = self.lr or MUON_LR
            lrs = (self.embedding_lr or MUON_EMBEDDING_LR, self.head_lr or MUON_HEAD_LR,
                   self.scalar_lr or MUON_SCALAR_LR)
        else:
            lr = self.lr or ADAMW_LR
            lrs = (self.embedding_lr or lr, self.head_lr or lr, self.scalar_lr or lr)
        floor = self.min_lr_ratio if self.min_lr_ratio >= 0 else (0.0 if schedule == "wsd" else 0.1)
        out = replace(self, arch=arch, optimizer=optimizer, schedule=schedule, lr=lr, embedding_lr=lrs[0],
                      head_lr=lrs[1], scalar_lr=lrs[2], min_lr_ratio=floor)
        out.validate()
        return out

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
        for name in ("lr", "embedding_lr", "head_lr", "scalar_lr"):
            if not getattr(self, name) >= 0:
                raise UserError(f"{name} must be positive (or 0 for the recipe's default), got {getattr(self, name)}")
        if not (0 <= self.min_lr_ratio <= 1 or self.min_lr_ratio == -1):
            raise UserError(f"min_lr_ratio must be in [0, 1] (or -1 for the schedule's default), "
                            f"got {self.min_lr_ratio}")
        if not 0 < self.decay_fraction <= 1:
            raise UserError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.max_seconds < 0 or self.warmup_steps < 0 or self.muon_momentum_warmup < 0:
            raise UserError("max_seconds, warmup_steps and muon_momentum_warmup must not be negative")
        for name in ("muon_momentum", "muon_momentum_start"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.muon_weight_decay < 0 or self.weight_decay < 0:
            raise UserError("weight_decay and muon_weight_decay must not be negative")
        self._check_choice("arch", ("", "gpt2", "modern"), "gpt2 or modern")
        self._check_choice("optimizer", ("auto", "adamw", "muon"), "adamw or muon")
        self._check_choice("schedule", ("auto", "cosine", "wsd"), "cosine or wsd")
        for name in ("bias", "tie_embeddings"):
            setattr(self, name, str(getattr(self, name)).lower())
            self._check_choice(name, ("auto", "true", "false"), "true, false or auto")
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

    def _check_choice(self, name: str, allowed: tuple[str, ...], say: str) -> None:
        value = getattr(self, name)
        if value not in allowed:
            raise UserError(f"unknown {name} {value!r}{closest(value, [a for a in allowed if a])}: use {say}")

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


def _auto_bool(name: str, value) -> bool | None:
    """"auto" -> None (the architecture decides), else the boolean a config (or a caller's bool) says."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text not in ("auto", "true", "false"):
        raise UserError(f"{name} must be true, false or auto, got {value!r}")
    return None if text == "auto" else text == "true"


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
        if type_name == "str" and isinstance(value, bool):  # bias = true in TOML
            return "true" if value else "false"
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
