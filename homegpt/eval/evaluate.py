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

from pathlib import Path

from homegpt.errors import UserError
from homegpt.progress import progress_bar


def evaluate_run(run_dir: str | Path, source: str | None = None, batch_size: int = 8, device: str = "auto",
                 step: int | str | None = None, scope: str | None = None, progress: bool = False) -> dict:
    """Evaluate a run's weights (latest, best or `step`) on text, and say which text that was.

    scope "held-out" or "whole" (None: held-out for the run's own source, whole for any other). The run's own
    held-out split is scored as training scores it (the stream over its prepared shards, checked first);
    any other text, and --whole, document by document (textscore.py: lm-evaluation-harness's definition).
    """
    from homegpt.data.sources import same_source
    from homegpt.rundir.checkpoint import load_run

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
    from homegpt.data.packed import check_masks, is_packed
    from homegpt.data.shards import check_split, open_split
    from homegpt.train.heldout import evaluate_held_out, evaluate_tokens, open_held_out

    manifest = run_manifest(run)
    if manifest is None and "sft" in run.info:
        raise UserError(f"the packed conversations of {run.path} ({run.data_dir}) are gone: pass --data SOURCE to "
                        f"score text")
    if manifest is None:  # the prepared data is gone: the same documents, packed as prepare packed them
        result = _score(run, spec, "held-out", "stream", 0, batch_size, progress)
        gone = f"no prepared data at {run.data_dir}" if run.data_dir else "the run records no prepared data"
        result["where"] = f"the held-out documents of {spec}, re-encoded ({gone})"
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
    from homegpt.data.shards import read_manifest

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
    from homegpt.eval.textscore import score_source

    bar = progress_bar(unit="tok", unit_scale=True, desc="eval", disable=None if progress else True)

    def advance(tally) -> None:
        bar.update(tally.tokens - bar.n)

    try:
        result = score_source(run.model, run.tokenizer, run.token_bytes, spec, scope, definition, seed,
                              batch_size, run.autocast, advance)
    finally:
        bar.close()
    result["definition"] = definition
    return result
