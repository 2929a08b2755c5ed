"""`homegpt serve`: an OpenAI-compatible HTTP API and a web playground over the generation engine.

    GET  /                     the playground (static/playground.html: one self-contained page)
    GET  /health               {"status": "ok", running / waiting rows, counters}
    GET  /v1/models            the one model served, with its context length
    POST /v1/completions       prompt (a string or a list) -> text, streamed as server-sent events or not
    POST /v1/chat/completions  messages, rendered by data/chatml.py (the model's template or a plain one) -> text

FastAPI on uvicorn. Every request becomes rows (prompt x n) for worker.py's Worker, whose engine process
(engine_loop.py) runs the continuous-batching engine; this module only validates, encodes, and turns the
rows' events into OpenAI's JSON (openai_api.py has the request and response shapes, loading.py loads what
is served). create_app registers each group of routes with its own function below. Errors are OpenAI's
{"error": {"message", "type", "param", "code"}}: 400 for invalid fields and for a prompt + max_tokens over
the context, 401 for a missing or wrong API key (with --api-key), 404 for an unknown model or route, 503
when more rows wait than --max-queue; a failure inside one request is a 500 for that request and the
server goes on. A completion prompt starts after <|endoftext|>, exactly as `homegpt sample`'s does, and
rows sample with the same engine and seeds (seed, seed + 1, ... for n choices), so the same seed and
settings give `homegpt sample`'s text.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from homegpt.errors import UserError
from homegpt.generate.engine import Sampling
from homegpt.serve.engine_loop import Event, RowSpec
from homegpt.serve.loading import Served
from homegpt.serve.openai_api import (
    APIError,
    ChatRequest,
    CompletionRequest,
    chat_choice,
    chat_delta,
    completion_choice,
    error_param,
    first_error,
    new_id,
    now,
    usage,
)
from homegpt.serve.schema import publish, responses
from homegpt.serve.worker import Generation, Overloaded, Worker

DISCONNECT_POLL_S = 0.5


def playground_html() -> str:
    return (resources.files("homegpt.serve") / "static" / "playground.html").read_text(encoding="utf-8")


def create_app(served: Served, max_batch: int = 16, max_queue: int = 64, api_key: str | None = None,
               cors: tuple[str, ...] = (), threads: int | None = None) -> FastAPI:
    worker = Worker(served.model, served.tokenizer, served.autocast, max_batch, max_queue, threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await worker.start()
        yield
        worker.stop()

    app = FastAPI(title="homegpt", lifespan=lifespan, docs_url=None, redoc_url=None)  # /openapi.json: schema.py
    app.state.worker = worker
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    _add_error_handlers(app)
    auth = [Depends(_authorization(api_key))]
    _add_pages(app, served, worker)
    _add_models(app, served, auth)
    _add_completions(app, served, worker, auth)
    _add_chat_completions(app, served, worker, auth)
    publish(app, api_key)
    return app


def _authorization(api_key: str | None) -> Callable[[Request], Awaitable[None]]:
    """The dependency of every /v1 route: with an API key, a 401 unless the request bears it."""

    async def authorized(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "Missing API key: send it as the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key")

    return authorized


# --------------------------------------------------------------------------------------------- routes


def _add_pages(app: FastAPI, served: Served, worker: Worker) -> None:
    """GET / and GET /health: no API key needed."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(playground_html())

    @app.get("/health")
    async def health() -> dict:
        return {"status": worker.status(), "model": served.name, **worker.snapshot()}


def _add_models(app: FastAPI, served: Served, auth: list) -> None:
    created = now()

    def model_card() -> dict:
        return {"id": served.name, "object": "model", "created": created, "owned_by": "homegpt",
                "context_length": served.context, "max_model_len": served.context,
                "chat_template": served.chat.kind}

    @app.get("/v1/models", dependencies=auth, responses=responses(401))
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=auth, responses=responses(401, 404))
    async def model(model_id: str) -> dict:
        _check_model(served, model_id)
        return model_card()


def _add_completions(app: FastAPI, served: Served, worker: Worker, auth: list) -> None:
    @app.post("/v1/completions", dependencies=auth, responses=responses(400, 401, 404, 503, streams=True))
    async def completions(body: CompletionRequest, request: Request):
        _check_model(served, body.model)
        seed = _seed(body.seed)
        rows, prompt_tokens, echo = [], 0, {}
        for i, text in enumerate(body.prompts()):
            ids = [served.eot] + served.tokenizer.encode(text).ids
            budget = _budget(served, len(ids), body.max_tokens, "max_tokens")
            prompt_tokens += len(ids)
            for j in range(body.n):
                k = i * body.n + j
                rows.append(RowSpec(k, ids, _sampling(body, seed + j), budget, body.stops(),
                                    _ends(served, body.ignore_eos), penalty_skip=1))
                echo[k] = text if body.echo else ""
        gen = _submit(worker, rows)
        reply = _Reply(new_id("cmpl"), served.name, prompt_tokens, body.include_usage())
        if body.stream:
            first = [reply.chunk("text_completion", [completion_choice(k, t, None)]) for k, t in echo.items() if t]
            return _sse(gen, request, first, lambda k, t, f: reply.chunk(
                "text_completion", [completion_choice(k, t, f)]), reply)
        done = await _collect(gen, request, reply, len(rows))
        choices = [completion_choice(k, echo[k] + text, finish) for k, (text, finish) in sorted(done.items())]
        return reply.whole("text_completion", choices)


def _add_chat_completions(app: FastAPI, served: Served, worker: Worker, auth: list) -> None:
    @app.post("/v1/chat/completions", dependencies=auth, responses=responses(400, 401, 404, 503, streams=True))
    async def chat_completions(body: ChatRequest, request: Request):
        _check_model(served, body.model)
        try:
            prompt = served.chat.render([m.model_dump() for m in body.messages])
        except UserError as e:
            raise APIError(400, str(e), param="messages") from None
        ids = served.tokenizer.encode(prompt.text).ids
        ids = [served.eot] + ids if prompt.start_marker else ids
        if not ids:
            raise APIError(400, "the rendered chat prompt is empty", param="messages")
        budget = _budget(served, len(ids), body.budget(), "max_tokens")
        ends = _ends(served, body.ignore_eos, prompt.end_tokens)
        seed = _seed(body.seed)
        rows = [RowSpec(j, ids, _sampling(body, seed + j), budget, body.stops() + prompt.stop, ends,
                        penalty_skip=int(prompt.start_marker)) for j in range(body.n)]
        gen = _submit(worker, rows)
        reply = _Reply(new_id("chatcmpl"), served.name, len(ids), body.include_usage())
        kind = "chat.completion.chunk"
        if body.stream:
            first = [reply.chunk(kind, [chat_delta(j, {"role": "assistant", "content": ""}, None)])
                     for j in range(body.n)]
            return _sse(gen, request, first, lambda k, t, f: reply.chunk(
                kind, [chat_delta(k, {"content": t} if t or not f else {}, f)]), reply)
        done = await _collect(gen, request, reply, len(rows))
        choices = [chat_choice(k, text, finish) for k, (text, finish) in sorted(done.items())]
        return reply.whole("chat.completion", choices)


# --------------------------------------------------------------------------------------------- requests


def _check_model(served: Served, name: str) -> None:
    if name != served.name:
        raise APIError(404, f"The model '{name}' does not exist: this server serves '{served.name}'",
                       param="model", code="model_not_found")


def _seed(seed: int | None) -> int:
    return secrets.randbelow(2**31) if seed is None else seed


def _sampling(body, seed: int) -> Sampling:
    top_k = body.top_k if body.top_k and body.top_k > 0 else None
    top_p = body.top_p if body.top_p < 1.0 else None
    return Sampling(body.temperature, top_k, top_p, seed, body.repetition_penalty)


def _ends(served: Served, ignore_eos: bool, extra: tuple[str, ...] = ()) -> frozenset[int]:
    if ignore_eos:
        return frozenset()
    ids = {served.eot} | {served.tokenizer.token_to_id(t) for t in extra}
    return frozenset(i for i in ids if i is not None)


def _budget(served: Served, prompt_tokens: int, max_tokens: int | None, param: str) -> int:
    """max_tokens, or the rest of the context; a 400 naming both counts when they don't fit."""
    ctx = served.context
    wanted = max_tokens if max_tokens is not None else ctx - prompt_tokens
    if wanted < 1 or prompt_tokens + wanted > ctx:
        raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                       f"{prompt_tokens + max(wanted, 1)} tokens ({prompt_tokens} in the prompt, {max(wanted, 1)} "
                       f"for the completion). Please reduce the length of the prompt or {param}.",
                       param=param, code="context_length_exceeded")
    return wanted


def _submit(worker: Worker, rows: list[RowSpec]) -> Generation:
    try:
        return worker.submit(rows)
    except Overloaded as e:
        raise APIError(503, f"The server is overloaded: {e}", type="server_error", code="overloaded") from None
    except UserError as e:
        raise APIError(400, str(e)) from None


# --------------------------------------------------------------------------------------------- replies


class _Reply:
    """The shape every response and chunk of one request shares: id, created, model, usage."""

    def __init__(self, rid: str, model: str, prompt_tokens: int, include_usage: bool) -> None:
        self.id, self.model, self.created = rid, model, now()
        self.prompt_tokens, self.include_usage = prompt_tokens, include_usage
        self.tokens: dict[int, int] = {}

    @property
    def completion_tokens(self) -> int:
        return sum(self.tokens.values())

    def chunk(self, obj: str, choices: list[dict]) -> dict:
        out = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}
        if self.include_usage:
            out["usage"] = None
        return out

    def whole(self, obj: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                "usage": usage(self.prompt_tokens, self.completion_tokens)}

    def usage_chunk(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [],
                "usage": usage(self.prompt_tokens, self.completion_tokens)}


async def _next_events(gen: Generation, request: Request) -> list[Event] | None:
    """The request's next events, or None once its client has gone away."""
    while True:
        try:
            async with asyncio.timeout(DISCONNECT_POLL_S):
                return await gen.events()
        except TimeoutError:
            if await request.is_disconnected():
                return None


async def _collect(gen: Generation, request: Request, reply: _Reply, n: int) -> dict[int, tuple[str, str]]:
    """Every choice's whole text and finish reason (non-streamed requests)."""
    texts: dict[int, list[str]] = {}
    done: dict[int, tuple[str, str]] = {}
    try:
        while len(done) < n:
            events = await _next_events(gen, request)
            if events is None:
                return done
            for e in events:
                texts.setdefault(e.index, []).append(e.text)
                if e.finish == "error":
                    raise APIError(500, "generation failed inside the server (its log has the traceback)",
                                   type="server_error")
                reply.tokens[e.index] = e.tokens
                if e.finish:
                    done[e.index] = ("".join(texts[e.index]), e.finish)
    finally:
        gen.cancel()
    return done


def _sse(gen: Generation, request: Request, first: list[dict], chunk: Callable[[int, str, str | None], dict],
         reply: _Reply) -> StreamingResponse:
    kind = "chat.completion.chunk" if reply.id.startswith("chatcmpl") else "text_completion"

    async def body() -> AsyncIterator[str]:
        try:
            for c in first:
                yield _data(c)
            while gen.open:
                events = await _next_events(gen, request)
                if events is None:
                    return
                for index, (text, finish, tokens) in _merge(events).items():
                    reply.tokens[index] = tokens
                    if finish == "error":
                        yield _data(APIError(500, "generation failed inside the server", "server_error").body())
                        return
                    yield _data(chunk(index, text, finish))
            if reply.include_usage:
                yield _data(reply.usage_chunk(kind))
            yield "data: [DONE]\n\n"
        finally:
            gen.cancel()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _merge(events: list[Event]) -> dict[int, tuple[str, str | None, int]]:
    """Consecutive events of a choice as one (text, finish, tokens): fewer, larger chunks when the client lags."""
    out: dict[int, tuple[str, str | None, int]] = {}
    for e in events:
        text = out[e.index][0] + e.text if e.index in out else e.text
        out[e.index] = (text, e.finish, e.tokens)
    return out


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# --------------------------------------------------------------------------------------------- errors


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = first_error(exc.errors())
        param = error_param(tuple(first.get("loc", ())))
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        elif param and not message.startswith(param.split(".")[0]):
            message = f"{param}: {message}"
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = str(exc.detail)
        return JSONResponse(APIError(exc.status_code, message).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(APIError(500, f"internal error ({type(exc).__name__}): the server's log has the "
                                     f"traceback", "server_error").body(), status_code=500)
