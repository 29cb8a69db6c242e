"""The HTTP layer: OpenAI's chat-completions API on FastAPI (SSE streaming), /health, /metrics, the chat page.

Only translation lives here (JSON <-> serve/service.py); errors leave in OpenAI's shape, never as a traceback.

Longer than 300 lines because the streamed answer (`_events`) follows every path a plain answer takes (server-side
actions, parallel tool calls' results, errors as events) in OpenAI's chunk format.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from .admission import AdmittedStream
from .bodylimit import BodyLimit
from .catchall import CatchAll
from .guard import Guard
from .metrics import Metrics
from .protocol import ChatRequest, error_body, error_response as _error, new_id, now, shown
from .reading import chat_request as _chat_request, code as error_code, message as error_message, \
    param as _param
from .service import RequestError, Service, generation_failed
from .site import LOOPBACK_NAMES, PAGE_HEADERS, SiteGuard

STATIC = files("tasktune.serve") / "static"
log = logging.getLogger("tasktune.serve")


def create_app(service: Service, *, api_key: str | None = None, cors_origins: tuple[str, ...] = (),
               hosts: frozenset[str] | None = frozenset(LOOPBACK_NAMES)) -> FastAPI:  # hosts None: any Host
    # redirect_slashes off: Starlette answered `/v1/chat/completions/` with a 307 to a URL built from the Host
    # header; OpenAI answers an unknown URL with a 404 (the catch-all's, serve/catchall.py)
    app = FastAPI(title="tasktune serve", version="1", docs_url=None, redoc_url=None, redirect_slashes=False)
    metrics = Metrics(service)
    app.state.service, app.state.metrics, app.state.draining = service, metrics, False
    limits = service.limits
    counted = lambda status: metrics.requests.labels(str(status)).inc()  # noqa: E731

    def crashed_response(exc: Exception):
        counted(500)
        return _error(500, f"internal error: {type(exc).__name__}", "server_error")

    app.add_middleware(CatchAll, response=crashed_response)  # innermost: its 500s pass the CORS layer below
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes, counted=counted, timeout=limits.read_timeout,
                       draining=lambda: app.state.draining)  # inside the guard: the key is checked first
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes,
                       draining=lambda: app.state.draining, counted=counted)
    if cors_origins:  # outermost: a browser's preflight (OPTIONS, no Authorization header) is answered here
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"], max_age=600)
    # outermost: Host (DNS rebinding) and Origin (cross-site requests) before anything else, preflights included
    app.add_middleware(SiteGuard, hosts=hosts, cors_origins=cors_origins, counted=counted)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = _param(first)
        message = error_message(first)
        if first.get("type") == "json_invalid":
            message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', message)}"
        counted(400)
        named = where and not message.startswith(where)  # "messages[3].content ..." names its place itself
        return _error(400, f"{where}: {message}" if named else message, code=error_code(first), param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        counted(exc.status_code)
        message = str(exc.detail)
        if exc.status_code in (404, 405):  # OpenAI: "Invalid URL (POST /v1/completions)"; 405 keeps its Allow
            message = f"Invalid URL ({request.method} {request.url.path})"
            if exc.status_code == 405 and (exc.headers or {}).get("Allow"):
                message += f": this path takes {exc.headers['Allow']}"
        return _error(exc.status_code, message, "invalid_request_error" if exc.status_code < 500
                      else "server_error", headers=exc.headers)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        metrics.requests.labels(str(exc.status)).inc()
        return _error(exc.status, str(exc), exc.type, exc.code, exc.param, exc.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):  # what CatchAll cannot see (the middleware itself)
        return crashed_response(exc)

    @app.api_route("/health", methods=["GET", "HEAD"])  # HEAD: load balancers' and curl -I's probes
    async def health():
        alive = service.engine.alive
        body = {"status": "ok" if alive and not app.state.draining else "unavailable",
                "models": service.model_names(), "queue": service.engine.stats.waiting,
                "running": service.engine.stats.running}
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.api_route("/metrics", methods=["GET", "HEAD"])
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.api_route("/v1/models", methods=["GET", "HEAD"])
    async def models():
        created = now()
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "tasktune"} for name in service.model_names()]}

    # {name:path}: a hub id has a slash (`Qwen/Qwen2.5-0.5B`), the base model's default name
    @app.api_route("/v1/models/{name:path}", methods=["GET", "HEAD"])
    async def model(name: str):
        if name not in service.model_names():
            raise RequestError(f"The model `{shown(name)}` does not exist", status=404, code="model_not_found")
        return {"id": name, "object": "model", "created": now(), "owned_by": "tasktune"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await _chat_request(request)
        admission = service.admit()  # 429 when the batch is full and --max-queue requests already wait
        try:
            if body.stream:
                turn = service.plan(body)
                # encodes the prompt: one over the limits or the context window is a 400, not an event
                params = service.sampling(body, turn)
                counted = lambda status: metrics.requests.labels(status).inc()  # noqa: E731 (when it ends)
                stream = AdmittedStream(_sse(service, body, turn, params, counted), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
                stream.admission, admission = admission, None  # the response releases it once it has run
                return stream
            answer = await _unless_client_leaves(request, service.answer(body))
        finally:
            if admission is not None:
                admission.release()
        metrics.requests.labels("200").inc()
        message: dict[str, Any] = {"role": "assistant", "content": answer.text}
        if answer.tool_calls:
            message["tool_calls"] = answer.tool_calls
        if answer.executed:
            message["executed_tool_calls"] = answer.executed
        return {"id": new_id(), "object": "chat.completion", "created": now(), "model": answer.model or body.model,
                "system_fingerprint": "tasktune",
                "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason,
                             "logprobs": None}],
                "usage": _usage(answer.prompt_tokens, answer.completion_tokens)}

    @app.api_route("/", methods=["GET", "HEAD"])
    async def page():
        return FileResponse(str(STATIC / "index.html"), media_type="text/html", headers=PAGE_HEADERS)

    @app.api_route("/static/{name}", methods=["GET", "HEAD"])
    async def static(name: str):
        path = STATIC / name
        if "/" in name or name.startswith(".") or len(name) > 128 or not path.is_file():  # 256+: ENAMETOOLONG
            raise RequestError(f"no such file: {shown(name)}", status=404, code="not_found")
        kind = {"js": "text/javascript", "css": "text/css", "html": "text/html"}.get(name.rsplit(".", 1)[-1],
                                                                                      "application/octet-stream")
        return FileResponse(str(path), media_type=kind, headers=PAGE_HEADERS)

    return app


async def _unless_client_leaves(request: Request, work):
    """Await `work` (a non-streamed answer); if the client disconnects first, cancel it, which frees its engine
    slot at the next step (a stream does this by itself: its generator is closed). Nobody reads the 499.

    The body is read by now, so the next ASGI message can only be the disconnect: wait for it beside the work
    (`request.is_disconnected()` polls with a cancelled scope, which can miss it)."""
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(request.receive())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and gone.done() and not gone.cancelled() and gone.exception() is None \
                and gone.result().get("type") == "http.disconnect":
            raise RequestError("the client closed the connection", status=499, code="client_closed")
        return await task
    finally:
        for future in (task, gone):
            if not future.done():
                future.cancel()


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _sse(service: Service, body: ChatRequest, turn, params, counted=lambda status: None):
    """Server-sent events in OpenAI's chunk format; the engine slot is freed if the client goes away. `counted`
    gets the stream's outcome once it ends: "200", the status of an error sent as an event, or "499" (the client
    left first)."""
    status = "499"
    try:
        try:
            async for part in _events(service, body, turn, params):
                if isinstance(part, _Failure):
                    status, part = str(part.status), part.text
                yield part
        except RequestError as exc:  # found after the 200 went out: an error event, as a plain request's body
            status, part = str(exc.status), _failed(str(exc), exc.type, exc.code, exc.status).text
            yield part
        except Exception as exc:  # a bug: the event and [DONE] still end the stream (no cut chunked body)
            log.exception("stream failed")
            status, part = "500", _failed(f"internal error: {type(exc).__name__}").text
            yield part
        if status == "499":
            status = "200"
    finally:
        counted(status)


@dataclass(frozen=True)
class _Failure:
    """An error sent as an event, then [DONE] (the stream's status line went out as 200 already); `status` is the
    HTTP status the same error has on a plain request, for the request counter."""

    text: str
    status: int


def _failed(message: str, type_: str = "server_error", code: str | None = None, status: int = 500) -> _Failure:
    body = json.dumps(error_body(message, type_, code), ensure_ascii=False)
    return _Failure(f"data: {body}\n\ndata: [DONE]\n\n", status)


async def _events(service: Service, body: ChatRequest, turn, params):
    ident, created = new_id(), now()
    model = service.served_name(turn)

    usage = {"usage": None} if _include_usage(body) else {}  # OpenAI: null on every chunk but the last

    def chunk(delta: dict, finish: str | None = None) -> str:
        data = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": "tasktune",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **usage}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    prompt_tokens = completion_tokens = 0
    if service.runs_actions(body, turn):  # the server runs the tools: stream the result step's answer
        try:
            first = await service.complete_all(turn, params)  # (as the plain answer: every model call of the turn)
            calls = service.tool_calls(turn, first.text, body, first.finish_reason)
            executed, next_turn = await service.execute(turn, calls) if calls else ([], None)
        except RequestError as exc:  # the generation or an action failed, or its result does not fit the frame
            yield _failed(str(exc), exc.type, exc.code, exc.status)
            return
        prompt_tokens, completion_tokens = first.prompt_tokens, first.completion_tokens
        if next_turn is None:
            yield chunk({"content": first.text})
            if calls:
                yield chunk({"tool_calls": [dict(c, index=i) for i, c in enumerate(calls)]})
            yield chunk({}, "tool_calls" if calls else first.finish_reason)
            yield from_usage(body, ident, created, prompt_tokens, completion_tokens, model)
            yield "data: [DONE]\n\n"
            return
        yield chunk({"executed_tool_calls": executed})
        turn = next_turn
    texts, finishes = [], []
    for k, call in enumerate(turn.calls()):  # (parallel tool calls' results: each one's answer, a line each)
        if k:
            yield chunk({"content": "\n"})
        parts, last = [], None
        async for event in service.stream(call, params):
            last = event
            if event.finish_reason == "error":
                failure = generation_failed(event.error)
                yield _failed(str(failure), failure.type, failure.code, failure.status)
                return
            if event.finish_reason == "cancelled":  # the server is shutting down (a client that left reads nothing)
                yield _failed(f"{event.error or 'the server is shutting down'} (after {event.completion_tokens} "
                              f"tokens)", "server_error", "shutting_down", 503)
                return
            if event.text:
                parts.append(event.text)
                yield chunk({"content": event.text})
        finishes.append(last.finish_reason if last else "stop")
        texts.append(last.full_text if last and last.full_text is not None else "".join(parts))
        prompt_tokens += last.prompt_tokens if last else 0
        completion_tokens += last.completion_tokens if last else 0
    finish = "length" if "length" in finishes else finishes[-1]
    text = "\n".join(texts)
    try:
        calls = [] if body.tool_choice == "none" else service.tool_calls(turn, text.strip(), body, finish)
    except RequestError as exc:  # tool_choice required/named, and the answer is no call
        yield _failed(str(exc), exc.type, exc.code, exc.status)
        return
    if calls:
        yield chunk({"tool_calls": [dict(c, index=i) for i, c in enumerate(calls)]})
        finish = "tool_calls"
    yield chunk({}, finish)
    yield from_usage(body, ident, created, prompt_tokens, completion_tokens, model)
    yield "data: [DONE]\n\n"


def from_usage(body: ChatRequest, ident: str, created: int, prompt: int, completion: int, model: str) -> str:
    """The usage chunk OpenAI sends last when `stream_options.include_usage` is set ("" otherwise)."""
    if not _include_usage(body):
        return ""
    data = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "tasktune", "choices": [], "usage": _usage(prompt, completion)}
    return f"data: {json.dumps(data)}\n\n"


def _include_usage(body: ChatRequest) -> bool:
    return bool((body.stream_options or {}).get("include_usage"))
