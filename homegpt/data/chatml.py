"""Chat messages into one prompt: the model's own chat template when it has one, else a plain-text one.

A model folder (a run or a `homegpt export`) has a chat template when it holds `chat_template.jinja`, or a
`tokenizer_config.json` with a "chat_template" (a string, or a list of named templates: "default" is used).
It is rendered as transformers' `apply_chat_template` renders it: Jinja2 in a sandbox, trim_blocks and
lstrip_blocks, the loop-control extension, `raise_exception`, `strftime_now` and transformers' `tojson`;
`messages`, `add_generation_prompt=True` and the tokenizer's special tokens (`bos_token`, `eos_token`, ...)
as variables. The rendered text is the whole prompt (a template that wants a start token writes
`{{ bos_token }}`), and the answer ends at the template's `eos_token` as well as at <|endoftext|>; and at
<|im_end|> when the template is ChatML (it writes "<|im_end|>"), as llama.cpp also ends ChatML turns: that
is how a chat run (`homegpt sft` writes conversations.CHATML_TEMPLATE into it), which has no
tokenizer_config.json to name an eos_token, ends its answers.

A base model has no template (a pretraining run). Then the prompt is plain text, after the start marker as
every completion prompt is:

    {system message}\\n\\n          (if there is one; several are joined by blank lines)
    User: {content}\\n             (one line per user message)
    Assistant: {content}\\n        (one per earlier assistant message)
    Assistant:                    (the model writes from here)

and the answer also ends where the model starts the user's next turn ("\\nUser:"). Everything about chat
formatting lives here: one `ChatFormat` per model, `render(messages)` giving a `ChatPrompt`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from homegpt.data.tokenizer import IM_END
from homegpt.errors import UserError, check_text

TEMPLATE_FILE = "chat_template.jinja"  # a model folder's chat template (written by sft and export)
ROLES = ("system", "developer", "user", "assistant")
PLAIN_NAMES = {"user": "User", "assistant": "Assistant"}
PLAIN_STOP = "\nUser:"


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    start_marker: bool  # put <|endoftext|> before it, as before every completion prompt
    stop: tuple[str, ...] = ()  # strings that end the answer (cut before them)
    end_tokens: tuple[str, ...] = ()  # special tokens that end the answer, besides <|endoftext|>


@dataclass(frozen=True)
class ChatFormat:
    template: str | None = None  # Jinja source; None = the plain-text template
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, ... as strings

    @property
    def kind(self) -> str:
        return "template" if self.template else "plain"

    def render(self, messages: list[dict]) -> ChatPrompt:
        msgs = [_message(m, i) for i, m in enumerate(messages)]
        if not msgs:
            raise UserError("messages must hold at least one message")
        if self.template is None:
            return ChatPrompt(plain_text(msgs), True, (PLAIN_STOP,))
        text = render_template(self.template, msgs, self.special_tokens)
        return ChatPrompt(text, False, (), self.end_tokens)

    @property
    def end_tokens(self) -> tuple[str, ...]:
        """Special tokens that end an answer besides <|endoftext|>: the eos_token, ChatML's <|im_end|>."""
        ends = [self.special_tokens.get("eos_token")]
        if self.template and IM_END in self.template:
            ends.append(IM_END)
        return tuple(dict.fromkeys(e for e in ends if e))


def _message(m: dict, i: int) -> dict:
    """{"role", "content"} with the content as text (OpenAI's list of text parts is joined)."""
    role, content = m.get("role"), m.get("content")
    if role not in ROLES:
        raise UserError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
    if content is None:
        content = ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise UserError(f"messages[{i}].content: only text parts are supported ({{'type': 'text', "
                                f"'text': ...}})")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise UserError(f"messages[{i}].content must be a string or a list of text parts")
    check_text(content, f"messages[{i}].content")
    return {"role": "system" if role == "developer" else role, "content": content}


def plain_text(messages: list[dict]) -> str:
    system = [m["content"] for m in messages if m["role"] == "system"]
    lines = [f"{PLAIN_NAMES[m['role']]}: {m['content']}\n" for m in messages if m["role"] != "system"]
    head = "\n\n".join(system) + "\n\n" if system else ""
    return head + "".join(lines) + "Assistant:"


def render_template(template: str, messages: list[dict], special_tokens: dict[str, str]) -> str:
    """transformers' chat-template rendering (its _compile_jinja_template and apply_chat_template)."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):  # transformers' {% generation %} marks assistant text: rendered as is
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=True, tools=None,
                                                documents=None, **special_tokens)
    except jinja2.exceptions.TemplateError as e:
        raise UserError(f"the model's chat template refused these messages: {e}") from None


def load_chat_format(folder: Path) -> ChatFormat:
    """The chat format of a model folder: its template (chat_template.jinja or tokenizer_config.json), or plain."""
    config = _read_json(folder / "tokenizer_config.json")
    special = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    special = {k: v for k, v in special.items() if v}
    jinja = folder / TEMPLATE_FILE
    if jinja.is_file():
        return ChatFormat(jinja.read_text(encoding="utf-8"), special)
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str) and template.strip():
        return ChatFormat(template, special)
    return ChatFormat(None, special)


def _token_text(token) -> str | None:
    if isinstance(token, dict):  # an AddedToken written out: {"content": ..., ...}
        token = token.get("content")
    return token if isinstance(token, str) else None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
