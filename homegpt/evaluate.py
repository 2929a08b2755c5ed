"""Honest metrics, and which text they were measured on.

    loss        mean cross-entropy in nats per predicted token
    perplexity  exp(loss); at least 1 by definition
    bits/byte   total nats / ln 2 / number of UTF-8 bytes of the predicted tokens' text

Which text (evaluate_run; README "Metrics, defined"):
    homegpt eval RUN                         the run's held-out split, from its prepared shards (checked first)
    homegpt eval RUN --data SOURCE           every document of SOURCE; for the run's own source its held-out split
    ... --whole / --held-out                 every document / only the held-out documents, explicitly

The held-out split is scored as training scores it (evaluate_tokens, the "stream" definition): its tokens
cut into consecutive, non-overlapping windows of the model's context, so every token after the first is
predicted exactly once; <|endoftext|> is predicted (its nats count) but has no bytes. Any other text is
scored document by document as lm-evaluation-harness scores it (textscore.py, the "documents"
definition). Bits per byte does not depend on the tokenizer, so it compares models with different
vocabularies.
"""
from __future__ import annotations

import math
import sys
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
                 step: int | str | None = None, scope: str | None = None, progress: bool = False) -> dict:
    """Evaluate a run's weights (latest, best or `step`) on text, and say which text that was.

    scope "held-out" or "whole" (None: held-out for the run's own source, whole for any other). The run's own
    held-out split is scored as training scores it (the stream over its prepared shards, checked first);
    any other text, and --whole, document by document (textscore.py: lm-evaluation-harness's definition).
    """
    from homegpt.checkpoint import load_run
    from homegpt.sources import same_source

    if scope not in (None, *SCOPES):
        raise ValueError(f"unknown scope {scope!r}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    run = load_run(run_dir, device=device, step=step)
    spec = source or run.data_source
    if not spec:
        raise UserError(f"run {run_dir} records no data directory (an imported model?): pass --data SOURCE")
    own = same_source(spec, run.data_source)
    scope = scope or ("held-out" if own else "whole")
    if own and scope == "held-out":
        result = _held_out_split(run, spec, batch_size, progress)
    else:
        result = _score(run, spec, scope, "documents", 0, batch_size, progress)
        result["where"] = f"{'every document' if scope == 'whole' else 'the held-out documents'} of {spec}"
    result.update(data=spec, scope=scope, step=run.step, batch_size=batch_size)
    docs = result["documents"]
    result["scored"] = (f"{result['where']}: {docs:,} document{'s' if docs != 1 else ''}, {result['tokens']:,} "
                        f"tokens predicted, {result['bytes']:,} bytes ({result['definition']} definition)")
    return result


SCOPES = ("held-out", "whole")


def _held_out_split(run, spec: str, batch_size: int, progress: bool) -> dict:
    """The run's own held-out split: its prepared shards when they are there, else its source re-encoded."""
    from homegpt.packed import check_masks, evaluate_held_out, is_packed, open_held_out
    from homegpt.shards import check_split, open_split

    manifest = run_manifest(run)
    if manifest is None and "sft" in run.info:
        raise UserError(f"the packed conversations of {run.path} ({run.data_dir}) are gone: pass --data SOURCE to "
                        f"score text")
    if manifest is None:  # the prepared data is gone: the same documents, packed as prepare packed them
        result = _score(run, spec, "held-out", "stream", 0, batch_size, progress)
        result["where"] = f"the held-out documents of {spec}, re-encoded (no prepared data at {run.data_dir})"
        return result
    check_split(run.data_dir, "val", manifest)
    if is_packed(manifest):  # an SFT run: its held-out conversations, scored on the assistant's tokens
        check_masks(run.data_dir, manifest)
        result = evaluate_held_out(run.model, open_held_out(run.data_dir, manifest), run.token_bytes, batch_size,
                                   autocast=run.autocast)
        result.update(documents=manifest["splits"]["val"].get("documents", 0), definition="assistant tokens",
                      where=f"the held-out conversations packed in {run.data_dir} (loss on the assistant's tokens)")
        return result
    tokens = open_split(run.data_dir, "val", manifest)
    result = evaluate_tokens(run.model, tokens, run.token_bytes, batch_size=batch_size, autocast=run.autocast)
    result.update(documents=manifest["splits"]["val"].get("documents", 0), definition="stream",
                  where=f"the held-out split prepared in {run.data_dir}")
    return result


def run_manifest(run) -> dict | None:
    """The manifest of the run's prepared data, None when it is gone; a UserError when it no longer holds the
    data the run was trained on."""
    from homegpt.shards import read_manifest

    if not run.data_dir or not (Path(run.data_dir) / "manifest.json").is_file():
        return None
    manifest = read_manifest(run.data_dir)
    if manifest["tokenizer_sha256"] != run.info.get("tokenizer_sha256"):
        raise UserError(f"{run.data_dir} now holds data prepared with another tokenizer than {run.path}'s: "
                        f"prepare the run's source there again, or pass --data SOURCE")
    if run.data_source and manifest.get("source", run.data_source) != run.data_source:
        raise UserError(f"{run.data_dir} now holds {manifest['source']}, not the run's {run.data_source}: "
                        f"prepare it again, or pass --data SOURCE")
    return manifest


def _score(run, spec: str, scope: str, definition: str, seed: int, batch_size: int, progress: bool) -> dict:
    from tqdm import tqdm

    from homegpt.textscore import score_source

    bar = tqdm(unit="tok", unit_scale=True, desc="eval", disable=None if progress else True, file=sys.stderr,
               dynamic_ncols=True)

    def advance(tally) -> None:
        bar.update(tally.tokens - bar.n)

    try:
        result = score_source(run.model, run.tokenizer, run.token_bytes, spec, scope, definition, seed,
                              batch_size, run.autocast, advance)
    finally:
        bar.close()
    result["definition"] = definition
    return result
