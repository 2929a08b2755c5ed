"""The OpenAPI schema `homegpt serve` publishes at /openapi.json: the contract its tests fuzz it against.

FastAPI writes most of it from the request models (openai_api.py: every field with its type and range).
This module adds what FastAPI cannot see: the errors each route answers and their body (OpenAI's
{"error": {...}}, never FastAPI's 422 shape, which this server does not send), the server-sent events a
streamed request gets instead of JSON, and the bearer key the /v1 routes need when --api-key is set.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from homegpt import __version__
from homegpt.serve.openai_api import ErrorBody

ERRORS = {
    400: "a field is invalid, or the prompt and max_tokens do not fit the model's context",
    401: "--api-key is set and the request does not bear it",
    404: "no such model (this server serves one)",
    503: "more rows wait than --max-queue, or the engine process is down",
}
STREAM = {"text/event-stream": {"schema": {"type": "string"},
                                "example": 'data: {"object": "text_completion", ...}\n\ndata: [DONE]\n\n'}}


def responses(*codes: int, streams: bool = False) -> dict:
    """FastAPI's `responses` for a route that may answer these error codes (and stream with stream = true)."""
    out: dict = {code: {"model": ErrorBody, "description": ERRORS[code]} for code in codes}
    if streams:
        out[200] = {"description": "JSON, or server-sent events with stream = true", "content": STREAM}
    return out


def publish(app: FastAPI, api_key: str | None) -> None:
    """Serve the schema at /openapi.json, as this module describes it."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title="homegpt", version=__version__, routes=app.routes,
                                 description="An OpenAI-compatible API for one homegpt model (docs/serving.md).")
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)  # validation errors are OpenAI's 400
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            if api_key is not None:
                schema.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer", "description": "the --api-key"}}
                for route, path in schema.get("paths", {}).items():
                    if route.startswith("/v1/"):
                        for operation in path.values():
                            operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
