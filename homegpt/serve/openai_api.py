"""OpenAI's request and response shapes, as `homegpt serve` speaks them (docs/serving.md lists every field).

Requests are pydantic models: a field of the wrong type or out of range is a 400 with OpenAI's error JSON,
naming the field. Fields homegpt does not implement are accepted at their neutral value only (logprobs off,
no penalties, no logit bias, best_of = n, no suffix, no tools) and refused otherwise; unknown fields are
ignored, as clients send many. Extras beyond OpenAI's fields, as vLLM names them: top_k, repetition_penalty,
ignore_eos.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from homegpt.errors import UserError, check_text

MAX_N = 16
MAX_STOPS = 4
MAX_SEED = 2**63 - 1 - MAX_N  # seed + choice must stay a 64-bit seed


def _whole(value):
    """JSON has one kind of number: 16.0 is the integer 16, as JSON Schema's "integer" says (True is no number)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def whole(**limits) -> Any:
    """An integer field, its limits in the schema (they must come before the validator for pydantic to say so)."""
    return Annotated[StrictInt, Field(**limits), BeforeValidator(_whole)]


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = whole(ge=-1)
Tokens = whole(ge=1)


def schema_says(**constraints) -> Any:
    """A constraint the published schema states while the validators below check it, with a message that says
    what to do instead of pydantic's."""
    return Field(json_schema_extra=constraints)


Zero = Annotated[float, schema_says(minimum=0, maximum=0)]  # not implemented: accepted at its neutral value only


def _utf8(value: str) -> str:
    """JSON can spell half a surrogate pair ("\\ud800"), which no tokenizer encodes: a 400 naming the field."""
    try:
        return check_text(value, "this string")
    except UserError as e:
        raise ValueError(str(e)) from None


Text = Annotated[StrictStr, AfterValidator(_utf8)]  # every string the server reads or echoes
Stop = Annotated[Text, schema_says(minLength=1)]


class APIError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """The body of every error the server answers: OpenAI's shape (the published schema names it)."""

    error: ErrorDetail


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _Common(BaseModel):
    """Sampling, stopping and streaming: the fields both endpoints share."""

    model_config = ConfigDict(extra="ignore")

    model: Text
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: TopK | None = None  # extra: keep the K likeliest tokens; 0 or -1 = off
    stop: Stop | Annotated[list[Stop], schema_says(maxItems=MAX_STOPS)] | None = None
    n: whole(ge=1, le=MAX_N) = 1
    seed: whole(ge=-(2**63), le=MAX_SEED) | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] = 1.0  # extra (CTRL's penalty; 1 = off)
    ignore_eos: StrictBool = False  # extra: go on past <|endoftext|> (benchmarks)
    frequency_penalty: Zero = 0.0  # not implemented (repetition_penalty is)
    presence_penalty: Zero = 0.0
    logit_bias: Annotated[dict[str, float], schema_says(maxProperties=0)] | None = None  # not implemented
    user: Text | None = None

    @model_validator(mode="after")
    def _check_common(self):
        stops = self.stops()
        if len(stops) > MAX_STOPS:
            raise ValueError(f"stop: at most {MAX_STOPS} strings, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop: a stop string must not be empty")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise ValueError(f"{name} is not supported: leave it at 0 (repetition_penalty is)")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed with stream = true")
        return self

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Common):
    prompt: Text | Annotated[list[Text], schema_says(minItems=1)]
    max_tokens: Tokens | None = 16  # OpenAI's default; null = the rest of the context
    echo: StrictBool = False
    logprobs: Literal[None] = None  # not implemented
    best_of: whole() | None = None
    suffix: Literal[None] = None

    @model_validator(mode="after")
    def _check(self):
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: give a string or a non-empty list of strings")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of: only best_of = n is supported")
        return self

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(BaseModel):
    """One part of a message's content: text is the only kind a language model of text reads."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None


class ChatRequest(_Common):
    messages: Annotated[list[ChatMessage], schema_says(minItems=1)]
    max_tokens: Tokens | None = None  # default: the rest of the context
    max_completion_tokens: Tokens | None = None  # OpenAI's newer name for max_tokens
    logprobs: Literal[None, False] = None
    top_logprobs: Literal[None] = None
    tools: Annotated[list, schema_says(maxItems=0)] | None = None  # not implemented: none only
    response_format: Annotated[dict[str, Any], schema_says(properties={"type": {"const": "text"}})] | None = None

    @model_validator(mode="after")
    def _check(self):
        if not self.messages:
            raise ValueError("messages: give at least one message")
        if self.tools:
            raise ValueError("tools are not supported")
        if self.response_format and self.response_format.get("type") not in ("text", None):
            raise ValueError("response_format: only text is supported")
        return self

    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# --------------------------------------------------------------------------------------------- responses


FINISH = {"eot": "stop", "stop": "stop", "length": "length"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_choice(index: int, text: str, finish: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": FINISH.get(finish) if finish else None}


def chat_choice(index: int, text: str, finish: str | None) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": FINISH.get(finish) if finish else None}


def chat_delta(index: int, delta: dict, finish: str | None) -> dict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": FINISH.get(finish) if finish else None}


def error_param(loc: tuple) -> str | None:
    """The request field a pydantic error location names ('body', 'messages', 0, 'role' -> 'messages.0.role'),
    without the members of a union pydantic tried ('prompt', 'list[str]', 1 -> 'prompt.1')."""
    parts = [str(p) for p in loc if p != "body" and not _union_member(p)]
    return ".".join(parts) or None


def _union_member(part) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "list", "dict"))


def first_error(errors: list[dict]) -> dict:
    """The error to report: one of the value checks (which say what is wrong) before "Input should be ..."
    errors, which a union also raises for the members the value was never meant to be."""
    return next((e for e in errors if e.get("type") == "value_error"), errors[0] if errors else {})
