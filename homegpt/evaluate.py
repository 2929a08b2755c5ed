"""Honest held-out metrics.

    loss        mean cross-entropy in nats per predicted token, over held-out text the model never trained on
    perplexity  exp(loss); at least 1 by definition
    bits/byte   total nats / ln 2 / number of UTF-8 bytes of the predicted tokens' text

The held-out tokens are cut into consecutive, non-overlapping windows of the model's context, so every
token after the first is predicted exactly once. Bits per byte does not depend on the tokenizer, so it
compares models with different vocabularies; <|endoftext|> is predicted (its nats count) but has no bytes.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

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


def evaluate_run(run_dir: str | Path, source: str | None = None, batch_size: int = 8, device: str = "auto",
                 step: int | str | None = None) -> dict:
    """Evaluate a run's weights (latest, best or `step`) on its own held-out split or another source's."""
    from homegpt.checkpoint import load_run
    from homegpt.prepare import open_split
    from homegpt.sources import load_corpus
    from homegpt.tokenizer import EOT

    run = load_run(run_dir, device=device, step=step)
    if source is None:
        if not run.data_dir:
            raise UserError(f"run {run_dir} records no data directory (an imported model?): pass --data SOURCE")
        tokens = open_split(run.data_dir, "val")
        name = f"{run.data_source} (held-out split)"
    else:
        corpus = load_corpus(source)
        eot = run.tokenizer.token_to_id(EOT)
        ids: list[int] = []
        for enc in run.tokenizer.encode_batch(corpus.val):
            ids.extend(enc.ids)
            ids.append(eot)
        tokens = np.asarray(ids, dtype=np.int64)
        name = f"{source} (held-out split)"
    result = evaluate_tokens(run.model, tokens, run.token_bytes, batch_size=batch_size, autocast=run.autocast)
    result["data"] = name
    result["step"] = run.step
    return result
