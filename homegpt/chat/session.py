"""One chat turn on a run: the prompt that fits the context, and the answer streamed as it is generated.

`homegpt sample RUN --chat` (cli/chat.py) loops over these. The prompt is the run's chat format
(data/chatml.py: its chat_template.jinja, else the plain User:/Assistant: text); when the conversation
outgrows the context, its oldest turns are left out (a system message stays). The answer ends at an end
token (<|im_end|>, <|endoftext|>), a stop string, or the token budget.
"""

from __future__ import annotations

from homegpt.data.tokenizer import EOT
from homegpt.errors import UserError
from homegpt.generate.engine import Engine, Sampling, Scheduler, Sequence
from homegpt.generate.sample import TextStream


def fit_prompt(run, fmt, messages: list[dict], max_new: int) -> tuple[list[int], set[int], tuple[str, ...], int]:
    """(prompt ids, end token ids, stop strings, messages left out): the oldest turns (after a system message)
    are left out until the prompt leaves room for an answer (max_new tokens, at most half the context)."""
    tok, context = run.tokenizer, run.model.config.block_size
    head = messages[:1] if messages[0]["role"] == "system" else []
    body, dropped = messages[len(head):], 0
    need = min(max_new, context // 2)
    while True:
        prompt = fmt.render(head + body)
        ids = ([tok.token_to_id(EOT)] if prompt.start_marker else []) + tok.encode(prompt.text).ids
        if len(ids) + need <= context or len(body) <= 1:
            break
        body, dropped = body[2:] if len(body) > 2 else body[1:], dropped + (2 if len(body) > 2 else 1)
    if len(ids) + 1 > context:
        raise UserError(f"this message makes a prompt of {len(ids)} tokens, the model's context is {context}: "
                        f"write a shorter one")
    ends = {i for i in (tok.token_to_id(t) for t in (EOT, *prompt.end_tokens)) if i is not None}
    return ids, ends, prompt.stop, dropped


def answer(run, ids: list[int], ends: set[int], stops: tuple[str, ...], opts, seed: int, on_text
           ) -> tuple[str, str, int]:
    """(text, finish reason, new tokens) of one answer, streamed through on_text."""
    stream = TextStream(run.tokenizer, stops, ends)
    budget = min(opts.max_new_tokens, run.model.config.block_size - len(ids))

    def take(token: int) -> bool:
        ended = stream.add(token)
        if on_text is not None and (piece := stream.take()):
            on_text(piece)
        return ended

    row = Sequence(ids, Sampling(opts.temperature, opts.top_k, opts.top_p, seed, opts.repetition_penalty), budget,
                   on_token=take, penalty_skip=1)
    scheduler = Scheduler(Engine(run.model, 1, vocab_limit=run.tokenizer.get_vocab_size()))
    with run.autocast:
        scheduler.submit([row])
        scheduler.drain()
    stream.close("length")
    if on_text is not None and (rest := stream.take()):
        on_text(rest)
    finish = {"eot": "stop"}.get(stream.finish, stream.finish)
    return stream.text, finish, len(stream.tokens)
