"""The built-in instruction task's score (data/builtin_chat.py builds its conversations).

`score(model, tok, items)` prompts the model with the ChatML template (conversations.prompt_ids), decodes
greedily and reports the share of exact answers (overall and per kind) and the share of answers that end
with <|im_end|> (rather than running to the token limit or to <|endoftext|>). A base model prompted the
same way gives the "before" numbers (benchmarks/chat_task.py).
"""

from __future__ import annotations

import torch

from homegpt.data.builtin_chat import KINDS, TEST_CONVERSATIONS, TaskItem, task_conversations
from homegpt.data.conversations import prompt_ids
from homegpt.data.tokenizer import EOT, IM_END
from homegpt.generate.engine import Engine, Sampling, Scheduler, Sequence
from homegpt.rundir.checkpoint import load_run


@torch.inference_mode()
def score(model, tok, items: list[TaskItem], max_new_tokens: int = 24, batch_size: int = 32) -> dict:
    """Greedy answers to each item's prompt (ChatML template): exact-answer accuracy (overall and per kind)
    and the share of answers that end with <|im_end|>."""
    ends = {t for t in (tok.token_to_id(EOT), tok.token_to_id(IM_END)) if t is not None}
    im_end, context = tok.token_to_id(IM_END), model.config.block_size
    rows, kept = [], []
    for item in items:
        ids = prompt_ids(tok, item.prompt)
        budget = min(max_new_tokens, context - len(ids))
        if budget < 1:
            continue  # a prompt longer than the context: not scored (counted below)
        rows.append(Sequence(ids, Sampling(), budget, on_token=lambda t: t in ends))
        kept.append(item)
    scheduler = Scheduler(Engine(model, min(batch_size, max(1, len(rows))), vocab_limit=tok.get_vocab_size()))
    scheduler.submit(rows)
    scheduler.drain()
    per_kind: dict[str, list[int]] = {k: [0, 0] for k in KINDS}
    correct = ended = 0
    answers = []
    for item, row in zip(kept, rows, strict=True):
        stopped = bool(row.tokens) and row.tokens[-1] in ends
        text = tok.decode(row.tokens[:-1] if stopped else row.tokens)
        good = text.strip() == item.answer
        correct += good
        ended += stopped and row.tokens[-1] == im_end
        per_kind[item.kind][0] += good
        per_kind[item.kind][1] += 1
        answers.append({"kind": item.kind, "answer": item.answer, "text": text, "correct": good})
    n = max(1, len(kept))
    return {"accuracy": correct / n, "ends_with_im_end": ended / n, "scored": len(kept),
            "skipped_too_long": len(items) - len(kept),
            "per_kind": {k: c / max(1, t) for k, (c, t) in per_kind.items() if t}, "answers": answers}


def score_run(run_dir, n: int = TEST_CONVERSATIONS, device: str = "cpu", step=None, seed: int = 0,
              kinds: tuple[str, ...] = KINDS) -> dict:
    """score() of a run's checkpoint on n test conversations."""
    run = load_run(run_dir, device=device, step=step)
    with run.autocast:
        return score(run.model, run.tokenizer, task_conversations("test", n, seed, kinds))
