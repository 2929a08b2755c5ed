"""Text generation from a trained model, streamed to the terminal as it is produced.

The prompt is preceded by <|endoftext|>, as every training document is, so the model starts as it would
at the beginning of a document. Generation stops at <|endoftext|> or after max_new_tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from homegpt.errors import UserError
from homegpt.model import GPT
from homegpt.tokenizer import EOT


def encode_prompt(tok, prompt: str, block_size: int, max_new_tokens: int) -> list[int]:
    ids = [tok.token_to_id(EOT)] + tok.encode(prompt).ids
    if len(ids) + max_new_tokens > block_size:
        raise UserError(
            f"prompt ({len(ids)} tokens with the start marker) + --max-new-tokens {max_new_tokens} exceeds the "
            f"model's context of {block_size} tokens: shorten the prompt or lower --max-new-tokens"
        )
    return ids


def generate_text(
    model: GPT,
    tok,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int = 0,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """The continuation of `prompt` (without the prompt); on_text receives it piece by piece."""
    model.eval()
    ids = encode_prompt(tok, prompt, model.config.block_size, max_new_tokens)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    eot = tok.token_to_id(EOT)
    new: list[int] = []
    shown = ""
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    for t in model.generate(idx, max_new_tokens, temperature, top_k, top_p, gen, stop_token=eot):
        token = int(t[0, 0])
        if token == eot:
            break
        new.append(token)
        text = tok.decode(new)
        # Byte-level tokens can end mid-character: show text only once the character is complete.
        if on_text is not None and not text.endswith("\ufffd"):
            on_text(text[len(shown) :])
            shown = text
    text = tok.decode(new)
    if on_text is not None and len(text) > len(shown):
        on_text(text[len(shown) :])
    return text


def sample_run(
    run_dir: str | Path,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int = 0,
    num_samples: int = 1,
    device: str = "auto",
    on_text: Callable[[str], None] | None = None,
) -> list[str]:
    from homegpt.checkpoint import load_run

    if temperature < 0:
        raise UserError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {top_p}")
    if max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    run = load_run(run_dir, device=device)
    encode_prompt(run.tokenizer, prompt, run.model.config.block_size, max_new_tokens)  # check before output
    out = []
    for i in range(num_samples):
        if on_text is not None:
            on_text(prompt)
        with run.autocast:
            out.append(generate_text(run.model, run.tokenizer, prompt, max_new_tokens, temperature, top_k, top_p,
                                     seed + i, on_text))
        if on_text is not None:
            on_text("\n")
    return out
