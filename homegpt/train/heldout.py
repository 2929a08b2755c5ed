"""Held-out loss, perplexity and bits per byte: one definition, used by training (its evaluations and
eval.json: evaluate_in_training), `homegpt eval`, export's model card and chat fine-tuning.

Loss is the mean cross-entropy in nats per predicted token; perplexity = exp(loss); bits per byte = the summed
nats / ln 2 over the UTF-8 bytes of the predicted tokens' text (token_bytes), so it compares across tokenizers.
Token sequences are cut into whole contexts of block_size (the last one shorter), packed conversations count
their loss tokens only (the assistant's replies).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from homegpt.data.packed import PackedRows, is_packed
from homegpt.data.shards import open_split
from homegpt.errors import UserError


@torch.no_grad()
def evaluate_tokens(
    model,
    tokens: np.ndarray,
    token_bytes: torch.Tensor,
    batch_size: int = 8,
    max_tokens: int | None = None,
    autocast=None,
) -> dict:
    """Loss, perplexity and bits per byte of `model` on a 1-D array of token ids."""
    block = model.config.block_size
    device = next(model.parameters()).device
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    if n < 2:
        raise UserError("held-out split has fewer than 2 tokens: nothing to evaluate")
    was_training = model.training
    model.eval()
    starts = list(range(0, n - 1, block))
    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    token_bytes = token_bytes.to(device)
    full = [s for s in starts if s + block + 1 <= n]
    partial = [s for s in starts if s + block + 1 > n]
    groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[s] for s in partial]
    for group in groups:
        length = min(block, n - 1 - group[0]) if group[0] in partial else block
        chunk = np.stack([np.asarray(tokens[s : s + length + 1], dtype=np.int64) for s in group])
        batch = torch.from_numpy(chunk).to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        with autocast or nullcontext():
            _, nats = model(x, y, reduction="none")
        total_nats += float(nats.double().sum())
        total_tokens += y.numel()
        total_bytes += int(token_bytes[y].sum())
    model.train(was_training)
    loss = total_nats / total_tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bpb": total_nats / math.log(2) / max(1, total_bytes),
        "tokens": total_tokens,
        "bytes": total_bytes,
    }


@torch.no_grad()
def evaluate_rows(model, rows: PackedRows, token_bytes: torch.Tensor, batch_size: int = 8,
                  max_tokens: int | None = None, autocast=None) -> dict:
    """Loss on the loss tokens of held-out rows (all, or the first max_tokens worth): nats per token,
    perplexity and bits per byte of those tokens' text."""
    n = rows.rows if max_tokens is None else min(rows.rows, max(1, math.ceil(max_tokens / rows.row)))
    if n < 1:
        raise UserError("no held-out conversation fits the model's context: nothing to evaluate")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    token_bytes = token_bytes.to(device)
    nats, tokens, nbytes = 0.0, 0, 0
    for start in range(0, n, batch_size):
        x, y, keep = rows.batch(list(range(start, min(n, start + batch_size))), device)
        with autocast or nullcontext():
            _, loss = model(x, y, reduction="none")
        keep = keep.reshape(-1)
        nats += float(loss.double()[keep].sum())
        tokens += int(keep.sum())
        nbytes += int(token_bytes[y.reshape(-1)][keep].sum())
    model.train(was_training)
    loss = nats / max(1, tokens)
    return {"loss": loss, "perplexity": math.exp(loss), "bpb": nats / math.log(2) / max(1, nbytes),
            "tokens": tokens, "bytes": nbytes, "rows": n}


def open_held_out(data_dir: str | Path, manifest: dict):
    """The held-out split: a token sequence, or packed conversation rows."""
    return PackedRows(data_dir, "val", manifest) if is_packed(manifest) else open_split(data_dir, "val", manifest)


def evaluate_held_out(model, held, token_bytes: torch.Tensor, batch_size: int = 8, max_tokens: int | None = None,
                      autocast=None) -> dict:
    """evaluate_tokens on a token sequence, evaluate_rows on packed conversations."""
    if isinstance(held, PackedRows):
        return evaluate_rows(model, held, token_bytes, batch_size, max_tokens, autocast)
    return evaluate_tokens(model, held, token_bytes, batch_size, max_tokens, autocast)


def evaluate_in_training(model, held, token_bytes: torch.Tensor, batch_size: int, eval_tokens: int, autocast,
                         final: bool) -> tuple[dict, float]:
    """A training run's evaluation: (metrics to report, the loss that ranks checkpoints for `best`).

    During training: the first eval_tokens held-out tokens, the same ones each time. At the end: the whole
    split, and, when the split is longer, those first eval_tokens again so the last checkpoint ranks fairly.
    """
    ev = evaluate_held_out(model, held, token_bytes, batch_size, None if final else eval_tokens, autocast)
    if final and len(held) > eval_tokens + 1:
        return ev, evaluate_held_out(model, held, token_bytes, batch_size, eval_tokens, autocast)["loss"]
    return ev, ev["loss"]
