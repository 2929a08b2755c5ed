"""Conversations for chat fine-tuning: checked, rendered in ChatML, tokenized with their loss mask, and read
from files, Hugging Face datasets or the built-in instruction task.

A conversation is TRL's conversational format: a list of {"role", "content"} messages, an optional system
message first, then user and assistant taking turns, starting with the user and ending with the assistant.
A row holds it as "messages", or as "prompt" and "completion" (two strings: one user and one assistant
turn; or two lists of messages, joined). It is rendered in ChatML, after the start marker every homegpt
document starts with:

    <|endoftext|><|im_start|>system\\n{content}<|im_end|>\\n           (if there is one)
    <|im_start|>user\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n{content}<|im_end|>\\n
    ...

and a prompt for the model's next answer ends with "<|im_start|>assistant\\n" (add_generation_prompt).
CHATML_TEMPLATE is that rendering as a Jinja chat template: `homegpt sft` writes it into the run, `homegpt
export` into the transformers folder, so `apply_chat_template(messages, add_generation_prompt=True)`
renders (and tokenizes to) exactly the ids homegpt trains on and prompts with.

The loss mask covers each assistant message's content and its <|im_end|>, nothing else: the model learns
to answer and to end its turn, never to write the user's side or the markup the prompt already holds. It
is computed from character spans: a token carries loss when it covers any character of those spans (as
transformers' return_assistant_tokens_mask decides it for {% generation %} blocks).

Bad rows are a UserError naming the file and line (or row): not JSON, no messages, an unknown role, roles
out of order, no assistant turn, an empty message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from homegpt.data.tokenizer import EOT, IM_END, IM_START
from homegpt.errors import UserError, check_text

ROLES = ("system", "user", "assistant")
MESSAGES_FIELD = "messages"
SPECIALS = (EOT, IM_START, IM_END)

# The Jinja source of the rendering above. One expression per piece, whitespace-controlled, nothing that
# transformers' sandbox or llama.cpp's template engine lacks.
CHATML_TEMPLATE = (
    "{{- '" + EOT + "' }}\n"
    "{%- for message in messages %}\n"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}\n"
    "{{- raise_exception('ChatML roles are system, user and assistant, not ' + message['role']) }}\n"
    "{%- endif %}\n"
    "{{- '" + IM_START + "' + message['role'] + '\\n' + message['content'] + '" + IM_END + "' + '\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "{{- '" + IM_START + "assistant\\n' }}\n"
    "{%- endif %}\n"
)


def marked_template() -> str:
    """CHATML_TEMPLATE with transformers' {% generation %} marks around what carries loss: the same text, and
    apply_chat_template(..., return_assistant_tokens_mask=True) then gives the mask homegpt trains with."""
    plain = "{{- '" + IM_START + "' + message['role'] + '\\n' + message['content'] + '" + IM_END + "' + '\\n' }}\n"
    marked = ("{%- if message['role'] == 'assistant' %}\n"
              "{{- '" + IM_START + "assistant\\n' }}{% generation %}{{- message['content'] + '" + IM_END +
              "' }}{% endgeneration %}{{- '\\n' }}\n"
              "{%- else %}\n" + plain + "{%- endif %}\n")
    return CHATML_TEMPLATE.replace(plain, marked)


# --------------------------------------------------------------------------------------------- rendering


def render(messages: list[dict], add_generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The ChatML text of messages and the character spans that carry loss (assistant content + <|im_end|>)."""
    parts, spans, pos = [EOT], [], len(EOT)
    for m in messages:
        head, body = f"{IM_START}{m['role']}\n", m["content"] + IM_END
        if m["role"] == "assistant":
            spans.append((pos + len(head), pos + len(head) + len(body)))
        parts += [head, body, "\n"]
        pos += len(head) + len(body) + 1
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts), spans


def loss_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> np.ndarray:
    """1 for every token (given by its character offsets) that covers a character of one of the spans."""
    if not offsets:
        return np.zeros(0, np.uint8)
    start, end = np.array(offsets, np.int64).T
    mask = np.zeros(len(offsets), bool)
    for a, b in spans:
        mask |= (end > a) & (start < b)
    return mask.astype(np.uint8)


def encode(tok, conversations: list[list[dict]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids, loss mask) of each conversation, tokenized as transformers tokenizes the rendered text."""
    rendered = [render(c) for c in conversations]
    encodings = tok.encode_batch([text for text, _ in rendered], add_special_tokens=False)
    return [(np.array(e.ids, np.int64), loss_mask(e.offsets, spans))
            for e, (_, spans) in zip(encodings, rendered, strict=True)]


def prompt_ids(tok, messages: list[dict]) -> list[int]:
    """The ids of a prompt for the assistant's next turn (the template with add_generation_prompt)."""
    return tok.encode(render(messages, add_generation_prompt=True)[0], add_special_tokens=False).ids


# --------------------------------------------------------------------------------------------- checks


def conversation(record, where: str, field: str = MESSAGES_FIELD) -> list[dict]:
    """The checked messages of one row: its `field` list, or its prompt and completion."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: a row must be a JSON object with a {field!r} list, not {type(record).__name__}")
    # A missing field and a null one are the same: datasets' builders give every row every column.
    if record.get(field) is not None:
        messages = record[field]
        if not isinstance(messages, list):
            raise UserError(f"{where}: {field!r} must be a list of {{role, content}} messages")
    elif record.get("prompt") is not None and record.get("completion") is not None:
        messages = _prompt_completion(record["prompt"], record["completion"], where)
    else:
        raise UserError(f"{where}: no {field!r} list (nor 'prompt' and 'completion'): see docs/chat.md for the format")
    return check_messages(messages, where)


def _prompt_completion(prompt, completion, where: str) -> list:
    if isinstance(prompt, str) and isinstance(completion, str):
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if isinstance(prompt, list) and isinstance(completion, list):
        return prompt + completion
    raise UserError(f"{where}: 'prompt' and 'completion' must both be strings or both lists of messages")


def check_messages(messages: list, where: str) -> list[dict]:
    """[{"role", "content"}] in ChatML's order, or a UserError saying what is wrong and where."""
    if not messages:
        raise UserError(f"{where}: the conversation is empty")
    out: list[dict] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise UserError(f"{where}: message {i} is not a {{role, content}} object")
        role, content = m["role"], m.get("content")
        if role not in ROLES:
            raise UserError(f"{where}: message {i} has role {role!r}: use system, user or assistant")
        if not isinstance(content, str):
            raise UserError(f"{where}: message {i} ({role}) has no text content")
        check_text(content, f"{where}: message {i} ({role})")
        if not content.strip():
            if role == "system":
                continue  # an empty system prompt says nothing: left out
            raise UserError(f"{where}: message {i} ({role}) is empty")
        expected = "user" if not out or out[-1]["role"] in ("system", "assistant") else "assistant"
        if role != expected and not (role == "system" and i == 0):
            after = f"after {out[-1]['role']!r}" if out else "first"
            raise UserError(f"{where}: roles out of order: message {i} is {role!r} {after} (a system message "
                            f"first, then user and assistant taking turns, starting with the user)")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise UserError(f"{where}: no assistant turn: there is nothing to learn from it")
    if out[-1]["role"] != "assistant":
        raise UserError(f"{where}: roles out of order: it ends with a user turn that has no answer")
    return out


def has_special_text(messages: list[dict]) -> bool:
    """Whether a message's text holds a special token's string (it would be read as the token itself)."""
    return any(s in m["content"] for m in messages for s in SPECIALS)


# --------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Row:
    where: str  # "path:line", "path row N", "hf:NAME row N": what an error names
    record: object


def iter_conversations(source: str) -> Iterator[tuple[str, list[dict]]]:
    """(where, checked messages) of every conversation of a source: file:PATH (.jsonl, .json, .parquet, each
    optionally .gz / .zst), hf:NAME, or builtin (the synthetic instruction task's training conversations)."""
    from homegpt.data.sources import as_source

    src = as_source(source)
    field = src.options.get("column") or MESSAGES_FIELD
    for row in iter_rows(source):
        yield row.where, conversation(row.record, row.where, field)


def iter_rows(source: str) -> Iterator[Row]:
    from homegpt.data.formats import expand
    from homegpt.data.sources import as_source

    src = as_source(source)
    if src.kind == "builtin":
        from homegpt.data.builtin_chat import task_conversations

        for i, item in enumerate(task_conversations("train")):
            yield Row(f"builtin task conversation {i}", {"messages": item.messages})
    elif src.kind == "file":
        for path in expand(src.target):
            yield from file_rows(path)
    else:
        from homegpt.data.formats import hf_rows, open_hf

        o, where = src.options, f"hf:{src.target}"
        ds = open_hf(src.target, o.get("config"), o.get("split"), o.get("revision"), o.get("data_files"))
        for n, row in enumerate(hf_rows(ds, where), 1):
            yield Row(f"{where} row {n}", row)


def file_rows(path: Path) -> Iterator[Row]:
    from homegpt.data.formats import kind_of

    fmt = kind_of(path)[0]
    if fmt == "parquet":
        yield from _parquet_rows(path)
    elif fmt in ("jsonl", "json"):
        yield from _json_rows(path)
    else:
        raise UserError(f"{path}: conversations are read from .jsonl, .json or .parquet files, not .{fmt}")


def _json_rows(path: Path) -> Iterator[Row]:
    from homegpt.data.formats import jsonl_records, open_binary, read_stream, text_lines

    stream, raw = open_binary(path)
    with stream, raw:
        head = read_stream(stream, path, 4096).lstrip()
    if head.startswith(b"["):  # one JSON array of rows
        try:
            rows = json.loads("".join(line for _, line in text_lines(path, None)))
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON (line {e.lineno}): {e.msg}") from None
        for i, record in enumerate(rows):
            yield Row(f"{path} element {i}", record)
        return
    for lineno, record in jsonl_records(path, problem="is not JSON (JSON Lines needs one object per line)"):
        yield Row(f"{path}:{lineno}", record)


def _parquet_rows(path: Path) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading .parquet needs pyarrow: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
        n = 0
        for batch in pf.iter_batches(batch_size=256):
            for record in batch.to_pylist():
                n += 1
                yield Row(f"{path} row {n}", record)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"{path} is not a readable parquet file: {str(e).splitlines()[0]}") from None
