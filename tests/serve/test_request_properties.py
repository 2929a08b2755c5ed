"""Properties of what the server and `homegpt sft` read: any JSON value in any field is either a valid request
(whose every string a tokenizer can encode) or a refusal whose message is text a response can carry. Never
another exception, which the server would answer with a 500.

The fields are the requests' own (completions, chat) and the rows' (sft data); the values are any JSON,
strings included that JSON can spell but UTF-8 cannot ("\\ud800").
"""

from __future__ import annotations

import json

import pydantic
from hypothesis import given, settings
from hypothesis import strategies as st

from homegpt.data.chatml import ChatFormat
from homegpt.data.conversations import conversation
from homegpt.errors import UserError, check_text
from homegpt.serve.openai_api import ChatRequest, CompletionRequest, error_param, first_error

# Text that JSON can hold: any code point, lone surrogates included (hypothesis leaves them out by default).
TEXT = st.text(st.one_of(st.characters(), st.characters(codec=None, categories=["Cs"])), max_size=12)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=8)
COMMON = ["model", "temperature", "top_p", "top_k", "stop", "n", "seed", "stream", "stream_options",
          "repetition_penalty", "ignore_eos", "frequency_penalty", "presence_penalty", "logit_bias", "user"]
COMPLETION = COMMON + ["prompt", "max_tokens", "echo", "logprobs", "best_of", "suffix"]
CHAT = COMMON + ["messages", "max_tokens", "max_completion_tokens", "logprobs", "top_logprobs", "tools",
                 "response_format"]
MESSAGE = st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "assistant", "system"]) | JSON,
                                              "content": JSON | TEXT, "name": JSON})


def bodies(fields: list[str], good: dict) -> st.SearchStrategy[dict]:
    """A valid body with some of its fields replaced, dropped or added, each by any JSON value."""
    return st.fixed_dictionaries({k: st.just(v) | JSON for k, v in good.items()},
                                 optional={k: JSON for k in fields if k not in good})


def answerable(message: str) -> None:
    """An error message must go out as JSON text: UTF-8, no lone surrogates."""
    json.dumps({"error": {"message": message}}, ensure_ascii=False).encode("utf-8")


def refusal(e: pydantic.ValidationError) -> None:
    """What the server's handler makes of a validation error: one field, one message."""
    first = first_error(e.errors())
    error_param(tuple(first.get("loc", ())))
    answerable(str(first.get("msg", "")))


@settings(max_examples=300, deadline=None)
@given(bodies(COMPLETION, {"model": "run", "prompt": "The"}))
def test_any_completion_body_is_valid_or_a_clear_400(body):
    try:
        request = CompletionRequest.model_validate(body)
    except pydantic.ValidationError as e:
        return refusal(e)
    for text in [request.model, *request.prompts(), *request.stops()]:
        check_text(text, "a string of a valid request")  # no UserError: the tokenizer can encode it


@settings(max_examples=300, deadline=None)
@given(bodies(CHAT, {"model": "run", "messages": [{"role": "user", "content": "hi"}]}),
       st.lists(MESSAGE, max_size=3))
def test_any_chat_body_is_valid_or_a_clear_400(body, messages):
    if messages:
        body = dict(body, messages=messages)
    try:
        request = ChatRequest.model_validate(body)
    except pydantic.ValidationError as e:
        return refusal(e)
    try:
        prompt = ChatFormat().render([m.model_dump() for m in request.messages])
    except UserError as e:  # what app.py answers with a 400
        return answerable(str(e))
    check_text(prompt.text, "a rendered prompt")


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, st.fixed_dictionaries({}, optional={"messages": st.lists(MESSAGE, max_size=3) | JSON,
                                                           "prompt": JSON | TEXT, "completion": JSON | TEXT})))
def test_any_sft_row_is_a_conversation_or_one_line(record):
    try:
        messages = conversation(record, "chat.jsonl:1")
    except UserError as e:
        answerable(str(e))
        assert "\n" not in str(e)
        return
    for m in messages:
        check_text(m["content"], "a message of a valid row")
